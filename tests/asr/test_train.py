import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedwhisper.asr.batches import CLIP_BUCKET_FRAMES, log_mel_batch, model_inputs
from fedwhisper.asr.prepare import load_features
from fedwhisper.asr.train import TrainConfig, apply_mode, batches_for, fine_tune, train_on_batches
from fedwhisper.cli import app
from fedwhisper.models.registry import load_whisper


def _trainable_names(model_dir, mode):
    model, _ = load_whisper(str(model_dir))
    return model, {
        name for name, p in apply_mode(model, TrainConfig(mode=mode, lora_rank=4)).named_parameters() if p.requires_grad
    }


def test_modes_choose_what_trains(tiny_asr_model):
    _, full = _trainable_names(tiny_asr_model, "full")
    _, frozen = _trainable_names(tiny_asr_model, "frozen-encoder")
    _, decoder = _trainable_names(tiny_asr_model, "decoder-only")
    _, lora = _trainable_names(tiny_asr_model, "lora")
    _, encoder = _trainable_names(tiny_asr_model, "encoder-only")
    assert any(".encoder." in n for n in full) and not any(".encoder." in n for n in frozen | decoder)
    assert encoder == full - frozen  # the two split the model
    assert "model.decoder.embed_tokens.weight" in frozen and "model.decoder.embed_tokens.weight" not in decoder
    assert decoder < frozen < full
    assert lora and all("lora_" in n and ".decoder.layers." in n for n in lora)


