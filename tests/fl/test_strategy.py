"""SeededFedAvg driven directly with trained, skipped (weight 0), failed and malformed replies; aggregates checked by hand."""

import random

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from fedwhisper.fl.strategy import SeededFedAvg


class Grid:
    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return self.node_ids


def _sent(node: int) -> Message:
    return Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.TRAIN)


def _reply(node: int, value: float, weight: int, extra_key: bool = False) -> Message:
    arrays = {"w": torch.full((2, 3), value), "b": torch.tensor([value])}
    if extra_key:
        arrays["secret"] = torch.zeros(1)
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": weight, "train_loss": value})})
    return Message(content, reply_to=_sent(node))


def _failed(node: int) -> Message:
    return Message(Error(code=0, reason="Traceback ...\nAudioError: clip.wav: not audio"), reply_to=_sent(node))


def _strategy(names=None) -> SeededFedAvg:
    strategy = SeededFedAvg(clients_per_round=3, seed=0, client_names=names or {n: f"client-{n}" for n in range(10)})
    strategy._sent = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(1, np.float32)}
    return strategy


def test_only_trained_clients_count_and_failures_do_not_stop_the_round():
    replies = [
        _reply(1, 1.0, 10),
        _reply(2, 4.0, 30),
        _reply(3, 1000.0, 0),  # trained, trained, skipped (weight 0)
        _failed(4),
        _reply(5, -1e6, 50, extra_key=True),
        _reply(6, 2.0, 20),
    ]  # failed, malformed, trained
    strategy = _strategy()
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected = (1.0 * 10 + 4.0 * 30 + 2.0 * 20) / 60
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), expected), rtol=1e-6)
    np.testing.assert_allclose(arrays["b"].numpy(), [expected], rtol=1e-6)
    assert metrics["train_loss"] == pytest.approx(expected)
    stats = strategy.last_round
    assert (stats["clients_trained"], stats["clients_skipped"], stats["clients_failed"], stats["clients_rejected"]) == (
        3,
        1,
        1,
        1,
    )
    assert "AudioError: clip.wav: not audio" in stats["failure_reasons"]
    assert stats["rejections"] == ["client-5: arrays other than those sent (unexpected ['secret'], missing [])"]
    assert [m["num-examples"] for m in stats["client_metrics"]] == [10, 30, 20]  # client-name order


def test_the_aggregate_does_not_depend_on_arrival_order():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(8).astype(np.float32) * 1e3
    replies = [_reply(node, float(v), int(w)) for node, v, w in zip(range(8), values, rng.integers(1, 1000, 8))]
    first, _ = _strategy().aggregate_train(1, replies)
    for seed in range(5):
        shuffled = list(replies)
        random.Random(seed).shuffle(shuffled)
        again, _ = _strategy().aggregate_train(1, shuffled)
        assert again["w"].numpy().tobytes() == first["w"].numpy().tobytes()


def test_a_round_where_nobody_trained_keeps_the_model():
    strategy = _strategy()
    assert strategy.aggregate_train(1, [_reply(1, 5.0, 0), _failed(2)]) == (None, None)
    assert strategy.last_round["clients_skipped"] == 1 and strategy.last_round["clients_failed"] == 1


def test_sampling_follows_client_names_and_seed_not_node_ids():
    names = [f"partition-{i:05d}" for i in range(20)]

    def chosen(node_ids, server_round):
        strategy = SeededFedAvg(clients_per_round=5, seed=7, client_names=dict(zip(node_ids, names)))
        messages = strategy.configure_train(server_round, ArrayRecord({"w": torch.zeros(1)}), ConfigRecord({}), Grid(node_ids))
        return [strategy.name_of(m.metadata.dst_node_id) for m in messages]

    ids_a = list(range(100, 120))
    ids_b = random.Random(1).sample(range(10**9), 20)  # Flower gives nodes new random ids every run
    assert chosen(ids_a, 1) == chosen(ids_b, 1) and len(set(chosen(ids_a, 1))) == 5
    assert chosen(ids_a, 1) != chosen(ids_a, 2)


