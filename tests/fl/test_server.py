"""The server loop against a scripted grid: a round in which every client fails stops the run with one line naming the
clients' own error; rounds in which no client trained make the run fail although it finished; resume passes over a
damaged round checkpoint."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.server import CLIENT_NAME, Federation, run_federation
from fedwhisper.runs import RunDirectory

# What a client's exception looks like once Flower's Ray backend has wrapped it.
RAY_ERROR = """Traceback (most recent call last):
ray.exceptions.RayTaskError(ClientAppException): ray::ClientAppActor.run() (pid=1, ip=192.0.2.2)
OSError: [Errno 28] No space left on device

The above exception was the direct cause of the following exception:

flwr.clientapp.client_app.ClientAppException:
Exception ClientAppException occurred. Message: [Errno 28] No space left on device'>"""


class ScriptedGrid:
    """Three nodes; ``train(message)`` decides each train reply."""

    def __init__(self, train):
        self.train = train

    def get_node_ids(self):
        return [11, 12, 13]

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            if message.metadata.message_type == MessageType.QUERY:
                content = RecordDict({"config": ConfigRecord({CLIENT_NAME: f"client-{message.metadata.dst_node_id}"})})
                replies.append(Message(content, reply_to=message))
            else:
                replies.append(self.train(message))
        return replies


def federation(rounds: int) -> Federation:
    return Federation(
        initial_arrays=lambda: {"w": torch.zeros(2)},
        evaluate=lambda state: {"score": float(state["w"].sum())},
        train_config={},
        rounds=rounds,
        clients_per_round=2,
        connect_timeout=1.0,
    )


def failing(message: Message) -> Message:
    return Message(Error(code=0, reason=RAY_ERROR), reply_to=message)


def skipping(message: Message) -> Message:
    arrays = message.content["arrays"]
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 0})}), reply_to=message)


def training(message: Message) -> Message:
    state = message.content["arrays"].to_torch_state_dict()
    arrays = ArrayRecord({"w": state["w"] + 1})
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 5})}), reply_to=message)


def test_a_round_in_which_every_client_fails_stops_the_run_in_one_line(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(FedwhisperError) as raised:
        run_federation(ScriptedGrid(failing), federation(rounds=5), run, {})
    message = str(raised.value)
    assert message == "round 1: all 2 clients failed (OSError: [Errno 28] No space left on device); the run stops here"
    assert [row["round"] for row in run.rows] == [0, 1]  # what happened is recorded, and the run can be resumed


def test_rounds_in_which_no_client_trained_make_the_run_fail(tmp_path):
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(FedwhisperError, match="no client trained in rounds 1, 2: the model did not change there"):
        run_federation(ScriptedGrid(skipping), federation(rounds=2), run, {})
    assert [row["round"] for row in run.rows] == [0, 1, 2]


def test_resume_passes_over_a_damaged_round_checkpoint(tmp_path):
    run = run_federation(ScriptedGrid(training), federation(rounds=3), RunDirectory(tmp_path / "run"), {})
    assert [row["score"] for row in run.rows] == [0.0, 2.0, 4.0, 6.0]
    (tmp_path / "run" / "model-round-003.safetensors").write_bytes(b"\0" * 10)
    resumed = run_federation(ScriptedGrid(training), federation(rounds=4), RunDirectory(tmp_path / "run"), {}, resume=True)
    # round 3 ran again from round 2's arrays, then round 4: every round recorded once
    assert [row["round"] for row in resumed.rows] == [0, 1, 2, 3, 4]
    assert [row["score"] for row in resumed.rows] == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_a_node_that_dies_leaves_the_others_training_and_a_late_one_is_asked_its_name():
    from fedwhisper.fl.strategy import SeededFedAvg

    class Changing:
        def __init__(self):
            self.nodes = [1, 2, 3]

        def get_node_ids(self):
            return list(self.nodes)

    asked = []

    def identify(grid, nodes):
        asked.extend(nodes)
        return {n: f"late-{n}" for n in nodes}

    strategy = SeededFedAvg(clients_per_round=3, seed=0, client_names={1: "a", 2: "b", 3: "c"}, min_clients=2, identify=identify)
    grid = Changing()
    grid.nodes = [1, 3]  # node 2 died
    sent = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord({}), grid))
    assert sorted(m.metadata.dst_node_id for m in sent) == [1, 3]
    grid.nodes = [1, 3, 9]  # a node connected late
    sent = list(strategy.configure_train(2, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord({}), grid))
    assert asked == [9] and sorted(m.metadata.dst_node_id for m in sent) == [1, 3, 9]
    grid.nodes = [1]
    with pytest.raises(RuntimeError, match="at least 2 clients per round, but only 1 are connected"):
        list(strategy.configure_train(3, ArrayRecord({"w": torch.zeros(2)}), ConfigRecord({}), grid))