@pytest.mark.parametrize("mode", ["full", "encoder-only", "lora"])
def test_a_short_fine_tune_moves_only_the_trainable_weights(tiny_asr_model, tiny_features, mode, tmp_path):
    dataset, _ = load_features(tiny_features)
    model, processor = load_whisper(str(tiny_asr_model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(
        mode=mode, max_steps=2, batch_size=4, learning_rate=1e-3, warmup_steps=0, lora_rank=4, eval_clips=4, eval_every=2
    )
    result = fine_tune(
        model, processor, dataset["train"], config, eval_set=dataset["validation"], cache_root=tmp_path, progress=False
    )
    assert result.step == 2 and torch.isfinite(torch.tensor(result.metrics[-1]["loss"]))
    assert result.metrics[-1]["eval_wer"] is not None
    after = dict(model.named_parameters())
    moved = {
        part: any(not torch.equal(before[n], after[n]) for n in before if f".{part}." in n and n in after)
        for part in ("encoder", "decoder")
    }
    assert moved == {"encoder": mode != "lora", "decoder": mode == "full"}  # LoRA trains adapters beside the decoder's weights
    if mode == "lora":
        assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)  # adapters start at zero


def test_frozen_encoder_outputs_are_computed_once(tiny_asr_model, tiny_features, tmp_path):
    dataset, _ = load_features(tiny_features)
    model, _ = load_whisper(str(tiny_asr_model))
    config = TrainConfig(mode="decoder-only")
    first = batches_for(model, dataset["train"], config, tmp_path, progress=False)
    assert first.encoder_outputs.compute(progress=False) == 0  # already there
    batch = first.batch([0, 1])
    with torch.inference_mode():
        direct = model.model.encoder(log_mel_batch(dataset["train"], [0, 1])).last_hidden_state
    torch.testing.assert_close(batch["encoder_outputs"][0], direct, atol=2e-2, rtol=1e-2)  # float16 storage
    assert "input_features" not in batch


def test_a_clip_window_runs_the_encoder_on_the_clips_length_and_trains(tiny_asr_model, tiny_features):
    dataset, _ = load_features(tiny_features)
    train = dataset["train"]
    longest = max(len(train[i]["input_features"]) for i in range(4))
    clip = log_mel_batch(train, [0, 1, 2, 3], "clip")
    assert clip.shape[-1] % CLIP_BUCKET_FRAMES == 0 and longest <= clip.shape[-1] < longest + CLIP_BUCKET_FRAMES
    torch.testing.assert_close(clip, log_mel_batch(train, [0, 1, 2, 3])[..., : clip.shape[-1]])  # the 30-s input, cut

    model, _ = load_whisper(str(tiny_asr_model))
    config = TrainConfig(
        mode="lora",
        lora_rank=4,
        lora_alpha=8,
        window="clip",
        batch_size=4,
        learning_rate=1e-3,
        lora_targets=r"model\.(encoder|decoder)\.layers\.\d+\.(.*\.)?(q_proj|v_proj)",
    )
    peft_model = apply_mode(model, config)
    batches = batches_for(peft_model, train, config, progress=False)
    assert batches.encoder_outputs is None  # adapters in the encoder: its outputs change every step
    inputs = model_inputs(peft_model, batches.batch([0, 1, 2, 3]))
    assert inputs["encoder_outputs"][0].shape[1] == clip.shape[-1] // 2  # encoder positions of the clip, not 1500
    encoder_adapters = [p for n, p in peft_model.named_parameters() if "encoder" in n and "lora_B" in n]
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    result = train_on_batches(peft_model, batches.micro_batches(4, 0, 0, 2), config, optimizer)
    assert result["steps"] == 2 and np.isfinite(result["loss"])
    assert any(p.abs().sum() > 0 for p in encoder_adapters)  # gradients reached the encoder through the sliced window


def test_frozen_encoder_outputs_on_clip_windows_are_cached_per_window_and_batched_window_by_window(
    tiny_asr_model, tiny_features, tmp_path
):
    from fedwhisper.asr.batches import AsrBatches, whole_encoder
    from fedwhisper.asr.evaluate import evaluate_batches
    from fedwhisper.transcribe import DecodingOptions

    train = load_features(tiny_features)[0]["train"]
    model, processor = load_whisper(str(tiny_asr_model))
    cached = batches_for(model, train, TrainConfig(mode="decoder-only", window="clip"), tmp_path, progress=False)
    windows = [log_mel_batch(train, [i], "clip").shape[-1] for i in range(len(train))]
    assert len(set(windows)) > 1  # clips of several windows, so a batch has to choose one
    assert cached.encoder_outputs.positions().tolist() == [w // 2 for w in windows]
    seen = []
    for indices, batch in cached.in_order(4):
        assert len({windows[i] for i in indices}) == 1
        with torch.inference_mode():
            direct = whole_encoder(model.model.encoder, log_mel_batch(train, indices, "clip"))
        torch.testing.assert_close(batch["encoder_outputs"][0], direct, atol=2e-2, rtol=1e-2)  # float16 storage
        seen += indices
    assert sorted(seen) == list(range(len(train)))
    per_epoch = cached.batches_per_epoch(4)
    epoch = list(cached.micro_batches(4, 0, 0, per_epoch))
    assert sum(len(batch["labels"]) for batch in epoch) == len(train)  # every clip once, in batches of one window each
    resumed = list(cached.micro_batches(4, 0, per_epoch - 2, 3))  # micro-batch k is the same batch in every run
    torch.testing.assert_close(resumed[0]["labels"], epoch[-2]["labels"])

    # evaluation over the window-by-window order gives each row its own hypothesis
    options = DecodingOptions(max_new_tokens=6, batch_size=4)
    grouped = evaluate_batches(model, processor.tokenizer, cached, options)["rows"]
    alone = evaluate_batches(
        model,
        processor.tokenizer,
        AsrBatches(train, model.config.decoder_start_token_id, window="clip"),
        DecodingOptions(max_new_tokens=6, batch_size=1),
    )["rows"]
    assert [row["hypothesis"] for row in grouped] == [row["hypothesis"] for row in alone]


def _train_args(features, model, out, steps):
    return [
        "asr",
        "train",
        str(features),
        "--model",
        str(model),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-size",
        "4",
        "--learning-rate",
        "1e-3",
        "--warmup-steps",
        "2",
        "--eval-every",
        "4",
        "--save-every",
        "3",
        "--log-every",
        "1",
        "--eval-clips",
        "4",
        "--mode",
        "full",
    ]


def test_two_step_cpu_fine_tune_from_the_command_line(tiny_asr_model, tiny_features, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, _train_args(tiny_features, tiny_asr_model, out, 2))
    assert result.exit_code == 0, result.output
    assert "finished at step 2" in result.output
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2] and rows[-1]["eval_wer"]
    assert (out / "curves.png").stat().st_size > 0 and (out / "checkpoints" / "step-000002").is_dir()
    load_whisper(str(out / "best"))  # the best model is a plain transformers directory
    again = CliRunner().invoke(app, _train_args(tiny_features, tiny_asr_model, out, 2))
    assert again.exit_code == 1 and "--resume" in again.output


def test_killed_training_resumes_at_the_same_final_step_with_continuous_metrics(
    tiny_asr_model, tiny_features, tmp_path, session_home
):
    """Each run is its own `fedwhisper` process, as a user's are (a long-lived process's heap can change how MKL sums,
    in the last bit)."""
    steps = 12
    reference_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    env = os.environ | {"FEDWHISPER_HOME": str(session_home)}
    fedwhisper = [sys.executable, "-m", "fedwhisper"]
    reference = subprocess.run([*fedwhisper, *_train_args(tiny_features, tiny_asr_model, reference_dir, steps)], env=env)
    assert reference.returncode == 0

    process = subprocess.Popen(
        [*fedwhisper, *_train_args(tiny_features, tiny_asr_model, killed_dir, steps)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "step-000006").is_dir():
        assert process.poll() is None and time.monotonic() < deadline, "training ended before it could be interrupted"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "checkpoints" / f"step-{steps:06d}").exists()

    resumed = subprocess.run([*fedwhisper, "asr", "train", "--resume", str(killed_dir)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"finished at step {steps}" in resumed.stdout
    rows = list(csv.DictReader(open(killed_dir / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))  # every step once: nothing lost, nothing twice
    assert [float(r["eval_wer"]) for r in rows if r["eval_wer"]] and [int(r["step"]) for r in rows if r["eval_wer"]] == [4, 8, 12]
    reference_rows = list(csv.DictReader(open(reference_dir / "metrics.csv")))
    # exactly the uninterrupted run: every step's logged loss, and every trained tensor bit for bit
    assert [r["loss"] for r in rows] == [r["loss"] for r in reference_rows]
    final = f"checkpoints/step-{steps:06d}/trainable.safetensors"
    resumed_weights, reference_weights = load_file(killed_dir / final), load_file(reference_dir / final)
    assert resumed_weights.keys() == reference_weights.keys()
    assert all(torch.equal(resumed_weights[name], value) for name, value in reference_weights.items())


def test_frozen_bottom_blocks_are_cached_and_the_top_blocks_train(tiny_asr_model, tiny_features, tmp_path):
    from fedwhisper.asr.batches import model_inputs

    dataset, _ = load_features(tiny_features)
    model, processor = load_whisper(str(tiny_asr_model))
    config = TrainConfig(
        mode="full",
        frozen_encoder_layers=1,
        max_steps=2,
        batch_size=4,
        learning_rate=1e-3,
        warmup_steps=0,
        eval_clips=4,
        eval_every=2,
    )
    batches = batches_for(apply_mode(model, config), dataset["train"], config, tmp_path, progress=False)
    batch = batches.batch([0, 1])
    assert "encoder_bottom" in batch and "input_features" not in batch
    with torch.inference_mode():
        finished = model_inputs(model, batch)["encoder_outputs"][0]
        direct = model.model.encoder(log_mel_batch(dataset["train"], [0, 1])).last_hidden_state
    torch.testing.assert_close(finished, direct, atol=2e-2, rtol=1e-2)

    model, processor = load_whisper(str(tiny_asr_model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fine_tune(model, processor, dataset["train"], config, eval_set=dataset["validation"], cache_root=tmp_path, progress=False)
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("model.encoder.layers.1.") for n in moved)
    assert not any(n.startswith(("model.encoder.layers.0.", "model.encoder.conv")) for n in moved)
