"""Simulated malicious clients, to measure what robust aggregation and update validation keep out.

Clients ``0 .. attackers-1`` (by the number their name ends with) attack every round they are sampled: they train
as usual and then send a sign-flipped update, the update scaled x100, or random values of the update's size; or
(``label-flip``) they train on wrong labels, which the task applies (a data attack: their update looks normal).
"""

from __future__ import annotations

import re

import torch

ATTACKS = ("none", "sign-flip", "scale", "random", "label-flip")
MODEL_ATTACKS = ("sign-flip", "scale", "random")
SCALE = 100.0


def is_attacker(client: str, attackers: int) -> bool:
    number = re.search(r"(\d+)$", client)
    return number is not None and int(number.group(1)) < attackers


def poisoned(sent: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], attack: str, seed: int) -> dict[str, torch.Tensor]:
    """What an attacking client sends instead of ``trained`` (its honest result from ``sent``)."""
    update = {key: trained[key] - sent[key] for key in trained}
    if attack == "sign-flip":
        update = {key: -value for key, value in update.items()}
    elif attack == "scale":
        update = {key: SCALE * value for key, value in update.items()}
    elif attack == "random":  # as long as an honest update (so no norm check catches it), in no useful direction
        generator = torch.Generator().manual_seed(seed)
        norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in update.values())))
        noise = {key: torch.randn(value.shape, generator=generator, dtype=torch.float64) for key, value in update.items()}
        noise_norm = float(torch.sqrt(sum((v**2).sum() for v in noise.values())))
        update = {key: (value * norm / max(noise_norm, 1e-12)).to(update[key].dtype) for key, value in noise.items()}
    else:
        raise ValueError(f"not a model attack: {attack}")
    return {key: sent[key] + update[key] for key in trained}
