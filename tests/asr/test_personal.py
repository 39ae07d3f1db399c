"""Personal models and clients without transcripts, on a tiny random Whisper."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from fedwhisper.asr import evaluate, pseudo
from fedwhisper.asr.federated import (
    AsrFederationOptions,
    client_shard,
    client_update,
    initial_state,
    model_to_train,
    training_rows,
)
from fedwhisper.asr.personal import PersonalOptions, own_split, personal_model
from fedwhisper.asr.prepare import label_ids
from fedwhisper.asr.pseudo import pseudo_label
from fedwhisper.asr.train import decoding_options
from fedwhisper.cli import app
from fedwhisper.errors import FedwhisperError
from fedwhisper.models.registry import load_whisper
from fedwhisper.runs import RunDirectory


def _with(options: AsrFederationOptions, **changes) -> AsrFederationOptions:
    return AsrFederationOptions(**{**options.to_config(), **changes})


def _untranscribed(rows, model_dir):
    """``rows`` as an untranscribed device holds them: no text, labels the prompt only (``asr prepare`` keeps them so),
    speakers' age groups known (as in a Kaldi directory with spk2age)."""
    prompt = label_ids(load_whisper(str(model_dir))[1].tokenizer, "", False, "en", "transcribe")
    return rows.map(lambda row: {"transcription": "", "labels": prompt, "age_group": "child"})


def test_each_speaker_keeps_a_share_of_its_clips_to_test_on(options):
    shard = client_shard(options, 0)
    train, test = own_split(shard, 0.3, seed=0)
    assert len(train) + len(test) == len(shard) and not set(train["path"]) & set(test["path"])
    for speaker in set(shard["speaker_id"]):
        clips = shard["speaker_id"].count(speaker)
        assert test["speaker_id"].count(speaker) == (min(clips - 1, max(1, round(0.3 * clips))))
    assert own_split(shard, 0.3, seed=0)[1]["path"] == test["path"]  # every round, every run: the same clips
    assert own_split(shard, 0.3, seed=1)[1]["path"] != test["path"]
    lone = shard.select([0])
    assert len(own_split(lone, 0.5)[0]) == 1  # a speaker's only clip trains


def test_the_federation_never_trains_on_a_devices_own_test_clips(options):
    shared = _with(options, own_test_share=0.25)
    model, config = model_to_train(shared)
    shard = client_shard(shared, 1)
    rows, labelling = training_rows(model, config, shared, shard)
    assert rows["path"] == own_split(shard, 0.25, shared.seed)[0]["path"] and labelling == {}
    assert len(rows) < len(shard)


def test_a_personal_model_trains_on_the_device_and_is_kept_only_if_better(options, monkeypatch):
    shared = _with(options, own_test_share=0.25)
    start = initial_state(shared)
    wers = iter([0.5, 0.4, 0.5, 0.6])  # global then personal, twice: better, then worse
    real = evaluate.evaluate_batches
    monkeypatch.setattr(evaluate, "evaluate_batches", lambda *a, **k: real(*a, **k) | {"wer": next(wers)})
    kept_state, kept = personal_model(shared, 0, start, PersonalOptions(steps=3, learning_rate=0.01, batch_size=4))
    assert kept["kept"] and (kept["global_wer"], kept["personal_wer"]) == (0.5, 0.4)
    assert any(not torch.equal(kept_state[k], start[k]) for k in start)  # trained on the device
    assert kept["train_clips"] == len(own_split(client_shard(shared, 0), 0.25)[0]) and math.isfinite(kept["train_loss"])
    dropped_state, dropped = personal_model(shared, 0, start, PersonalOptions(steps=3, learning_rate=0.01, batch_size=4))
    assert not dropped["kept"] and all(torch.equal(dropped_state[k], start[k]) for k in start)


def test_personal_models_need_own_test_clips(options):
    with pytest.raises(FedwhisperError, match="--own-test-share"):
        personal_model(options, 0, initial_state(options), PersonalOptions())
    with pytest.raises(FedwhisperError, match="--own-test-share must be at least 0 and below 1"):
        _with(options, own_test_share=1.0)


