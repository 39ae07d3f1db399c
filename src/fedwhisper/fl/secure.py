"""Secure aggregation (SecAgg+) of the keyword-spotting head: Flower's ``SecAggPlusWorkflow`` on the server and
``secaggplus_mod`` on the clients. The protocol lives on Flower's legacy strategy API (``LegacyContext``, a
``NumPyClient``), so this is its own small pair of apps over the same plain task functions: every client trains as in
``fl.kws_app``, quantises and masks its weighted update, and the server only ever receives masked vectors and key
shares; it learns the sum. Every client of the federation takes part in every round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedwhisper.fl.simulation import run_in_process
from fedwhisper.kws.task import KwsOptions, SplitEvaluator, client_update, head_meta, new_head, plot_accuracy, with_recipe
from fedwhisper.runs import RunDirectory


def _client_app(options: KwsOptions):
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod

    keys = list(new_head(options).state_dict())

    class HeadClient(NumPyClient):
        def __init__(self, partition: int):
            self.partition = partition

        def fit(self, parameters, config):
            state = {key: torch.from_numpy(np.array(value)) for key, value in zip(keys, parameters, strict=True)}
            new_state, metrics = client_update(options, self.partition, state, int(config["server-round"]))
            if new_state is None:  # too small to train: weight 0 adds nothing to the masked sum
                return parameters, 0, {}
            return [new_state[key].numpy() for key in keys], int(metrics["num-examples"]), {}

    return ClientApp(
        client_fn=lambda context: HeadClient(int(context.node_config["partition-id"])).to_client(), mods=[secaggplus_mod]
    )


def _server_app(options: KwsOptions, run: RunDirectory, shares: int, threshold: int, max_weight: float, received: list | None):
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    head, evaluator, meta = new_head(options), SplitEvaluator(options, progress=False), head_meta(options)
    keys = list(head.state_dict())

    def evaluate(server_round: int, parameters, config):
        state = {key: torch.from_numpy(np.array(value)) for key, value in zip(keys, parameters, strict=True)}
        head.load_state_dict(state)
        metrics = evaluator(head)
        run.save_arrays(f"head-round-{server_round:03d}", state, meta)
        run.record({"round": server_round, **metrics})
        plot_accuracy(run.rows, run.path / "accuracy.png")
        return metrics["validation_loss"], metrics

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            min_fit_clients=options.num_clients,
            min_available_clients=options.num_clients,
            fraction_evaluate=0.0,
            evaluate_fn=evaluate,
            on_fit_config_fn=lambda server_round: {"server-round": server_round},
            initial_parameters=ndarrays_to_parameters([v.numpy() for v in new_head(options).state_dict().values()]),
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=options.rounds), strategy=strategy)
        workflow = DefaultWorkflow(
            fit_workflow=SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=threshold, max_weight=max_weight)
        )
        workflow(_Recording(grid, received) if received is not None else grid, legacy)

    return app


class _Recording:
    """A grid that keeps every reply the server receives (to check what it could see)."""

    def __init__(self, grid, received: list):
        self.grid, self.received = grid, received

    def send_and_receive(self, messages, *args, **kwargs):
        replies = list(self.grid.send_and_receive(messages, *args, **kwargs))
        self.received.extend(replies)
        return replies

    def __getattr__(self, name):
        return getattr(self.grid, name)


def simulate_secure(
    options: KwsOptions,
    run_dir: str | Path,
    shares: int = 3,
    threshold: int = 2,
    max_weight: float = 1000.0,
    received: list | None = None,
) -> RunDirectory:
    """``options.rounds`` rounds of every client, aggregated with SecAgg+ (``shares`` key shares per client, any
    ``threshold`` of which rebuild a dropped client's mask), in Flower's simulation engine; each round's head and
    held-out accuracy in ``run_dir``. A client's update is scaled by its examples / ``max_weight`` before it is quantised
    (2^22 levels over [-8, 8]): ``max_weight`` near the largest client's example count keeps the most precision.
    ``received``: a list that collects every reply the server got."""
    options = with_recipe(options)
    options.check()
    run = RunDirectory(run_dir)
    run.start(options.to_config(), resume=False)
    run_in_process(
        _server_app(options, run, shares, threshold, max_weight, received),
        _client_app(options),
        options.num_clients,
        log_file=Path(run_dir) / "federation.log",
    )
    return run
