"""Federated keyword spotting on Flower: ServerApp and ClientApp over fedwhisper.kws.task's plain functions.

`flwr run .` reaches them through ``fl.app`` (run config ``task="kws"``, options ``kws.*``); `fedwhisper kws federate`
(``simulate``) runs the same apps in-process with Flower's simulation engine.
A client's data is its own: ``partition-id`` in its node config (simulation) or ``corpus``, a directory on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid

from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.attacks import MODEL_ATTACKS, is_attacker, poisoned
from fedwhisper.fl.client import build_client_app, client_name
from fedwhisper.fl.deploy import Deployment, make_node_key
from fedwhisper.fl.server import Federation, build_server_app, run_federation
from fedwhisper.fl.simulation import simulate_run
from fedwhisper.fl.strategy import robust_options, round_seed
from fedwhisper.kws.task import (
    TRAINING_FIELDS,
    KwsOptions,
    SplitEvaluator,
    client_partitions,
    client_update,
    head_meta,
    new_head,
    plot_accuracy,
    with_recipe,
    write_client_corpora,
)
from fedwhisper.runs import RunDirectory

METRICS = (
    "train_loss",
    "train_accuracy",
    "encoded-clips",
    "skipped-clips",
    "load-seconds",
    "encode-seconds",
    "train-seconds",
    "round-seconds",
)


def client_options(run_config: dict, context: Context) -> tuple[KwsOptions, int]:
    """This client's options and partition: its own corpus directory (deployment; ``partition-id``, if given, seeds
    its silence crops and training as the simulation's client of that number) or its simulation partition."""
    node = context.node_config
    if "corpus" in node:  # deployment: every training clip of the device's own corpus, its encoder cache beside it
        options = replace(
            with_recipe(KwsOptions.from_config(run_config)),
            corpus=str(node["corpus"]),
            num_clients=1,
            clients_per_round=1,
            min_clients=1,
        )
        return replace(options, cache_dir=str(node.get("cache-dir", options.cache_dir))), int(node.get("partition-id", 0))
    return with_recipe(KwsOptions.from_config(run_config)), int(context.node_config["partition-id"])


def build_kws_client_app(overrides: dict | None = None):
    def update(state: dict, config: dict, context: Context):
        options, partition = client_options({**context.run_config, **(overrides or {}), **config}, context)
        round_number = int(config["server-round"]) + int(config["round-offset"])
        attacking = options.attack != "none" and is_attacker(client_name(context), options.attackers)
        new_state, metrics = client_update(
            options, partition, state, round_number, flip_labels=attacking and options.attack == "label-flip"
        )
        if attacking and new_state is not None and options.attack in MODEL_ATTACKS:
            new_state = poisoned(
                state, new_state, options.attack, seed=round_seed(options.seed, round_number, client_name(context)) % 2**31
            )
        return new_state, metrics

    return build_client_app(update, METRICS)


def round_row(stats: dict) -> dict:
    """The round's client statistics for the run record (per client in client-name order)."""
    clients = stats["client_metrics"]
    skipped = {"clips_skipped": int(sum(m.get("skipped-clips", 0) for m in stats["replied_metrics"]))}
    if not clients:
        return skipped
    examples = sum(m["num-examples"] for m in clients)
    row = {
        "train_loss": sum(m["train_loss"] * m["num-examples"] for m in clients) / examples,
        "clips_encoded": int(sum(m["encoded-clips"] for m in clients)),
        "client_num_examples": [m["num-examples"] for m in clients],
    }
    for key in ("encoded-clips", "load-seconds", "encode-seconds", "train-seconds", "round-seconds"):
        row[f"client_{key.replace('-', '_')}"] = [round(m[key], 3) for m in clients]
    return row | skipped


