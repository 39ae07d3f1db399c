import numpy as np
import pytest
import torch

from fedwhisper.errors import FedwhisperError
from fedwhisper.kws.model import build_head, load_head, parameter_count
from fedwhisper.kws.train import TrainOptions, evaluate_head, train_head
from fedwhisper.runs import RunDirectory


def test_anchor_head_has_the_examples_parameter_count_and_ours_is_much_smaller():
    assert parameter_count(build_head("anchor", 1500, 384, 12)) == 781_964
    assert parameter_count(build_head("pooled", 50, 384, 12)) < 781_964 / 10
    with pytest.raises(FedwhisperError, match="unknown head"):
        build_head("huge", 50, 384, 12)


@pytest.mark.parametrize("kind", ["pooled", "anchor"])
def test_training_learns_a_separable_problem(kind):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=400)
    centres = rng.standard_normal((4, 8)) * 3
    features = (centres[labels][:, None, :] + rng.standard_normal((400, 5, 8))).astype(np.float16)
    head = build_head(kind, 5, 8, 4)
    before = evaluate_head(head, features, labels)["accuracy"]
    metrics = train_head(head, features, labels, TrainOptions(epochs=5, batch_size=16, learning_rate=3e-3))
    after = evaluate_head(head, features, labels)
    assert metrics["num-examples"] == 400
    assert after["accuracy"] > 0.9 > before


def test_class_balanced_sampling_sees_rare_classes_as_often_as_common_ones():
    labels = np.array([0] * 90 + [1] * 10)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(1, 2)

        def forward(self, x):
            seen.append(x[:, 0, 0].clone())
            return self.linear(x[:, 0, :])

    train_head(Spy(), labels[:, None, None].astype(np.float32), labels, TrainOptions(epochs=20, batch_size=10))
    share_of_rare = float(torch.cat(seen).mean())
    assert 0.4 < share_of_rare < 0.6


def test_head_checkpoint_round_trips(tmp_path):
    head = build_head("pooled", 50, 64, 5)
    meta = {"head": "pooled", "model": "tiny.en", "window_seconds": 1.0, "positions": 50, "d_model": 64, "classes": list("abcde")}
    RunDirectory(tmp_path).save_arrays("h", head.state_dict(), meta)
    loaded, loaded_meta = load_head(tmp_path / "h.safetensors")
    assert loaded_meta == meta
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