def test_zero_weight_composes_with_flowers_dp_wrapper_which_clips_and_adds_noise():
    """Flower's server-side DP wrapper over our strategy: every update clipped to the norm, a weight-0 reply left out of
    the mean, and Gaussian noise of std noise x clip / sampled clients added to it."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    shape = (100, 100)

    def reply(node: int, value: float, weight: int) -> Message:
        content = RecordDict(
            {"arrays": ArrayRecord({"w": torch.full(shape, value)}), "metrics": MetricRecord({"num-examples": weight})}
        )
        return Message(content, reply_to=_sent(node))

    inner = _strategy()
    inner._sent = {"w": np.zeros(shape, np.float32)}
    dp = DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=0.1, clipping_norm=2.0, num_sampled_clients=2)
    dp.current_arrays = ArrayRecord({"w": torch.zeros(shape)})
    arrays, _ = dp.aggregate_train(1, [reply(1, 1.0, 1), reply(2, -500.0, 0), reply(3, 3.0, 3)])
    w = arrays["w"].numpy()
    clipped = 2.0 / 100  # updates of norm 100 and 300 clipped to norm 2: every entry 0.02 (the weight-0 one: -0.02)
    sigma = 0.1 * 2.0 / 2
    assert abs(w.std() - sigma) < 0.05 * sigma  # the noise is there, at its calibrated size
    assert abs(w.mean() - clipped) < 4 * sigma / 100  # the mean of the clipped updates, without the weight-0 reply


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedprox"])
def test_flowers_other_strategies_keep_seeded_sampling_and_their_own_update(name):
    from flwr.serverapp.strategy import FedAdam, FedAvgM, FedProx

    from fedwhisper.fl.strategy import seeded_strategy

    options = {
        "fedavgm": {"server_momentum": 0.9, "server_learning_rate": 2.0},
        "fedadam": {"eta": 0.5},
        "fedprox": {"proximal_mu": 0.1},
    }
    names = {n: f"client-{n}" for n in range(10)}
    strategy = seeded_strategy(name, 3, 0, names, **options[name])
    assert isinstance(strategy, {"fedavgm": FedAvgM, "fedadam": FedAdam, "fedprox": FedProx}[name])
    start = ArrayRecord({"w": torch.zeros(2, 3), "b": torch.zeros(1)})
    messages = list(strategy.configure_train(1, start, ConfigRecord({}), Grid(range(10))))
    fedavg = SeededFedAvg(3, 0, names)
    assert [m.metadata.dst_node_id for m in messages] == [
        m.metadata.dst_node_id for m in fedavg.configure_train(1, start, ConfigRecord({}), Grid(range(10)))
    ]
    if name == "fedprox":
        assert messages[0].content["config"]["proximal-mu"] == 0.1
    replies = [_reply(m.metadata.dst_node_id, 1.0, 10) for m in messages]
    arrays, _ = strategy.aggregate_train(1, replies)
    plain, _ = fedavg.aggregate_train(1, replies)
    assert (arrays["w"].numpy() == plain["w"].numpy()).all() == (name == "fedprox")  # only FedProx aggregates as FedAvg


def _arrays_reply(node: int, arrays: dict, weight: int = 10) -> Message:
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": weight, "train_loss": 0.0})})
    return Message(content, reply_to=_sent(node))


def test_updates_of_the_wrong_shape_dtype_or_far_too_long_are_rejected_with_the_client_and_reason():
    def good(value):
        return {"w": torch.full((2, 3), value), "b": torch.tensor([value])}

    replies = [
        _arrays_reply(1, good(1.0)),
        _arrays_reply(2, good(1.2)),
        _arrays_reply(3, good(0.8)),
        _arrays_reply(4, good(100.0)),  # scaled x100: far above the round's median update
        _arrays_reply(5, {"w": torch.zeros(3, 2), "b": torch.tensor([1.0])}),  # wrong shape
        _arrays_reply(6, {"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.tensor([1.0])}),  # wrong dtype
        _arrays_reply(7, {"w": torch.full((2, 3), float("nan")), "b": torch.tensor([1.0])}),
    ]  # not finite
    strategy = _strategy()
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 1.0), rtol=1e-6)  # the three honest clients only
    reasons = dict(r.split(": ", 1) for r in strategy.last_round["rejections"])
    assert set(reasons) == {"client-4", "client-5", "client-6", "client-7"}
    assert "x the round's median" in reasons["client-4"] and "float32[3, 2], sent float32[2, 3]" in reasons["client-5"]
    assert "float64" in reasons["client-6"] and "NaN" in reasons["client-7"]
    assert strategy.last_round["clients_trained"] == 3


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum", "multikrum", "bulyan"])
def test_robust_rules_keep_sign_flipped_attackers_out(name):
    from fedwhisper.fl.strategy import STRATEGIES, robust_options

    def replies():  # (Flower's robust strategies consume the replies' arrays)
        honest = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02]
        attackers = [-5.0, -5.0]  # sign-flipped and scaled
        return [_arrays_reply(n, {"w": torch.full((2, 3), v), "b": torch.tensor([v])}) for n, v in enumerate(honest + attackers)]

    strategy = STRATEGIES[name](
        clients_per_round=9,
        seed=0,
        client_names={n: f"client-{n:02d}" for n in range(20)},
        norm_limit=0,
        **robust_options(name, 9, 1 if name == "bulyan" else 2),
    )
    strategy._sent = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(1, np.float32)}
    arrays, _ = strategy.aggregate_train(1, replies())
    assert 0.85 < float(arrays["w"].numpy().mean()) < 1.15
    fedavg = _strategy()
    fedavg.norm_limit = 0
    assert float(fedavg.aggregate_train(1, replies())[0]["w"].numpy().mean()) < 0  # (7.12 - 10) / 9
