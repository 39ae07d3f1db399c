"""Flower's FedAvg family (FedAvg, FedAvgM, FedAdam, FedProx) made reproducible, and safe to wrap in Flower's
differential-privacy strategies or to run under SecAgg+.

- Clients are drawn by a seeded sample over stable client names (Flower gives nodes new random ids every run).
- Replies are aggregated in client-name order, so the floating-point sums do not depend on arrival order.
- A client that cannot train replies with weight 0 (``num-examples`` = 0), never with a plaintext "skip me" flag:
  its arrays add nothing to the weighted mean, which stays true when the weighting happens inside SecAgg+ or a DP
  wrapper. A round in which no client has weight keeps the current arrays.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedAvgM, FedMedian, FedProx, FedTrimmedAvg, Krum, MultiKrum

log = logging.getLogger("fedwhisper.fl")
WEIGHT = "num-examples"


def round_seed(seed: int, server_round: int, salt: str = "") -> int:
    """A seed for one round of one run, stable across processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{server_round}/{salt}".encode()).digest()[:8], "little")


class SeededSampling:
    """Mixin before a Flower strategy of the FedAvg family: ``clients_per_round`` clients drawn with ``seed``;
    ``client_names`` maps Flower node ids to the stable names the clients gave (see ``fl.server.identify_clients``).
    Every reply is validated before the strategy aggregates (``update_problem``): one that fails is rejected, logged
    with the client's name and the reason, and the round goes on. ``last_round`` holds the round's client statistics
    and, in name order, each replying client's metrics."""

    def __init__(
        self,
        clients_per_round: int,
        seed: int,
        client_names: dict[int, str],
        round_offset: int = 0,
        norm_limit: float = 10.0,
        uniform: bool = False,
        min_clients: int = 1,
        identify=None,
        **kwargs,
    ):
        super().__init__(
            fraction_train=1.0,
            min_train_nodes=min_clients,
            min_available_nodes=min_clients,
            fraction_evaluate=0.0,
            weighted_by_key=WEIGHT,
            **kwargs,
        )
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.client_names = client_names
        self.round_offset = round_offset  # a resumed run's rounds continue its numbering: the same clients are drawn
        self.norm_limit = norm_limit  # an update's norm above this many times the round's median is rejected (0: no limit)
        self.uniform = uniform  # every trained client weighs the same (DP: the noise is calibrated to a plain mean)
        self.min_clients = min_clients  # fewer connected, or fewer trained replies, and the round keeps the model
        self.identify = identify  # (grid, node ids) -> their names: nodes that connect late are asked before they are sampled
        self.set_aside: list[Message] = []  # error replies a wrapper (fl.defences.CentralDp) took out before this saw them
        self.last_round: dict = {}
        self._sent: dict[str, np.ndarray] = {}
        self._bytes_down = 0

    def name_of(self, node_id: int) -> str:
        return self.client_names.get(node_id, f"node-{node_id}")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.identify and (newcomers := [n for n in grid.get_node_ids() if n not in self.client_names]):
            self.client_names.update(self.identify(grid, newcomers))
        nodes = sorted(grid.get_node_ids(), key=self.name_of)
        if len(nodes) < self.min_clients:
            raise RuntimeError(f"at least {self.min_clients} clients per round, but only {len(nodes)} are connected")
        if len(nodes) < self.clients_per_round:  # nodes died or have not come back: the round goes on with the others
            log.warning(
                "round %d: %d clients per round, but only %d are connected; sampling them all",
                server_round + self.round_offset,
                self.clients_per_round,
                len(nodes),
            )
        chosen = random.Random(round_seed(self.seed, server_round + self.round_offset)).sample(
            nodes, min(self.clients_per_round, len(nodes))
        )
        self._sent = {key: arrays[key].numpy() for key in arrays.keys()}
        self._bytes_down = record_bytes(arrays)
        # the strategy's own configure_train (it keeps its server-optimizer state, FedProx adds its mu) over the chosen
        # nodes only: with fraction_train 1.0 it sends to all of them
        messages = super().configure_train(server_round, arrays, config, _Only(grid, chosen))
        return sorted(messages, key=lambda message: self.name_of(message.metadata.dst_node_id))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_number = server_round + self.round_offset
        replies = sorted([*replies, *self.set_aside], key=lambda reply: self.name_of(reply.metadata.src_node_id))
        self.set_aside = []
        failed, rejections, answered = [], [], []
        for reply in replies:
            if reply.has_error():
                failed.append(reply)
            elif problem := update_problem(reply, self._sent):
                rejections.append(f"{self.name_of(reply.metadata.src_node_id)}: {problem}")
            else:
                answered.append(reply)
        trained = [r for r in answered if r.content["metrics"][WEIGHT] > 0]
        for reply, problem in outlying_norms(trained, self._sent, self.norm_limit).items():
            rejections.append(f"{self.name_of(reply.metadata.src_node_id)}: {problem}")
            trained.remove(reply)
            answered.remove(reply)
        metrics = [dict(r.content["metrics"]) for r in answered]
        self.last_round = {
            "clients_sent": len(replies),
            "clients_trained": len(trained),
            "clients_skipped": len(metrics) - len(trained),
            "clients_failed": len(failed),
            "clients_rejected": len(rejections),
            "client_metrics": [m for m in metrics if m[WEIGHT] > 0],
            "replied_metrics": metrics,
            "bytes_down_per_client": self._bytes_down,
            "bytes_up": [record_bytes(next(iter(r.content.array_records.values()))) for r in answered],
        }
        if failed:
            reasons = sorted({_reason(r) for r in failed})
            self.last_round["failure_reasons"] = reasons
            log.error("round %d: %d of %d clients failed: %s", round_number, len(failed), len(replies), "; ".join(reasons))
        if rejections:
            self.last_round["rejections"] = sorted(rejections)
            log.warning("round %d: %d updates rejected: %s", round_number, len(rejections), "; ".join(sorted(rejections)))
        if not trained:
            log.warning("round %d: no client trained; the model stays as it was", round_number)
            return None, None
        if len(trained) < self.min_clients:
            log.warning(
                "round %d: %d clients trained, fewer than the %d required; the model stays as it was",
                round_number,
                len(trained),
                self.min_clients,
            )
            return None, None
        if self.uniform:
            for reply in trained:
                reply.content["metrics"][WEIGHT] = 1
        return super().aggregate_train(server_round, trained)  # a weight-0 reply would still count as a vote in a median or Krum


