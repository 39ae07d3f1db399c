"""Federated ASR on Flower: ServerApp and ClientApp over fedwhisper.asr.federated's plain functions.

A client's data is its own: ``partition-id`` in its node config (simulation) or ``features``, a prepared feature
directory on the device (deployment). Only the trainable tensors (adapters, top blocks or the model) travel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid

from fedwhisper.asr import federated
from fedwhisper.asr.federated import AsrFederationOptions
from fedwhisper.fl.client import build_client_app
from fedwhisper.fl.server import Federation, build_server_app, run_federation
from fedwhisper.fl.simulation import simulate_run
from fedwhisper.runs import RunDirectory

# what a client reports besides its tensors; of its pseudo-labels only how many clips it had and used
METRICS = (
    "train_loss",
    "train-seconds",
    "samples-per-second",
    "round-seconds",
    "rejected-nan",
    "pseudo-candidates",
    "pseudo-labelled",
)


def build_asr_client_app(overrides: dict | None = None):
    if (overrides or {}).get("algorithm", "fedavg") != "fedavg":  # device tiers
        from fedwhisper.fl.hetero_app import build_hetero_client_app

        return build_hetero_client_app(overrides)

    def update(state: dict, config: dict, context: Context):
        options = AsrFederationOptions.from_config({**context.run_config, **(overrides or {}), **config})
        round_number = int(config["server-round"]) + int(config["round-offset"])
        if "features" in context.node_config:  # deployment: every training clip of the device's own features
            dataset, _ = federated.features_of(str(Path(str(context.node_config["features"])).resolve()))
            return federated.client_update(options, 0, state, round_number, shard=dataset["train"])
        return federated.client_update(options, int(context.node_config["partition-id"]), state, round_number)

    return build_client_app(update, METRICS)


def round_row(stats: dict) -> dict:
    clients = stats["client_metrics"]
    replied = stats["replied_metrics"]
    row = {"clients_rejected_nan": int(sum(m.get("rejected-nan", 0) for m in replied))}
    if any(m.get("pseudo-candidates") for m in replied):  # clients without transcripts: clips they had, clips they used
        for key in ("pseudo-candidates", "pseudo-labelled"):
            row[key.replace("-", "_")] = int(sum(m.get(key, 0) for m in replied))
    if clients:
        samples = sum(m["num-examples"] for m in clients)
        row |= {
            "train_loss": sum(m["train_loss"] * m["num-examples"] for m in clients) / samples,
            "client_samples_per_second": [round(m["samples-per-second"], 3) for m in clients],
            "client_round_seconds": [round(m["round-seconds"], 2) for m in clients],
        }
    return row


def federate(
    grid: Grid,
    options: AsrFederationOptions,
    run_dir: str | Path,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
) -> RunDirectory:
    """The server's job: rounds of the chosen strategy over speaker clients, WER on held-out validation speakers every
    round (``wer.png``), the best global model kept in ``RUN/best`` as a plain transformers directory and, at the end,
    evaluated on the whole held-out test split (``RUN/test.json``)."""
    federated.check(options)
    evaluator = ServerSide(options, Path(run_dir))
    federation = Federation(
        initial_arrays=lambda: federated.initial_state(options),
        evaluate=evaluator,
        rounds=options.rounds,
        train_config={},
        clients_per_round=options.clients_per_round,
        seed=options.seed,
        meta={"mode": options.mode, "model": options.model, "full_model_bytes": federated.full_model_bytes(options)},
        round_metrics=round_row,
        checkpoint="trainable",
        strategy=options.strategy,
        strategy_options=options.strategy_options(),
    )
    run = RunDirectory(run_dir)

    def record(row: dict) -> None:
        federated.plot_wer(run.rows, run.path / "wer.png")
        if on_round:
            on_round(row)

    run_federation(grid, federation, run, options.to_config(), resume, record)
    federated.test_best(options, run)
    return run


class ServerSide:
    """The round's evaluation, and ``best/`` whenever the WER improves."""

    def __init__(self, options: AsrFederationOptions, run_dir: Path):
        self.evaluate = federated.ServerEvaluator(options)
        self.run_dir = run_dir
        rows = RunDirectory(run_dir).rows
        self.best = min((row["wer"] for row in rows if "wer" in row), default=None)

    def __call__(self, state: dict) -> dict:
        metrics = self.evaluate(state)
        if self.best is None or metrics["wer"] < self.best:
            self.best = metrics["wer"]
            self.evaluate.save_model(self.run_dir / "best")
        return metrics


def serve(grid: Grid, config: dict, on_round: Callable[[dict], None] | None = None) -> None:
    """The ServerApp's job for a run config (``run-dir``, ``resume`` and the task's options)."""
    options = AsrFederationOptions.from_config(config)
    if options.algorithm != "fedavg":  # device tiers
        from fedwhisper.fl.hetero_app import federate as federate_tiers

        federate_tiers(grid, options, str(config["run-dir"]), bool(config["resume"]), on_round)
        return
    federate(grid, options, str(config["run-dir"]), bool(config["resume"]), on_round)


def simulate(
    options: AsrFederationOptions,
    run_dir: str | Path,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
    verbose: bool = False,
) -> RunDirectory:
    """The federation in this process on Flower's simulation engine; fails unless every round was recorded."""
    RunDirectory(run_dir).check_start(resume)
    if options.algorithm != "fedavg":  # device tiers: serve and the client app hand the run to fl.hetero_app
        from fedwhisper.asr.hetero import check as check_tiers

        check_tiers(options)
    else:
        federated.check(options)
    static = options.to_config()
    serve_run = functools.partial(serve, on_round=on_round)
    return simulate_run(
        build_server_app(serve_run, {**static, "run-dir": str(run_dir), "resume": resume}),
        build_asr_client_app(static),
        options.num_clients,
        run_dir,
        options.rounds,
        "asr federate",
        verbose,
    )
