"""The server side of every federated task: who the clients are, the rounds, evaluation and the run record.

A task gives the loop its initial arrays, a server evaluation (arrays -> metrics) and the per-round training
config its clients need; the loop samples clients (``fl.strategy``), aggregates, evaluates, records each round
with its arrays in a ``RunDirectory`` and resumes from the last recorded round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.defences import CentralDp, dp_epsilon
from fedwhisper.fl.strategy import GroupPlan, SeededGroups, seeded_strategy
from fedwhisper.runs import RunDirectory, load_arrays

log = logging.getLogger("fedwhisper.fl")
CLIENT_NAME = "client-name"


@dataclass
class Federation:
    """One federated run as the server sees it."""

    initial_arrays: Callable[[], dict[str, torch.Tensor]]
    evaluate: Callable[[dict[str, torch.Tensor]], dict[str, float]]  # arrays -> metrics on the server's held-out data
    train_config: dict  # per-round hyper-parameters for the clients
    rounds: int
    clients_per_round: int
    seed: int = 0
    meta: dict = field(default_factory=dict)  # stored with every checkpoint (what rebuilds the model)
    round_metrics: Callable[[dict], dict] = lambda stats: {}  # the strategy's round statistics -> extra row columns
    connect_timeout: float = 120.0  # seconds to wait for the clients to connect
    checkpoint: str = "model"  # checkpoint files: NAME.safetensors (latest round, the resume point), NAME-round-NNN.safetensors
    strategy: str = "fedavg"  # a name in fl.strategy.STRATEGIES
    strategy_options: dict = field(default_factory=dict)  # its constructor's options (server learning rate, momentum, mu)
    plan: GroupPlan | None = None  # clients in groups with models of their own (device tiers): fl.strategy.SeededGroups
    norm_limit: float = 10.0  # updates longer than this many times the round's median are rejected (0: no limit)
    dp_noise_multiplier: float = 0.0  # > 0: central DP (fl.defences.CentralDp): clients clip to dp_clip, the server adds noise
    dp_clip: float = 1.0
    num_clients: int = 0  # the population clients are drawn from (DP accounting)
    min_clients: int = 1  # a round with fewer clients connected, or trained, keeps the model (dead nodes: the others go on)
    round_timeout: float = (
        3600.0  # seconds a round waits for replies; a node that died replies with an error once the SuperLink notices
    )


def identify_clients(grid: Grid, expected: int, timeout: float) -> dict[int, str]:
    """Ask every connected node for its stable name (``fl.client``'s query handler), waiting up to ``timeout``
    seconds for ``expected`` nodes. Names make sampling and aggregation order independent of Flower's node ids."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise FedwhisperError(f"only {len(nodes)} of {expected} clients connected within {timeout:g} s")
        time.sleep(0.5)
    return ask_names(grid, nodes, timeout)


def ask_names(grid: Grid, nodes: list[int], timeout: float = 120.0) -> dict[int, str]:
    """The names ``nodes`` give for themselves (``node-ID`` for one that does not answer)."""
    messages = [
        Message(RecordDict({"config": ConfigRecord({"ask": CLIENT_NAME})}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in nodes
    ]
    names = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        names[node] = str(reply.content["config"][CLIENT_NAME]) if not reply.has_error() else f"node-{node}"
    return names


def resume_point(run: RunDirectory, checkpoint: str) -> tuple[dict[str, torch.Tensor], int]:
    """The arrays of the last recorded round and its number. A damaged or missing round checkpoint is named and passed
    over for the round before it; the rows after the round resumed from are dropped, so those rounds run again."""
    for round_number in sorted((row[run.key] for row in run.rows), reverse=True):
        path = run.path / f"{checkpoint}-round-{round_number:03d}.safetensors"
        try:
            arrays, _ = load_arrays(path)
        except FedwhisperError as error:
            log.warning("%s; trying an earlier checkpoint", error)
            continue
        if round_number < run.last:
            log.warning("resuming from round %d (%s)", round_number, path.name)
            run.keep_until(round_number)
        return arrays, round_number
    raise FedwhisperError(f"{run.path}: no intact {checkpoint} checkpoint to resume from")


def run_federation(
    grid: Grid,
    federation: Federation,
    run: RunDirectory,
    options: dict,
    resume: bool = False,
    on_round: Callable[[dict], None] | None = None,
) -> RunDirectory:
    """Rounds ``run.last + 1 .. federation.rounds``: sample, train, aggregate, evaluate on the server, record."""
    run.start(options, resume)
    resume = resume and bool(run.rows)  # a run stopped before its round 0 was recorded starts from the beginning
    if resume:
        arrays, start_round = resume_point(run, federation.checkpoint)
    else:
        arrays, start_round = federation.initial_arrays(), 0
    remaining = federation.rounds - start_round
    if remaining <= 0:
        log.warning("run %s already has %d of %d rounds", run.path, start_round, federation.rounds)
        return run
    names = identify_clients(grid, federation.clients_per_round, federation.connect_timeout)  # all expected at the start
    if federation.plan is not None:
        strategy = SeededGroups(federation.clients_per_round, federation.seed, names, start_round, federation.plan)
    else:
        strategy = seeded_strategy(
            federation.strategy,
            federation.clients_per_round,
            federation.seed,
            names,
            start_round,
            norm_limit=federation.norm_limit,
            uniform=federation.dp_noise_multiplier > 0,
            min_clients=federation.min_clients,
            identify=ask_names,
            **federation.strategy_options,
        )
    rounds_of = strategy  # what the rounds are run by: the strategy, or the DP wrapper around it
    if federation.dp_noise_multiplier > 0:
        rounds_of = CentralDp(strategy, federation.dp_noise_multiplier, federation.dp_clip, federation.clients_per_round)
    if resume and federation.strategy in ("fedavgm", "fedadam"):
        log.warning(
            "%s keeps server-optimizer state that is not checkpointed; it starts afresh at round %d",
            federation.strategy,
            start_round + 1,
        )
    round_started = [time.perf_counter()]

    def evaluate(server_round: int, record: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 and resume:
            return None  # the resumed round was evaluated and recorded before
        state = record.to_torch_state_dict()
        metrics = federation.evaluate(state)
        row = {"round": start_round + server_round, **metrics, "seconds": round(time.perf_counter() - round_started[0], 2)}
        if server_round:
            stats = strategy.last_round
            row |= {
                k: stats[k]
                for k in (
                    "clients_trained",
                    "clients_skipped",
                    "clients_failed",
                    "failure_reasons",
                    "clients_rejected",
                    "rejections",
                )
                if k in stats
            }
            # what crossed the network, from the messages' own arrays: the same to every sampled client, and each reply
            row |= {"bytes_down_per_client": stats["bytes_down_per_client"], "bytes_up": stats["bytes_up"]}
            row |= federation.round_metrics(stats)
            if federation.dp_noise_multiplier > 0:
                row["dp_epsilon"] = round(
                    dp_epsilon(
                        federation.dp_noise_multiplier, federation.clients_per_round, federation.num_clients, row["round"]
                    ),
                    4,
                )
        run.save_arrays(f"{federation.checkpoint}-round-{row['round']:03d}", state, federation.meta)
        run.save_arrays(federation.checkpoint, state, federation.meta)
        run.record(row)  # after its arrays: a recorded round always has them
        if on_round:
            on_round(row)
        lost = row.get("clients_failed", 0) + row.get("clients_rejected", 0)
        if server_round and lost and lost == strategy.last_round["clients_sent"]:  # a broken setup: more rounds would fail alike
            what = "failed or were rejected" if row.get("clients_rejected") else "failed"
            raise FedwhisperError(
                f"round {row['round']}: all {lost} clients {what} "
                f"({'; '.join(row.get('failure_reasons', []) + row.get('rejections', []))}); the run stops here"
            )
        round_started[0] = time.perf_counter()
        return MetricRecord(metrics)

    config = ConfigRecord({**federation.train_config, "round-offset": start_round, "seed": federation.seed})
    rounds_of.start(
        grid=grid,
        initial_arrays=ArrayRecord(arrays),
        num_rounds=remaining,
        train_config=config,
        evaluate_fn=evaluate,
        timeout=federation.round_timeout,
    )
    idle = [row["round"] for row in run.rows if row.get("clients_trained") == 0]
    if idle:
        raise FedwhisperError(
            f"no client trained in round{'s' if len(idle) > 1 else ''} {', '.join(map(str, idle))}: the model did not "
            f"change there (clients too small or failing; see {run.path / 'metrics.csv'})"
        )
    return run


def build_server_app(serve: Callable[[Grid, dict], None], overrides: dict | None = None) -> ServerApp:
    """A ServerApp running ``serve(grid, config)`` with the run config updated by ``overrides``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context) -> None:
        serve(grid, {**context.run_config, **(overrides or {})})

    return app
