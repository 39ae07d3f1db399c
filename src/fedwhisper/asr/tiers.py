"""Device tiers for heterogeneous federations: device profiles, their share of the clients, the model each can
afford (the teacher with fewer decoder layers, by the distillation work's student initialisation: same d_model and
encoder, so top-level feature maps and decoder blocks are comparable across tiers) and a client's simulated round time.

A profile's compute factor is its speed relative to this machine; a tier's per-sample training cost is measured here
and divided by the factor (and a seeded per-round jitter: background load) to give a client's simulated round time.
A client whose time passes its profile's deadline is a straggler and is dropped from that round.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.strategy import round_seed


@dataclass(frozen=True)
class DeviceTier:
    name: str
    compute_factor: float  # training speed relative to this machine (2 CPU cores)
    memory_mb: int  # what training may use on the device
    deadline_seconds: float  # a round's time budget on the device; later replies are dropped
    decoder_fraction: float  # of the teacher's decoder layers the tier's model keeps (at least one)
    jitter: float = 0.25  # sigma of the log-normal slowdown a round meets (other apps, heat, battery saving)


DEVICE_TIERS = {
    "pi": DeviceTier("pi", compute_factor=0.1, memory_mb=200, deadline_seconds=120, decoder_fraction=0.25),
    "phone": DeviceTier("phone", compute_factor=0.35, memory_mb=2048, deadline_seconds=120, decoder_fraction=0.5),
    "laptop": DeviceTier("laptop", compute_factor=1.0, memory_mb=8192, deadline_seconds=120, decoder_fraction=1.0),
}
DEFAULT_TIERS = "pi:0.4,phone:0.4,laptop:0.2"


def parse_tiers(spec: str) -> dict[str, float]:
    """``"pi:0.4,phone:0.4,laptop:0.2"`` -> {tier: share of the clients}, profiles from ``DEVICE_TIERS``."""
    shares = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, share = item.partition(":")
        if name not in DEVICE_TIERS:
            raise FedwhisperError(f"--tiers: unknown device tier {name!r} (known: {', '.join(DEVICE_TIERS)})")
        try:
            shares[name] = float(share)
        except ValueError:
            raise FedwhisperError(f"--tiers: {item!r} is not NAME:SHARE") from None
    if not shares or any(s <= 0 for s in shares.values()) or not math.isclose(sum(shares.values()), 1.0, abs_tol=1e-6):
        raise FedwhisperError(f"--tiers: shares must be positive and sum to 1 (got {spec!r})")
    return shares


def assign_tiers(num_clients: int, spec: str, seed: int) -> list[str]:
    """Each client's tier: counts by share (largest remainders), shuffled with ``seed``."""
    shares = parse_tiers(spec)
    exact = {name: share * num_clients for name, share in shares.items()}
    counts = {name: int(value) for name, value in exact.items()}
    for name in sorted(exact, key=lambda n: counts[n] - exact[n])[: num_clients - sum(counts.values())]:
        counts[name] += 1
    tiers = [name for name in shares for _ in range(counts[name])]
    random.Random(seed).shuffle(tiers)
    return tiers


def ordered_tiers(spec: str) -> list[str]:
    """The run's tiers from the weakest (fewest decoder layers, slowest) to the strongest."""
    return sorted(parse_tiers(spec), key=lambda n: (DEVICE_TIERS[n].decoder_fraction, DEVICE_TIERS[n].compute_factor))


def decoder_layers(tier: str, teacher_layers: int) -> int:
    return max(1, round(DEVICE_TIERS[tier].decoder_fraction * teacher_layers))


def tier_model_dir(model: str, layers: int, root: Path) -> Path:
    """The teacher with ``layers`` decoder layers (``distill.make_student``), made once under ``root``."""
    from fedwhisper.distill import make_student

    out = root / f"{Path(model).name}-decoder{layers}"
    if not (out / "config.json").is_file():
        make_student(model, out, decoder_layers=layers)
    return out


def training_memory_mb(model) -> float:
    """Parameters, plus gradients and AdamW's two moments for what trains (activations, small on clip windows, left out)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return (total + 3 * trainable) / 2**20


def simulated_seconds(tier: str, seconds_per_sample: float, samples: int, seed: int, round_number: int, client: str) -> float:
    """A client's round on its device: this machine's measured cost, slowed by the profile and that round's jitter."""
    profile = DEVICE_TIERS[tier]
    slowdown = float(np.exp(abs(np.random.default_rng(round_seed(seed, round_number, client)).normal(0.0, profile.jitter))))
    return seconds_per_sample * samples / profile.compute_factor * slowdown


def measure_cost(model, batches, config, steps: int = 6, loss_fn=None) -> float:
    """Seconds per training sample of ``model`` (its trainable part set; its weights barely move) on this machine,
    after one warm-up step; ``loss_fn`` as in ``train_on_batches``."""
    from fedwhisper.asr.train import train_on_batches

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-12)
    stream = batches.micro_batches(config.batch_size, config.seed, 0, steps + 1)
    train_on_batches(model, [next(stream)], config, optimizer, loss_fn=loss_fn)
    started = time.perf_counter()
    result = train_on_batches(model, stream, config, optimizer, loss_fn=loss_fn)
    return (time.perf_counter() - started) / max(result["samples"], 1)
