"""The flower-example recipe against the values of Flower's examples/whisper-federated-finetuning, setting by setting."""

import numpy as np
import pytest
import torch

from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.kws_app import build_kws_client_app, federate
from fedwhisper.kws import flower_example
from fedwhisper.kws.flower_example import RECIPE, clients_and_sample, sampler_weights, silence_clips, train_one_round
from fedwhisper.kws.model import build_head, load_head, parameter_count
from fedwhisper.kws.task import KwsOptions, client_update, corpus_for, new_head, with_recipe
from tests.inprocess import InProcessGrid


def test_recipe_settings_are_the_examples():
    assert (RECIPE.optimizer, RECIPE.learning_rate, RECIPE.batch_size, RECIPE.drop_last) == ("adam", 1e-3, 8, True)
    assert (RECIPE.local_epochs, RECIPE.min_full_batches, RECIPE.group_size, RECIPE.fraction_train) == (1, 2, 5, 0.05)
    assert (RECIPE.window_seconds, RECIPE.silence_ratio, RECIPE.head, RECIPE.sampler_bins) == (30.0, 0.1, "anchor", 12)
    # Speech Commands v0.02's 2,112 training speakers -> 422 clients in groups of 5 (the example's README), 21 per round
    assert clients_and_sample(2_112 - 2) == (422, 21)
    assert clients_and_sample(240) == (48, 2)  # int(2.4) = 2 = FedAvg's min_train_nodes


def test_head_is_the_examples_layer_for_layer():
    head = build_head("anchor", positions=1500, d_model=384, num_classes=12)
    assert parameter_count(head) == 781_964
    assert [type(m).__name__ for m in head] == ["Conv1d", "ReLU", "Flatten", "Linear"]
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "0.weight": (128, 1500, 1),
        "0.bias": (128,),
        "3.weight": (12, 128 * 384),
        "3.bias": (12,),
    }


def test_sampler_weights_follow_the_examples_formula():
    targets = np.array([0, 0, 0, 1, 11, 11])
    # histogram over 12 bins of 0..11: counts 3, 1, 2 -> N/(count+1)+1 = 6/4+1, 6/2+1, 6/3+1
    np.testing.assert_allclose(sampler_weights(targets), [2.5, 2.5, 2.5, 4.0, 3.0, 3.0])
    # bins span min..max of the targets, as np.histogram does there: without class 0 they no longer line up with classes
    shifted = sampler_weights(np.array([1, 1, 11]))
    assert shifted.shape == (3,) and shifted[0] != shifted[2]


def test_silence_is_one_repeated_crop_per_noise_file_without_gain():
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(16_000 * 3).astype(np.float32) * (i + 1) for i in range(6)]
    clips = silence_clips(noise, 187, np.random.default_rng(1))
    assert len(clips) == (int(0.1 * 187) // 6) * 6 == 18
    distinct = {c.tobytes() for c in clips}
    assert len(distinct) == 6 and all(c.size == 16_000 for c in clips)
    for clip, source in zip(clips[::3], noise):  # a slice of its file, unscaled
        assert any(np.array_equal(clip, source[o : o + 16_000]) for o in range(source.size - 16_000))
    assert silence_clips(noise, 59, np.random.default_rng(1)) == []  # int(5.9) // 6 = 0


def _dataset(rows: int):
    import datasets

    data = datasets.Dataset.from_dict(
        {"data": [np.zeros((80, 3000), dtype=np.float32)] * rows, "targets": [i % 3 for i in range(rows)]}
    )
    return data.with_format("torch", columns=["data", "targets"])


@pytest.mark.parametrize(("rows", "steps"), [(15, None), (16, 2), (23, 2), (24, 3)])
def test_training_drops_the_last_batch_and_needs_two_full_batches(tiny_whisper_dir, rows, steps):
    from transformers import WhisperForConditionalGeneration

    encoder = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).model.encoder
    head = build_head("anchor", 1500, encoder.config.d_model, 3)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    metrics = train_one_round(encoder, head, _dataset(rows), torch.Generator().manual_seed(0))
    if steps is None:
        assert metrics is None and all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())
    else:
        assert metrics["steps"] == steps and metrics["num-examples"] == rows
        assert not torch.equal(before["3.weight"], head.state_dict()["3.weight"])


@pytest.fixture
def options(tiny_whisper_dir, tiny_kws_corpus, tmp_path):
    return KwsOptions(
        corpus=str(tiny_kws_corpus),
        model=str(tiny_whisper_dir),
        keywords="yes,no,up",
        rounds=1,
        cache_dir=str(tmp_path / "cache"),
        recipe="flower-example",
    )


def test_recipe_options_and_a_client_round(options):
    resolved = with_recipe(options)
    speakers = len(set(corpus_for(options).splits["train"]["speaker_id"]))
    assert (resolved.num_clients, resolved.clients_per_round) == clients_and_sample(speakers)
    assert (
        resolved.window_seconds,
        resolved.head,
        resolved.batch_size,
        resolved.learning_rate,
        resolved.optimizer,
        resolved.local_epochs,
        resolved.min_client_examples,
    ) == (30.0, "anchor", 8, 1e-3, "adam", 1, 16)
    assert with_recipe(resolved) == resolved
    with pytest.raises(FedwhisperError, match="--recipe must be one of"):
        with_recipe(KwsOptions(recipe="nope"))

    state = new_head(resolved).state_dict()
    partition = flower_example.grouped_partitioner(corpus_for(resolved)).load_partition(0)
    new_state, metrics = client_update(resolved, 0, state, round_number=1)
    silence = (int(0.1 * len(partition)) // len(corpus_for(resolved).noise)) * len(corpus_for(resolved).noise)
    assert metrics["num-examples"] == len(partition) + silence
    assert metrics["steps"] == metrics["num-examples"] // 8 and metrics["load-seconds"] > 0
    assert set(new_state) == set(state)


def test_recipe_federates_on_flower(options, tmp_path):
    """The recipe's round through Flower's ServerApp job and ClientApps, messages passed in this process (the
    simulation engine itself: tests/kws/test_federation.py)."""
    config, clients = options.to_config(), with_recipe(options).num_clients
    row = federate(InProcessGrid(build_kws_client_app(config), config, clients), options, tmp_path / "run").rows[-1]
    # a client with fewer than two full batches of the example's batch size is skipped; the others train the head
    assert row["round"] == 1 and row["clients_trained"] >= 1
    assert row["clients_trained"] + row["clients_skipped"] == with_recipe(options).clients_per_round
    assert len(row["client_load_seconds"]) == row["clients_trained"] and all(s > 0 for s in row["client_load_seconds"])
    start, trained = new_head(with_recipe(options)).state_dict(), load_head(tmp_path / "run" / "head.safetensors")[0].state_dict()
    assert any(not torch.equal(start[key], trained[key]) for key in start)
