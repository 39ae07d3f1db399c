"""The client side of every federated task: a ClientApp whose train handler calls the task's plain update function.

What leaves the client is fixed here: the trained arrays (the keys it received, or some of them) and the task's whitelisted
metrics, every reply with the same metric keys. A client that cannot train replies with the arrays it was sent and
weight 0, so the weighted mean ignores it without a plaintext flag (which SecAgg+ could not honour).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedwhisper.fl.defences import clipping_when_asked
from fedwhisper.fl.server import CLIENT_NAME
from fedwhisper.fl.strategy import WEIGHT

# (arrays, per-round config, context) -> (new arrays or None when the client cannot train, metrics)
ClientUpdate = Callable[[dict[str, torch.Tensor], dict, Context], tuple[dict[str, torch.Tensor] | None, dict]]


def client_name(context: Context) -> str:
    """A stable name: ``client-name`` from the node config (deployment), else the simulation's partition id."""
    node_config = context.node_config
    if CLIENT_NAME in node_config:
        return str(node_config[CLIENT_NAME])
    if "partition-id" in node_config:
        return f"partition-{int(node_config['partition-id']):05d}"
    return f"node-{context.node_id}"


def build_client_app(update: ClientUpdate, metric_keys: tuple[str, ...]) -> ClientApp:
    """A ClientApp over ``update``; only ``metric_keys`` (numbers) and the weight leave the client."""
    app = ClientApp(mods=[clipping_when_asked])  # a DP run's updates are clipped before they leave

    @app.train()
    def train(message: Message, context: Context) -> Message:
        state = message.content["arrays"].to_torch_state_dict()
        new_state, metrics = update(state, dict(message.content["config"]), context)
        weight = int(metrics.get(WEIGHT, 0)) if new_state is not None else 0
        if new_state is not None and not set(new_state) <= set(state):  # a part of them (fedkad's top blocks) may go back
            raise ValueError(f"the update returned arrays {sorted(set(new_state) - set(state))} it was not sent")
        reply = {key: float(metrics.get(key, 0.0)) for key in metric_keys} | {WEIGHT: weight}
        arrays = ArrayRecord(new_state if weight else state)
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(reply)}), reply_to=message)

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return Message(RecordDict({"config": ConfigRecord({CLIENT_NAME: client_name(context)})}), reply_to=message)

    return app