def test_pseudo_labels_are_the_models_own_greedy_text_filtered_by_its_confidence(options, tiny_asr_model, monkeypatch):
    model, config = model_to_train(options)
    tokenizer = load_whisper(str(tiny_asr_model))[1].tokenizer
    rows = _untranscribed(client_shard(options, 0).select(range(6)), tiny_asr_model)
    manifest = {"multilingual": False, "options": {"language": "en", "task": "transcribe"}}
    decoding = decoding_options(model, config)
    looping, metrics = pseudo_label(model, tokenizer, rows, config.window, decoding, manifest, -math.inf)
    assert len(looping) == metrics["pseudo-labelled"] == 0 and metrics["pseudo-candidates"] == 6  # a random model loops
    monkeypatch.setattr(pseudo, "MAX_COMPRESSION_RATIO", math.inf)  # here: let its text through, to test the rest
    every, metrics = pseudo_label(model, tokenizer, rows, config.window, decoding, manifest, -math.inf)
    batches = evaluate.AsrBatches(rows, model.config.decoder_start_token_id, window=config.window)
    texts = [row["hypothesis"] for row in evaluate.evaluate_batches(model, tokenizer, batches, decoding)["rows"]]
    decoded = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in every["labels"]]
    assert decoded == texts and all(texts) and metrics["pseudo-labelled"] == 6
    labelled = evaluate.AsrBatches(every, model.config.decoder_start_token_id, window=config.window)
    scores = pseudo.mean_log_probs(model, labelled, decoding.batch_size)
    assert metrics["pseudo-mean-log-prob"] == pytest.approx(sum(scores) / 6) and all(s < 0 for s in scores)
    threshold = sorted(scores)[3]
    confident, _ = pseudo_label(model, tokenizer, rows, config.window, decoding, manifest, threshold)
    assert confident["path"] == [path for path, score in zip(rows["path"], scores) if score >= threshold]
    assert 0 < len(confident) < 6


def test_a_client_without_transcripts_trains_on_pseudo_labels_or_sits_out(options, monkeypatch):
    monkeypatch.setattr(pseudo, "MAX_COMPRESSION_RATIO", math.inf)  # a random model's text loops
    shard = _untranscribed(client_shard(options, 0), options.model)
    start = initial_state(options)
    state, metrics = client_update(_with(options, pseudo_min_log_prob=-1e9), 0, start, 1, shard=shard)
    assert metrics["pseudo-candidates"] == metrics["pseudo-labelled"] == len(shard)
    assert state is not None and metrics["num-examples"] == options.local_steps * options.batch_size
    off_state, off = client_update(_with(options, pseudo_labels="off"), 0, start, 1, shard=shard)
    assert off_state is None and off == {"num-examples": 0, "pseudo-candidates": len(shard), "pseudo-labelled": 0}
    strict_state, strict = client_update(_with(options, pseudo_min_log_prob=-1e-6), 0, start, 1, shard=shard)
    assert strict_state is None and strict["pseudo-labelled"] == 0  # labels it is not sure of: the client weighs nothing


def test_personal_options_are_checked():
    with pytest.raises(FedwhisperError, match="--personal-steps must be at least 1"):
        PersonalOptions(steps=0)


def test_asr_personalise_keeps_a_better_personal_model_on_the_device(options, tmp_path, monkeypatch):
    shared = _with(options, own_test_share=0.25, rounds=1)
    run = RunDirectory(tmp_path / "run")  # a finished federation as the server leaves it (round 1 its best)
    run.start(shared.to_config(), resume=False)
    run.save_arrays("trainable-round-001", initial_state(shared), {})
    (run.path / "test.json").write_text(json.dumps({"round": 1}))
    wers = iter([0.5, 0.25])
    real = evaluate.evaluate_batches
    monkeypatch.setattr(evaluate, "evaluate_batches", lambda *a, **k: real(*a, **k) | {"wer": next(wers)})
    result = CliRunner().invoke(app, ["asr", "personalise", str(tmp_path / "run"), "--client", "2", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "global 50.00%, personal 25.00%" in result.output
    saved = tmp_path / "run" / "personal" / "client-002"
    assert load_whisper(str(saved))[0].config.d_model == load_whisper(options.model)[0].config.d_model
    wrong = CliRunner().invoke(app, ["asr", "personalise", str(tmp_path / "run"), "--client", "3"])
    assert wrong.exit_code == 1 and "--client must be between 0 and 2 (got 3)" in wrong.output
