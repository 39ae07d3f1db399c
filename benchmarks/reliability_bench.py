"""Reliability benchmarks on federated keyword spotting (the demo's 300-speaker corpus, 10 clients of 30 speakers,
all 10 every round): what k attacking clients do to each aggregation rule, and what central differential
privacy costs in accuracy for the epsilon it buys, and a deployment's faults (SuperNodes and the SuperLink killed).
Each part runs alone (`run.py reliability:byzantine`)."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands
from fedwhisper.fl.attacks import ATTACKS
from fedwhisper.fl.defences import DP_DELTA, dp_epsilon
from fedwhisper.fl.kws_app import deploy, deployed_run_config, deployment_of, simulate
from fedwhisper.kws.task import KwsOptions
from fedwhisper.runs import RunDirectory

RULES = ("fedavg", "median", "trimmed-mean", "multikrum")  # bulyan needs 4f + 3 <= 10 (f = 1 only); krum keeps one update


def _options(work: Path, small: bool, rounds: int, clients: int = 10, per_round: int = 10) -> KwsOptions:
    corpus = work / "kws-300"
    synthesize_speech_commands(corpus, KwsSynthesisOptions(speakers=30 if small else 300))
    return KwsOptions(
        corpus=str(corpus),
        num_clients=min(clients, 10) if small else clients,
        clients_per_round=min(per_round, 5) if small else per_round,
        rounds=2 if small else rounds,
        cache_dir=str(work / "cache"),
    )


def _final(options: KwsOptions, run_dir: Path) -> dict:
    """The run's final accuracy; a run already complete in ``run_dir`` (an interrupted benchmark, run again) is read."""
    started = time.perf_counter()
    done = RunDirectory(run_dir)
    if done.rows and done.last == options.rounds and done.saved_options() == options.to_config():
        rows = done.rows
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        rows = simulate(options, run_dir).rows
    last = rows[-1]
    return {
        "test_accuracy": round(last["test_accuracy"], 4),
        "validation_accuracy": round(last["validation_accuracy"], 4),
        "updates_rejected": sum(r.get("clients_rejected", 0) for r in rows),
        "wall_seconds": round(time.perf_counter() - started, 1),
        **({"dp_epsilon": last["dp_epsilon"]} if "dp_epsilon" in last else {}),
    }


def byzantine(work: Path, small: bool, attackers: tuple[int, ...] = (2,)) -> dict:
    """k of the 10 clients attack every round (5 rounds), each kind in turn; final test accuracy per rule against clean
    FedAvg's. Update validation (the norm limit) is off so each rule is measured on its own, then on for FedAvg."""
    options = _options(work, small, rounds=5)
    clean = {"fedavg": _final(replace(options, norm_limit=0), work / "clean-fedavg")}
    runs = {}
    for k in attackers:
        for attack in ATTACKS[1:]:
            row = {
                rule: _final(
                    replace(options, strategy=rule, assumed_malicious=k, norm_limit=0, attack=attack, attackers=k),
                    work / f"{attack}-{k}-{rule}",
                )
                for rule in RULES
            }
            row["fedavg+norm-limit"] = _final(replace(options, attack=attack, attackers=k), work / f"{attack}-{k}-fedavg-limit")
            for result in row.values():
                result["of_clean"] = round(result["test_accuracy"] / clean["fedavg"]["test_accuracy"], 4)
            runs[f"{attack} x{k}"] = row
    recorded = {**options.to_config(), "rules": list(RULES), "attacks": list(ATTACKS[1:]), "attackers": list(attackers)}
    return {"options": recorded, "clients": 10, "per_round": 10, "rounds": options.rounds, "clean": clean, "attacked": runs}


