"""Flower ServerApp and ClientApp for federated keyword spotting: thin glue over fedwhisper.kws.task.

`flwr run .` loads ``server_app`` / ``client_app`` with the run config from pyproject's [tool.flwr.app.config];
`fedwhisper kws federate` runs the same apps in-process with Flower's simulation engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedwhisper.kws.runlog import RunLog
from fedwhisper.kws.task import KwsOptions, SplitEvaluator, client_partitions, client_update, head_meta, new_head, with_recipe

log = logging.getLogger("fedwhisper.kws")

client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received head on this client's own clips; only weights and metrics go back."""
    config = message.content["config"]
    options = KwsOptions.from_config(config)
    round_number = int(config["server-round"]) + int(config.get("round-offset", 0))
    state = message.content["arrays"].to_torch_state_dict()
    new_state, metrics = client_update(options, int(context.node_config["partition-id"]), state, round_number)
    # A client too small to train returns the global weights it was sent, marked skipped; KwsFedAvg drops it.
    reply = RecordDict({"arrays": ArrayRecord(new_state if new_state is not None else state), "metrics": MetricRecord(metrics)})
    return Message(content=reply, reply_to=message)


class KwsFedAvg(FedAvg):
    """FedAvg that leaves out clients too small to train (they reply with ``skipped``) and remembers
    the last round's client statistics for the run log."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.last_round: dict = {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        ok = [r for r in replies if not r.has_error()]
        failures = [r for r in replies if r.has_error()]
        if failures:
            log.error("round %d: %d of %d clients failed; first reason: %s", server_round, len(failures), len(replies),
                      failures[0].error.reason)
        trained = [r for r in ok if not r.content["metrics"].get("skipped", 0)]
        self.last_round = {"clients_trained": len(trained), "clients_skipped": len(ok) - len(trained),
                           "clients_failed": len(failures)}
        if trained:
            metrics = [r.content["metrics"] for r in trained]
            self.last_round |= {
                "train_loss": sum(m["train_loss"] * m["num-examples"] for m in metrics) / sum(m["num-examples"] for m in metrics),
                "clips_encoded": int(sum(m["encoded-clips"] for m in metrics)),
            }
            for key in ("num-examples", "encoded-clips", "load-seconds", "encode-seconds", "train-seconds"):  # per client
                if all(key in m for m in metrics):
                    self.last_round[f"client_{key.replace('-', '_')}"] = [round(m[key], 3) for m in metrics]
        return super().aggregate_train(server_round, trained)


def run_federation(grid: Grid, options: KwsOptions, run_dir: str, resume: bool = False,
                   on_round: Callable[[dict], None] | None = None) -> RunLog:
    """The server's loop: FedAvg over sampled clients, then evaluation on held-out speakers, every round recorded."""
    options = with_recipe(options)
    runlog = RunLog(run_dir)
    runlog.start(options.to_config(), resume)
    if resume:
        head, _ = runlog.latest_head()
        start_round = runlog.last_round
    else:
        head, start_round = new_head(options), 0
    remaining = options.rounds - start_round
    if remaining <= 0:
        log.warning("run %s already has %d of %d rounds", run_dir, start_round, options.rounds)
        return runlog
    client_partitions(options)  # a corpus too small for the clients fails here, not in every client of every round
    evaluator = SplitEvaluator(options)
    meta = head_meta(options)
    strategy = KwsFedAvg(
        fraction_train=options.clients_per_round / options.num_clients,
        min_train_nodes=options.clients_per_round,
        min_available_nodes=options.num_clients,
        fraction_evaluate=0.0,  # evaluation is centralized, on speakers no client has
    )
    round_started = [time.perf_counter()]

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 and resume:
            return None  # the resumed round was evaluated and recorded before
        head.load_state_dict(arrays.to_torch_state_dict())
        metrics = evaluator(head)
        row = {"round": start_round + server_round, **metrics, **(strategy.last_round if server_round else {}),
               "seconds": round(time.perf_counter() - round_started[0], 2)}
        runlog.record(row, head, meta)
        if on_round:
            on_round(row)
        round_started[0] = time.perf_counter()
        return MetricRecord(metrics)

    train_config = ConfigRecord({**options.to_config(), "round-offset": start_round})
    strategy.start(grid=grid, initial_arrays=ArrayRecord(head.state_dict()), num_rounds=remaining,
                   train_config=train_config, evaluate_fn=evaluate)
    return runlog


def build_server_app(overrides: dict | None = None, on_round: Callable[[dict], None] | None = None) -> ServerApp:
    """A ServerApp whose options are the run config updated with ``overrides``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = {**context.run_config, **(overrides or {})}
        options = KwsOptions.from_config(config)
        run_federation(grid, options, str(config["run-dir"]), bool(config["resume"]), on_round)

    return app


server_app = build_server_app()
