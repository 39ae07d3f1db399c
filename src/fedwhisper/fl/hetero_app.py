"""Heterogeneous federated ASR on Flower (device tiers with models of their own): ServerApp and ClientApp over
fedwhisper.asr.hetero's plain functions, on the same federation layer as federated ASR (sampling, checkpoints, resume,
failures, bytes). Each client is sent its tier's arrays and its tier in the config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid

from fedwhisper.asr import federated, hetero
from fedwhisper.asr.federated import AsrFederationOptions
from fedwhisper.fl.client import build_client_app
from fedwhisper.fl.server import Federation, run_federation
from fedwhisper.runs import RunDirectory, load_arrays

# fedmd adds the WER of the client's own model on the validation clips
METRICS = ("train_loss", "train-seconds", "samples-per-second", "round-seconds", "rejected-nan", "wer")


def build_hetero_client_app(overrides: dict | None = None):
    def update(state: dict, config: dict, context: Context):
        options = AsrFederationOptions.from_config({**context.run_config, **(overrides or {}), **config})
        round_number = int(config["server-round"]) + int(config["round-offset"])
        if "features" in context.node_config:  # deployment: the device's own prepared features
            dataset, _ = federated.features_of(str(Path(str(context.node_config["features"])).resolve()))
            return hetero.client_round(options, 0, str(config["tier"]), state, round_number, shard=dataset["train"])
        return hetero.client_round(options, int(context.node_config["partition-id"]), str(config["tier"]), state, round_number)

    return build_client_app(update, METRICS)


def federate(
    grid: Grid,
    options: AsrFederationOptions,
    run_dir: str | Path,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
) -> RunDirectory:
    """The server's job: rounds of the algorithm over tiered speaker clients, each server model's WER on the
    validation speakers every round; at the end the models in ``RUN/models/GROUP`` and tested on the held-out test
    split (``RUN/test.json``, per speaker too)."""
    hetero.check(options)
    run_dir = Path(run_dir)
    for tier in hetero.ordered_tiers(options.tiers):  # the starting models, distilled on the proxy corpus once
        hetero.initial_tier_state(options, hetero.model_layers(options, tier))
    plan = hetero.TierPlan(options, hetero.costs_for(options, run_dir))
    evaluator = hetero.TierEvaluator(options, plan)
    federation = Federation(
        initial_arrays=lambda: hetero.initial_state(options),
        evaluate=evaluator,
        rounds=options.rounds,
        train_config={},
        clients_per_round=options.clients_per_round,
        seed=options.seed,
        meta={"algorithm": options.algorithm, "model": options.model, "tiers": options.tiers},
        round_metrics=lambda stats: hetero.round_row(stats, plan),
        checkpoint="tiers",
        plan=plan,
    )
    run = run_federation(grid, federation, RunDirectory(run_dir), options.to_config(), resume, on_round)
    if evaluator.models:
        state, _ = load_arrays(run_dir / "tiers.safetensors")
        evaluator.save_models(state, run_dir / "models")
        hetero.test_models(options, evaluator, state, run_dir / "test.json")
    return run


def serve(grid: Grid, config: dict, on_round: Callable[[dict], None] | None = None) -> None:
    federate(grid, AsrFederationOptions.from_config(config), str(config["run-dir"]), bool(config["resume"]), on_round)
