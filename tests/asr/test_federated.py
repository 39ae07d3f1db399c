"""Federated ASR on Flower's simulation engine with a tiny random Whisper: rounds, bytes, best model, exact resume."""

import json
import shutil

import pytest
import torch
from flwr.app import ArrayRecord
from safetensors.torch import load_file

from fedwhisper.asr.evaluate import evaluate_data
from fedwhisper.asr.federated import (
    AsrFederationOptions,
    client_update,
    full_model_bytes,
    initial_state,
    local_training,
    model_to_train,
    round_learning_rate,
    served_state,
)
from fedwhisper.asr.prepare import load_features
from fedwhisper.asr.run import load_trainable_state
from fedwhisper.errors import FedwhisperError
from fedwhisper.fl.asr_app import build_asr_client_app, federate, simulate
from fedwhisper.fl.strategy import record_bytes
from fedwhisper.models.registry import load_whisper
from fedwhisper.runs import RunDirectory
from tests.inprocess import InProcessGrid


def _in_process(options: AsrFederationOptions, run_dir, resume: bool = False):
    """The federation's ServerApp job and ClientApps, messages passed in this process (the simulation engine itself:
    test_a_client_that_raises_mid_round_does_not_stop_the_round)."""
    config = options.to_config()
    return federate(InProcessGrid(build_asr_client_app(config), config, options.num_clients), options, run_dir, resume=resume)


def test_lora_rounds_send_only_adapters_and_resume_to_the_same_weights(options, tmp_path):
    run = _in_process(options, tmp_path / "run")
    assert [row["round"] for row in run.rows] == [0, 1, 2]
    adapters = initial_state(options)
    assert adapters and all("lora_" in name for name in adapters)
    adapter_bytes = record_bytes(ArrayRecord(adapters))  # as serialised in the message (each array's header included)
    assert adapter_bytes - sum(t.numel() * t.element_size() for t in adapters.values()) < 200 * len(adapters)
    for row in run.rows[1:]:
        assert (
            row["clients_trained"] == 2
            and row["bytes_down_per_client"] == adapter_bytes
            and row["bytes_up"] == [adapter_bytes] * 2
        )
    assert adapter_bytes < 0.05 * full_model_bytes(options)
    load_whisper(str(tmp_path / "run" / "best"))  # the best global model is a plain transformers directory (LoRA merged)

    # killed between rounds 1 and 2: round 2 never recorded
    shutil.copytree(tmp_path / "run", tmp_path / "killed")
    RunDirectory(tmp_path / "killed").keep_until(1)
    (tmp_path / "killed" / "trainable-round-002.safetensors").unlink()
    resumed = _in_process(options, tmp_path / "killed", resume=True)
    assert [row["round"] for row in resumed.rows] == [0, 1, 2]
    untimed = [[{k: v for k, v in row.items() if "second" not in k} for row in r.rows] for r in (resumed, run)]
    assert untimed[0] == untimed[1]
    a, b = (load_file(tmp_path / name / "trainable-round-002.safetensors") for name in ("killed", "run"))
    for name, value in b.items():
        torch.testing.assert_close(a[name], value, rtol=0, atol=0)


@pytest.mark.flower
def test_a_client_that_raises_mid_round_does_not_stop_the_round(options, tmp_path):
    # encoder-top clients cache their frozen blocks' outputs in cache/client-N; a file there makes client 1 raise
    top = AsrFederationOptions(
        **{**options.to_config(), "mode": "encoder-top", "top_blocks": 1, "clients_per_round": 3, "rounds": 1, "window": "full"}
    )  # clip windows cache nothing
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "client-1").write_text("not a directory")
    run = simulate(top, tmp_path / "run")
    last = run.rows[-1]
    assert (last["clients_trained"], last["clients_failed"]) == (2, 1)
    assert len(last["failure_reasons"]) == 1 and "Error" in last["failure_reasons"][0]
    assert load_file(tmp_path / "run" / "trainable-round-001.safetensors").keys() == initial_state(top).keys()
    # test.json: the best round by validation WER, its saved model (RUN/best) scored on every held-out test clip
    test = json.loads((tmp_path / "run" / "test.json").read_text())
    best = min((row for row in run.rows if "wer" in row), key=lambda row: row["wer"])
    assert (test["round"], test["validation_wer"]) == (best["round"], best["wer"])
    again = evaluate_data(top.features, str(tmp_path / "run" / "best"), "test", progress=False, window=top.window)
    assert test["clips"] == again["clips"] == len(load_features(top.features)[0]["test"]) > 0
    assert test["wer"] == pytest.approx(again["wer"]) and (tmp_path / "run" / "wer.png").is_file()


def test_adapters_go_only_into_the_stacks_asked_for(options):
    both = initial_state(options)
    encoder = initial_state(AsrFederationOptions(**{**options.to_config(), "lora_stacks": "encoder"}))
    assert set(encoder) == {key for key in both if ".encoder." in key} and any(".decoder." in key for key in both)
    with pytest.raises(FedwhisperError, match="--lora-stacks must name encoder, decoder or both"):
        AsrFederationOptions(**{**options.to_config(), "lora_stacks": "encoder,joiner"})


