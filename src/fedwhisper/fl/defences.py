"""What protects a federation from its clients and its clients from the server, as run options every task shares:
robust aggregation (Flower's FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan), update validation (``fl.strategy``),
central differential privacy (Flower's client-side fixed-clipping wrapper and ``fixedclipping_mod``, accounted with
Flower's RDP accountant over ``dp-accounting``), and simulated attackers (``fl.attacks``) to measure them."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.clientapp.mod import fixedclipping_mod
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

from fedwhisper.fl.attacks import ATTACKS
from fedwhisper.fl.strategy import ROBUST
from fedwhisper.run_config import require

DP_DELTA = 1e-5
CLIPPING_NORM = "clipping_norm"  # the config key Flower's wrapper sends and fixedclipping_mod reads


def check_defences(options) -> None:
    """The shared options' ranges, named as the CLI spells them."""
    require(options.strategy in ("fedavg", *ROBUST), "strategy", f"must be one of fedavg, {', '.join(ROBUST)}", options.strategy)
    require(options.assumed_malicious >= 0, "assumed_malicious", "must be at least 0", options.assumed_malicious)
    if options.strategy == "bulyan":  # Bulyan needs n >= 4f + 3 replies
        require(
            options.clients_per_round >= 4 * options.assumed_malicious + 3,
            "assumed_malicious",
            f"must leave 4f + 3 <= --clients-per-round ({options.clients_per_round}) for bulyan",
            options.assumed_malicious,
        )
    require(options.norm_limit == 0 or options.norm_limit > 1, "norm_limit", "must be 0 (off) or above 1", options.norm_limit)
    require(options.dp_noise_multiplier >= 0, "dp_noise_multiplier", "must be at least 0", options.dp_noise_multiplier)
    require(options.dp_clip > 0, "dp_clip", "must be positive", options.dp_clip)
    require(
        options.dp_noise_multiplier == 0 or options.strategy == "fedavg",
        "strategy",
        "must be fedavg with --dp-noise-multiplier (the noise is calibrated to a mean of clipped updates)",
        options.strategy,
    )
    require(options.attack in ATTACKS, "attack", f"must be one of {', '.join(ATTACKS)}", options.attack)
    require(
        0 <= options.attackers <= options.num_clients,
        "attackers",
        f"must be in [0, --num-clients ({options.num_clients})]",
        options.attackers,
    )


def dp_epsilon(noise_multiplier: float, clients_per_round: int, num_clients: int, rounds: int, delta: float = DP_DELTA) -> float:
    """Client-level epsilon at ``delta`` after ``rounds`` Gaussian releases, each of ``clients_per_round`` clients drawn
    without replacement from ``num_clients`` (Flower's RDP accountant over Google's dp-accounting)."""
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    if noise_multiplier <= 0:
        return float("inf")
    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=delta,
            population_size=num_clients,
            sampling_method=SamplingMethod.WITHOUT_REPLACEMENT,
            neighboring_relation=NeighboringRelation.REPLACE_ONE,
        )
    )
    accountant.compose(
        GaussianPrivacyEvent(noise_multiplier=noise_multiplier, sample_size=clients_per_round, population_size=num_clients),
        rounds,
    )
    return accountant.get_epsilon(delta)


class CentralDp(DifferentialPrivacyClientSideFixedClipping):
    """Flower's wrapper (clients clip, the server adds Gaussian noise to the mean) around a seeded strategy. A reply that
    is an error is set aside for the strategy's statistics first: Flower's wrapper would skip the whole round for it."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.strategy.set_aside = [reply for reply in replies if reply.has_error()]
        return super().aggregate_train(server_round, [reply for reply in replies if not reply.has_error()])


def clipping_when_asked(message, context, call_next):
    """``fixedclipping_mod`` on the rounds whose config carries a clipping norm (a DP run); other messages pass."""
    configs = list(message.content.config_records.values())
    if configs and CLIPPING_NORM in configs[0]:
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)