def federate(
    grid: Grid, options: KwsOptions, run_dir: str | Path, resume: bool = False, on_round: Callable[[dict], None] | None = None
) -> RunDirectory:
    """The server's job: the head federated over speaker-grouped clients, evaluated on held-out speakers every round."""
    options = with_recipe(options)
    client_partitions(options)  # a corpus too small for the clients fails here, before round 1
    evaluator, meta = SplitEvaluator(options), head_meta(options)
    head = new_head(options)

    def evaluate(state: dict) -> dict:
        head.load_state_dict(state)
        return evaluator(head)

    federation = Federation(
        initial_arrays=lambda: new_head(options).state_dict(),
        evaluate=evaluate,
        rounds=options.rounds,
        train_config={k: v for k, v in options.to_config().items() if k in TRAINING_FIELDS},
        clients_per_round=options.clients_per_round,
        seed=options.seed,
        meta=meta,
        round_metrics=round_row,
        checkpoint="head",
        strategy=options.strategy,
        strategy_options=robust_options(options.strategy, options.clients_per_round, options.assumed_malicious),
        norm_limit=options.norm_limit,
        dp_noise_multiplier=options.dp_noise_multiplier,
        dp_clip=options.dp_clip,
        num_clients=options.num_clients,
        min_clients=options.min_clients,
        round_timeout=options.round_timeout,
    )

    def record(row: dict) -> None:
        plot_accuracy(run.rows, run.path / "accuracy.png")
        if on_round:
            on_round(row)

    run = RunDirectory(run_dir)
    return run_federation(grid, federation, run, options.to_config(), resume, record)


def serve(grid: Grid, config: dict, on_round: Callable[[dict], None] | None = None) -> None:
    """The ServerApp's job for a run config (``run-dir``, ``resume`` and the task's options)."""
    federate(grid, KwsOptions.from_config(config), str(config["run-dir"]), bool(config["resume"]), on_round)


@contextmanager
def deployment_of(options: KwsOptions, home: Path) -> Iterator[Deployment]:
    """A Flower deployment on this machine ready to run ``options``: a SuperLink and one SuperNode per client as separate
    processes, over TLS with SuperNode authentication, each SuperNode holding only its client's clips (``home/clients``)
    and its key registered; every process is stopped on the way out."""
    clients = write_client_corpora(options, home / "clients")
    with Deployment(home) as deployment:
        deployment.start_superlink()
        for partition, folder in enumerate(clients):
            private, public = make_node_key(deployment.home / "keys", folder.name)
            deployment.register(public)
            deployment.start_supernode(
                folder.name,
                private,
                {"corpus": str(folder), "cache-dir": str(folder.with_suffix(".cache")), "partition-id": partition},
            )
        deployment.wait_online(len(clients))
        yield deployment


def deployed_run_config(options: KwsOptions, run_dir: str | Path, resume: bool = False) -> dict:
    """`flwr run`'s --run-config for ``options`` (the app's ``kws.*`` keys)."""
    return {
        "task": "kws",
        "run-dir": str(Path(run_dir).resolve()),
        "resume": resume,
        **{f"kws.{key.replace('_', '-')}": value for key, value in options.to_config().items()},
    }


def deploy(
    options: KwsOptions,
    run_dir: str | Path,
    resume: bool = False,
    on_line: Callable[[str], None] | None = None,
    timeout: float = 3600.0,
) -> RunDirectory:
    """The federation on a Flower deployment on this machine (``deployment_of``, in ``run_dir/deployment``); fails
    unless every round was recorded."""
    options = with_recipe(options)
    RunDirectory(run_dir).check_start(resume)
    options.check()
    with deployment_of(options, Path(run_dir).resolve() / "deployment") as deployment:
        code = deployment.run(deployed_run_config(options, run_dir, resume), on_line, timeout)
    run = RunDirectory(run_dir)
    if code or run.last < options.rounds:
        raise FedwhisperError(
            f"the deployed federation stopped after round {run.last} of {options.rounds} (flwr run exit code {code}; "
            f"see {deployment.log('run')})"
        )
    return run


def simulate(
    options: KwsOptions,
    run_dir: str | Path,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
    verbose: bool = False,
) -> RunDirectory:
    """The federation in this process on Flower's simulation engine; fails unless every round was recorded."""
    options = with_recipe(options)
    RunDirectory(run_dir).check_start(resume)  # these fail in one line before Ray starts: a used or missing run directory,
    options.check()  # a missing corpus, an unknown keyword, more clients than speakers, a model that does not load
    static = options.to_config()
    serve_run = functools.partial(serve, on_round=on_round)
    return simulate_run(
        build_server_app(serve_run, {**static, "run-dir": str(run_dir), "resume": resume}),
        build_kws_client_app(static),
        options.num_clients,
        run_dir,
        options.rounds,
        "kws federate",
        verbose,
    )