def update_problem(reply: Message, sent: dict[str, np.ndarray]) -> str:
    """Why a reply cannot be aggregated ("" if it can): anything but one ArrayRecord with exactly the arrays sent (same
    shapes and dtypes, all finite) and one MetricRecord with a weight. Any of these would make Flower's strategy refuse
    the whole round, or poison the model."""
    content = reply.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return (
            f"{len(content.array_records)} array records and {len(content.metric_records)} metric records (expected one of each)"
        )
    arrays, metrics = next(iter(content.array_records.values())), next(iter(content.metric_records.values()))
    weight = metrics.get(WEIGHT)
    if not isinstance(weight, int | float) or not weight >= 0:
        return f"weight {WEIGHT} missing or negative ({weight!r})"
    if set(arrays.keys()) != set(sent):
        unexpected, missing = sorted(set(arrays.keys()) - set(sent)), sorted(set(sent) - set(arrays.keys()))
        return f"arrays other than those sent (unexpected {unexpected}, missing {missing})"
    for key in sent:
        array = arrays[key].numpy()
        if array.shape != sent[key].shape or array.dtype != sent[key].dtype:
            return f"{key} is {array.dtype}{list(array.shape)}, sent {sent[key].dtype}{list(sent[key].shape)}"
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return f"{key} holds NaN or infinite values"
    return ""


def update_norm(reply: Message, sent: dict[str, np.ndarray]) -> float:
    arrays = next(iter(reply.content.array_records.values()))
    return float(math.sqrt(sum(float(np.sum((arrays[k].numpy().astype(np.float64) - sent[k]) ** 2)) for k in sent)))


def outlying_norms(replies: list[Message], sent: dict[str, np.ndarray], limit: float) -> dict[Message, str]:
    """The replies whose update (reply minus what was sent) is longer than ``limit`` times the round's median update,
    with the reason; none with fewer than 3 replies (no median to speak of) or no limit."""
    if not limit or len(replies) < 3:
        return {}
    norms = {reply: update_norm(reply, sent) for reply in replies}
    median = float(np.median(list(norms.values())))
    return {
        reply: f"update norm {norm:.3g} is {norm / median:.0f}x the round's median {median:.3g} (limit {limit:g}x)"
        for reply, norm in norms.items()
        if norm > limit * median > 0
    }


class SeededFedAvg(SeededSampling, FedAvg):
    pass


class SeededFedAvgM(SeededSampling, FedAvgM):
    pass


class SeededFedAdam(SeededSampling, FedAdam):
    pass


class SeededFedProx(SeededSampling, FedProx):
    pass


