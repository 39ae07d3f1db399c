"""Reliability benchmarks on federated keyword spotting (the demo's 300-speaker corpus, 10 clients of 30 speakers,
all 10 every round): what k attacking clients do to each aggregation rule, and what central differential
privacy costs in accuracy for the epsilon it buys. Each part runs alone (`run.py reliability:byzantine`)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands
from fedwhisper.fl.attacks import ATTACKS
from fedwhisper.fl.defences import DP_DELTA, dp_epsilon
from fedwhisper.fl.kws_app import simulate
from fedwhisper.kws.task import KwsOptions

RULES = ("fedavg", "median", "trimmed-mean", "multikrum")  # bulyan needs 4f + 3 <= 10 (f = 1 only); krum keeps one update


def _options(work: Path, small: bool, rounds: int, clients: int = 10, per_round: int = 10) -> KwsOptions:
    corpus = work / "kws-300"
    synthesize_speech_commands(corpus, KwsSynthesisOptions(speakers=30 if small else 300))
    return KwsOptions(corpus=str(corpus), num_clients=min(clients, 10) if small else clients, clients_per_round=min(per_round, 5) if small else per_round,
                      rounds=2 if small else rounds, cache_dir=str(work / "cache"))


def _final(options: KwsOptions, run_dir: Path) -> dict:
    started = time.perf_counter()
    rows = simulate(options, run_dir).rows
    last = rows[-1]
    return {"test_accuracy": round(last["test_accuracy"], 4), "validation_accuracy": round(last["validation_accuracy"], 4),
            "updates_rejected": sum(r.get("clients_rejected", 0) for r in rows), "wall_seconds": round(time.perf_counter() - started, 1),
            **({"dp_epsilon": last["dp_epsilon"]} if "dp_epsilon" in last else {})}


def byzantine(work: Path, small: bool, attackers: tuple[int, ...] = (2,)) -> dict:
    """k of the 10 clients attack every round (5 rounds), each kind in turn; final test accuracy per rule against clean
    FedAvg's. Update validation (the norm limit) is off so each rule is measured on its own, then on for FedAvg."""
    options = _options(work, small, rounds=5)
    clean = {"fedavg": _final(replace(options, norm_limit=0), work / "clean-fedavg")}
    runs = {}
    for k in attackers:
        for attack in ATTACKS[1:]:
            row = {rule: _final(replace(options, strategy=rule, assumed_malicious=k, norm_limit=0, attack=attack, attackers=k),
                                work / f"{attack}-{k}-{rule}") for rule in RULES}
            row["fedavg+norm-limit"] = _final(replace(options, attack=attack, attackers=k), work / f"{attack}-{k}-fedavg-limit")
            for result in row.values():
                result["of_clean"] = round(result["test_accuracy"] / clean["fedavg"]["test_accuracy"], 4)
            runs[f"{attack} x{k}"] = row
    return {"clients": 10, "per_round": 10, "rounds": options.rounds, "clean": clean, "attacked": runs}


def dp(work: Path, small: bool) -> dict:
    """The demo's federation (100 clients of 3 speakers, 10 a round, 10 rounds): test accuracy against the noise
    multiplier (clients clip their update to 1.0, Flower's wrapper adds the noise to the mean), with the epsilon at
    delta 1e-5 the RDP accountant gives for that sampling over those rounds."""
    options = _options(work, small, rounds=10, clients=100, per_round=10)
    rows = {}
    for noise in (0.0, 0.3, 0.6, 1.0):
        result = _final(replace(options, dp_noise_multiplier=noise, dp_clip=1.0), work / f"dp-{noise}")
        result["epsilon"] = round(dp_epsilon(noise, options.clients_per_round, options.num_clients, options.rounds), 2) if noise else None
        rows[str(noise)] = result
    return {"clients": options.num_clients, "per_round": options.clients_per_round, "delta": DP_DELTA, "clip": 1.0, "rounds": options.rounds,
            "by_noise_multiplier": rows}


PARTS = {"byzantine": byzantine, "dp": dp}