@pytest.mark.parametrize("mode", ["lora", "full"])  # B scaled, or weights interpolated
def test_the_served_model_is_pretrained_plus_a_share_of_the_federated_update(options, mode):
    def merged(opts, state) -> dict:
        model, _ = model_to_train(opts)
        load_trainable_state(model, state)
        whisper = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        return {k: v.clone() for k, v in whisper.state_dict().items()}

    trained = AsrFederationOptions(**{**options.to_config(), "mode": mode, "learning_rate": 0.01, "interpolation": 0.25})
    state, _ = client_update(trained, 0, initial_state(trained), round_number=1)
    pretrained, full, served = (
        merged(trained, initial_state(trained)),
        merged(trained, state),
        merged(trained, served_state(trained, state)),
    )
    changed = [k for k in pretrained if not torch.equal(pretrained[k], full[k])]
    assert changed and all(
        torch.allclose(served[k] - pretrained[k], 0.25 * (full[k] - pretrained[k]), atol=1e-6) for k in changed
    )
    as_trained = AsrFederationOptions(**{**trained.to_config(), "interpolation": 1.0})
    assert served_state(as_trained, state) is state


def test_with_a_frozen_the_average_of_the_clients_adapters_is_the_average_of_their_updates(options):
    frozen = AsrFederationOptions(**{**options.to_config(), "lora_freeze_a": True, "learning_rate": 0.01})
    start = initial_state(frozen)
    assert start and all("lora_B" in key for key in start)
    updates = [client_update(frozen, partition, start, round_number=1)[0] for partition in (0, 1)]
    model, _ = model_to_train(frozen)
    a = {name: p.detach() for name, p in model.named_parameters() if "lora_A" in name}

    def delta(state: dict, key: str) -> torch.Tensor:
        return state[key] @ a[key.replace("lora_B", "lora_A")]

    averaged = {key: (updates[0][key] + updates[1][key]) / 2 for key in start}
    assert all(
        torch.allclose(delta(averaged, key), (delta(updates[0], key) + delta(updates[1], key)) / 2, atol=1e-6) for key in start
    )
    assert all(not torch.equal(updates[0][key], start[key]) for key in start)


def test_fedprox_clients_stay_closer_to_the_global_model(options):
    start = initial_state(options)

    def distance(mu: float) -> float:
        prox = AsrFederationOptions(**{**options.to_config(), "strategy": "fedprox", "proximal_mu": mu, "learning_rate": 0.05})
        state, metrics = client_update(prox, 0, start, round_number=1)
        return sum(float(((state[k] - start[k]) ** 2).sum()) for k in start)

    assert distance(100.0) < 0.5 * distance(0.0)


def test_a_cosine_schedule_anneals_the_clients_learning_rate_over_the_rounds(options):
    cosine = AsrFederationOptions(**{**options.to_config(), "lr_schedule": "cosine", "rounds": 5, "learning_rate": 0.01})
    rates = [round_learning_rate(cosine, r) for r in range(1, 6)]
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.001) and rates == sorted(rates, reverse=True)
    start = initial_state(cosine)

    def distance(schedule: str) -> float:
        state, _ = client_update(
            AsrFederationOptions(**{**cosine.to_config(), "lr_schedule": schedule}), 0, start, round_number=5
        )
        return sum(float(((state[k] - start[k]) ** 2).sum()) for k in start) ** 0.5

    assert distance("cosine") < 0.3 * distance("constant")  # the last round's steps are a tenth as long


def test_a_client_can_train_on_its_own_loss(options):
    one_step = AsrFederationOptions(**{**options.to_config(), "local_steps": 1})

    def train(loss_fn=None) -> float:
        model, config = model_to_train(one_step)
        return local_training(model, config, one_step, 0, 1, loss_fn=loss_fn)[1]["train_loss"]

    calls = []
    doubled = train(lambda model, inputs: calls.append(inputs["labels"].shape) or 2 * model(**inputs).loss)
    assert len(calls) == 1 and doubled == pytest.approx(2 * train(), rel=1e-4)


def test_a_client_whose_loss_is_not_finite_withholds_its_update(options):
    wild = AsrFederationOptions(**{**options.to_config(), "learning_rate": 1e30, "local_steps": 4, "mode": "full"})
    state, metrics = client_update(wild, 0, initial_state(wild), round_number=1)
    assert state is None and metrics == {"num-examples": 0, "rejected-nan": 1}


def test_options_are_checked_before_any_work(options, tmp_path):
    with pytest.raises(FedwhisperError, match="--clients-per-round must be at most --num-clients"):
        AsrFederationOptions(**{**options.to_config(), "clients_per_round": 9})
    with pytest.raises(FedwhisperError, match="--mode must be one of lora, encoder-top, full"):
        AsrFederationOptions(**{**options.to_config(), "mode": "decoder"})
    with pytest.raises(FedwhisperError, match="50 clients need at least as many training speakers"):
        simulate(AsrFederationOptions(**{**options.to_config(), "num_clients": 50}), tmp_path / "r")
    assert not (tmp_path / "r").exists()