def dp(work: Path, small: bool) -> dict:
    """10 clients of 30 speakers, all 10 a round, 10 rounds: test accuracy against the noise multiplier (clients clip
    their update to 1.0, Flower's wrapper adds the noise to the mean), with the epsilon at delta 1e-5 the RDP
    accountant gives for that sampling over those rounds."""
    options = _options(work, small, rounds=10)
    rows = {}
    for noise in (0.0, 0.3, 0.6, 1.0):
        result = _final(replace(options, dp_noise_multiplier=noise, dp_clip=1.0), work / f"dp-{noise}")
        result["epsilon"] = (
            round(dp_epsilon(noise, options.clients_per_round, options.num_clients, options.rounds), 2) if noise else None
        )
        rows[str(noise)] = result
    # the demo's 100 clients (3 speakers each), all of them every round: the noise on the mean is 10x smaller
    crowd = replace(
        options, num_clients=10 if small else 100, clients_per_round=10 if small else 100, dp_noise_multiplier=2.1, dp_clip=1.0
    )
    crowd_result = _final(crowd, work / "dp-all-clients-2.1")
    crowd_result["epsilon"] = round(dp_epsilon(2.1, crowd.clients_per_round, crowd.num_clients, crowd.rounds), 2)
    return {
        "options": {**options.to_config(), "noise_multipliers": [0.0, 0.3, 0.6, 1.0], "all_clients_noise_multiplier": 2.1},
        "clients": options.num_clients,
        "per_round": options.clients_per_round,
        "delta": DP_DELTA,
        "clip": 1.0,
        "rounds": options.rounds,
        "by_noise_multiplier": rows,
        "all_clients": {"clients": crowd.num_clients, "noise_multiplier": 2.1, **crowd_result},
    }


def _deployed(options: KwsOptions, work: Path, name: str, at_round: int, kill) -> tuple[int, float]:
    """A deployment of ``options`` whose processes named by ``kill(deployment)`` are stopped once round ``at_round``
    starts; (flwr run's exit code, wall seconds)."""
    started = time.perf_counter()
    with deployment_of(options, work / f"{name}-deployment") as deployment:

        def watch(line: str) -> None:
            if f"[ROUND {at_round}/" in line:
                for process in kill(deployment):
                    deployment.processes.stop(process)

        code = deployment.run(deployed_run_config(options, work / name), watch)
    return code, time.perf_counter() - started


def faults(work: Path, small: bool) -> dict:
    """10 SuperNodes over TLS with node authentication (10 rounds, every client every round, a round goes on with at
    least 5): 3 SuperNodes killed as round 3 starts, against the same federation in the simulation engine (which a
    deployment reproduces exactly, tests/fl/test_deploy.py); and the SuperLink killed as round 6 starts, then the
    deployment started again with --resume: its final head against the uninterrupted run's."""
    from safetensors.torch import load_file

    options = replace(_options(work, small, rounds=10), min_clients=5)
    started = time.perf_counter()
    clean = simulate(options, work / "clean")
    clean_seconds = time.perf_counter() - started
    code, killed_seconds = _deployed(
        options, work, "killed", 3, lambda d: [n for n in d.processes.started if n.startswith("partition")][-3:]
    )
    killed = RunDirectory(work / "killed").rows
    code_stopped, _ = _deployed(options, work, "resumed", 6, lambda d: ["superlink"])
    stopped_at = RunDirectory(work / "resumed").last
    started = time.perf_counter()
    resumed = deploy(options, work / "resumed", resume=True)
    resume_seconds = time.perf_counter() - started
    last = f"head-round-{options.rounds:03d}.safetensors"
    final, reference = load_file(str(work / "resumed" / last)), load_file(str(work / "clean" / last))
    return {
        "options": {**options.to_config(), "supernodes_killed": 3, "killed_at_round": 3, "superlink_killed_at_round": 6},
        "clients": 10,
        "rounds": options.rounds,
        "min_clients": options.min_clients,
        "clean": {"test_accuracy": round(clean.rows[-1]["test_accuracy"], 4), "wall_seconds": round(clean_seconds, 1)},
        "three_killed": {
            "flwr_run_exit_code": code,
            "rounds_recorded": killed[-1]["round"],
            "test_accuracy": round(killed[-1]["test_accuracy"], 4),
            "clients_trained": [r.get("clients_trained") for r in killed[1:]],
            "clients_failed": [r.get("clients_failed") for r in killed[1:]],
            "round_seconds": [r["seconds"] for r in killed[1:]],
            "wall_seconds": round(killed_seconds, 1),
        },
        "server_killed": {
            "flwr_run_exit_code": code_stopped,
            "rounds_recorded_before_kill": stopped_at,
            "resumed_rounds": resumed.last,
            "resume_wall_seconds": round(resume_seconds, 1),
            "final_head_max_abs_diff_vs_uninterrupted": max(float((final[k] - reference[k]).abs().max()) for k in reference),
            "test_accuracy": round(resumed.rows[-1]["test_accuracy"], 4),
        },
    }


PARTS = {"byzantine": byzantine, "dp": dp, "faults": faults}
RESUMABLE = ("byzantine", "dp")  # their work directories are kept: finished runs are read, not run again