class SeededFedMedian(SeededSampling, FedMedian):
    pass


class SeededFedTrimmedAvg(SeededSampling, FedTrimmedAvg):
    pass


class SeededKrum(SeededSampling, Krum):
    pass


class SeededMultiKrum(SeededSampling, MultiKrum):
    pass


class SeededBulyan(SeededSampling, Bulyan):
    pass


@dataclass(frozen=True)
class Assignment:
    """What one sampled client is sent in a grouped round, and when its device would answer."""

    group: str  # the arrays it gets: those named GROUP/… (the prefix is not sent)
    config: dict  # added to the round's config
    tier: str = ""
    simulated_seconds: float = 0.0
    deadline_seconds: float = math.inf  # later than this, it is a straggler: dropped, not waited for


class GroupPlan(Protocol):
    """A task's heterogeneous federation, as ``SeededGroups`` asks it."""

    def eligible(self, client: str) -> bool: ...  # may be sampled at all (e.g. its device can hold the model)
    def assign(self, client: str, round_number: int) -> Assignment: ...
    def reply_keys(self, assignment: Assignment, sent: set[str]) -> set[str]: ...  # the arrays a trained reply must hold
    # (round, [(client, assignment, arrays, metrics)] of clients that trained, in name order, all arrays) -> new arrays
    def aggregate(self, round_number: int, replies: list, arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class SeededGroups(SeededSampling, FedAvg):
    """Clients in groups (device tiers with models of their own): clients drawn with the seed among the eligible ones,
    each sent only its group's arrays (``GROUP/name`` in the server's state, ``name`` on the wire) and config; a client
    the plan times past its deadline is counted as a straggler and not waited for; the replies, checked against what
    the plan expects, aggregated by the plan. Bytes are counted per client, down and up."""

    def __init__(self, clients_per_round: int, seed: int, client_names: dict[int, str], round_offset: int, plan: GroupPlan):
        super().__init__(clients_per_round, seed, client_names, round_offset)
        self.plan = plan
        self._sent: dict[int, tuple[str, Assignment, set[str], int]] = {}
        self._state: dict[str, torch.Tensor] = {}
        self._stragglers: list[dict] = []

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        round_number = server_round + self.round_offset
        nodes = [node for node in sorted(grid.get_node_ids(), key=self.name_of) if self.plan.eligible(self.name_of(node))]
        if not nodes:
            raise RuntimeError("no connected client can train this federation's model")
        chosen = random.Random(round_seed(self.seed, round_number)).sample(nodes, min(self.clients_per_round, len(nodes)))
        self._state = arrays.to_torch_state_dict()
        self._sent, self._stragglers, messages = {}, [], []
        for node in sorted(chosen, key=self.name_of):
            client = self.name_of(node)
            assignment = self.plan.assign(client, round_number)
            if assignment.simulated_seconds > assignment.deadline_seconds:
                self._stragglers.append(
                    {
                        "client": client,
                        "tier": assignment.tier,
                        "simulated_seconds": round(assignment.simulated_seconds, 1),
                        "deadline_seconds": assignment.deadline_seconds,
                    }
                )
                continue
            prefix = assignment.group + "/"
            part = ArrayRecord({key[len(prefix) :]: arrays[key] for key in arrays.keys() if key.startswith(prefix)})
            self._sent[node] = (client, assignment, set(part.keys()), record_bytes(part))
            content = RecordDict(
                {"arrays": part, "config": ConfigRecord({**config, **assignment.config, "server-round": server_round})}
            )
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_number = server_round + self.round_offset
        replies = sorted(replies, key=lambda reply: self.name_of(reply.metadata.src_node_id))
        failed, trained, metrics, tiers, bytes_down, bytes_up, seconds, replied_seconds = [], [], [], [], [], [], [], []
        for reply in replies:
            client, assignment, sent_keys, down = self._sent[reply.metadata.src_node_id]
            if reply.has_error() or not self._well_formed(reply):
                failed.append(reply)
                continue
            values = dict(reply.content["metrics"])
            arrays = next(iter(reply.content.array_records.values()))
            if values[WEIGHT] > 0 and set(arrays.keys()) != self.plan.reply_keys(assignment, sent_keys):
                failed.append(reply)
                continue
            metrics.append(values)
            tiers.append(assignment.tier)
            bytes_down.append(down)
            bytes_up.append(record_bytes(arrays))
            replied_seconds.append(assignment.simulated_seconds)
            if values[WEIGHT] > 0:
                trained.append((client, assignment, arrays.to_torch_state_dict(), values))
                seconds.append(assignment.simulated_seconds)
        waited = max(
            (s["deadline_seconds"] for s in self._stragglers), default=0.0
        )  # the server waits for a straggler until its deadline
        self.last_round = {
            "clients_sent": len(self._sent),
            "clients_trained": len(trained),
            "clients_skipped": len(metrics) - len(trained),
            "clients_failed": len(failed),
            "client_metrics": [m for m in metrics if m[WEIGHT] > 0],
            "replied_metrics": metrics,
            "client_tiers": tiers,
            "client_simulated_seconds": replied_seconds,
            "bytes_down_per_client": bytes_down,
            "bytes_up": bytes_up,
            "stragglers": self._stragglers,
            "simulated_round_seconds": round(max([*seconds, waited]), 2),
        }
        if failed:
            reasons = sorted({_reason(r) for r in failed})
            self.last_round["failure_reasons"] = reasons
            log.error("round %d: %d of %d clients failed: %s", round_number, len(failed), len(replies), "; ".join(reasons))
        if not trained:
            log.warning("round %d: no client trained; the models stay as they were", round_number)
            return None, None
        return ArrayRecord(self.plan.aggregate(round_number, trained, self._state)), MetricRecord({})

    def _well_formed(self, reply: Message) -> bool:
        """One ArrayRecord (finite) and one MetricRecord with a weight; the arrays are checked against the plan's
        expectation after this (a reply with weight 0 may hold what it was sent)."""
        content = reply.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return False
        arrays, metrics = next(iter(content.array_records.values())), next(iter(content.metric_records.values()))
        if not isinstance(metrics.get(WEIGHT), int | float) or not metrics[WEIGHT] >= 0:
            return False
        return all(np.isfinite(array.numpy()).all() for array in arrays.values() if array.numpy().dtype.kind == "f")


STRATEGIES = {
    "fedavg": SeededFedAvg,
    "fedavgm": SeededFedAvgM,
    "fedadam": SeededFedAdam,
    "fedprox": SeededFedProx,
    # robust to malicious clients: coordinate-wise median or trimmed mean, Krum's closest update(s), Bulyan
    "median": SeededFedMedian,
    "trimmed-mean": SeededFedTrimmedAvg,
    "krum": SeededKrum,
    "multikrum": SeededMultiKrum,
    "bulyan": SeededBulyan,
}
ROBUST = ("median", "trimmed-mean", "krum", "multikrum", "bulyan")


def robust_options(name: str, clients_per_round: int, assumed_malicious: int) -> dict:
    """Constructor options of a robust strategy for ``assumed_malicious`` attackers among ``clients_per_round``."""
    if name in ("krum", "bulyan"):
        return {"num_malicious_nodes": assumed_malicious}
    if name == "multikrum":  # average the updates Krum scores best, as many as can be honest
        return {"num_malicious_nodes": assumed_malicious, "num_nodes_to_select": max(clients_per_round - assumed_malicious, 1)}
    if name == "trimmed-mean":  # cut the assumed attackers' share off each end
        return {"beta": min(assumed_malicious / clients_per_round, 0.49)}
    return {}


def seeded_strategy(
    name: str, clients_per_round: int, seed: int, client_names: dict[int, str], round_offset: int = 0, **strategy_options
) -> SeededSampling:
    """Flower's strategy ``name`` (``STRATEGIES``) with seeded sampling; ``strategy_options`` go to its constructor
    (e.g. ``server_momentum`` for FedAvgM, ``eta`` for FedAdam, ``proximal_mu`` for FedProx)."""
    return STRATEGIES[name](clients_per_round, seed, client_names, round_offset, **strategy_options)


class _Only:
    """A grid that shows only the chosen nodes to the strategy's sampling."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self.grid, self.node_ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def record_bytes(arrays: ArrayRecord) -> int:
    """What an ArrayRecord weighs on the wire: the serialised bytes of its arrays."""
    return sum(len(array.data) for array in arrays.values())


_ROOT_CAUSE = re.compile(r"^(?!ClientAppException|ray\.)([\w.]*(?:Error|Exception|Interrupt)): (.+)$", re.MULTILINE)


def _reason(reply: Message) -> str:
    """One line: the client's own exception (``ValueError: …``) out of the engine's wrapped traceback."""
    if not reply.has_error():
        return "malformed reply (arrays or metrics other than those expected, or not finite)"
    text = reply.error.reason.strip()
    if found := _ROOT_CAUSE.search(text):
        return f"{found.group(1)}: {found.group(2).strip()}"
    lines = text.splitlines()
    return lines[-1] if lines else "no reason given"
