"""Personal models: after the federation a device fine-tunes the global adapters a few steps on its own speakers' clips
and keeps the result only if it beats the global model on its own held-out clips. The personal model never leaves the
device; the federation sends nothing extra for it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from fedwhisper.errors import FedwhisperError


@dataclass(frozen=True)
class PersonalOptions:
    steps: int = 20  # optimizer steps on the device's own clips, from the global adapters
    learning_rate: float = 5e-5  # Adam from trained adapters: 4 steps at 5e-4 took a device 43 -> 63 % WER (small run)
    batch_size: int = 8

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise FedwhisperError(f"--personal-{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.learning_rate <= 0:
            raise FedwhisperError(f"--personal-learning-rate must be positive (got {self.learning_rate})")


def own_split(rows, share: float, seed: int = 0) -> tuple[object, object]:
    """(training rows, own test rows) of a device's clips: a seeded ``share`` of each speaker's clips (at least one of a
    speaker with two or more) is kept for testing, the same split in every round and on every run."""
    speakers = rows["speaker_id"] if "speaker_id" in rows.column_names else [""] * len(rows)
    by_speaker: dict[str, list[int]] = {}
    for index, speaker in enumerate(speakers):
        by_speaker.setdefault(speaker, []).append(index)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for speaker in sorted(by_speaker):
        indices = by_speaker[speaker]
        count = min(len(indices) - 1, max(1, round(share * len(indices)))) if share > 0 else 0
        held.update(rng.permutation(indices)[:count].tolist())
    return rows.select([i for i in range(len(rows)) if i not in held]), rows.select(sorted(held))


def personalise(model, config, rows, options: PersonalOptions, seed: int = 0, cache_root=None) -> dict:
    """``options.steps`` steps of ``model`` (its trainable tensors: the adapters it received) on ``rows``, in place;
    the training metrics."""
    from fedwhisper.asr.train import batches_for, train_on_batches

    if len(rows) < 1:
        raise FedwhisperError("no clips of its own to personalise on")
    batch_size = min(options.batch_size, len(rows))
    batches = batches_for(model, rows, config, cache_root, progress=False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.learning_rate)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return train_on_batches(
            model, batches.micro_batches(batch_size, seed, 0, options.steps), replace(config, max_steps=options.steps), optimizer
        )


def personal_model(federation, partition_id: int, state: dict, options: PersonalOptions, shard=None) -> tuple[dict, dict]:
    """A device's personal adapters, fine-tuned from the global model it would serve (``state`` interpolated as the
    federation serves it): (the tensors it keeps, {"global_wer", "personal_wer", "kept", "own_test_clips",
    "train_clips"}). ``federation``: the run's ``AsrFederationOptions`` (its ``own_test_share`` > 0, so the federation
    never trained on the own test clips); ``shard``: the device's clips (by default its simulation partition). The
    personal tensors are kept only if they beat the global ones on the own test clips; otherwise the device keeps the
    served global model."""
    from fedwhisper.asr.batches import AsrBatches
    from fedwhisper.asr.evaluate import evaluate_batches
    from fedwhisper.asr.federated import base_model, client_shard, model_to_train, served_state, training_rows
    from fedwhisper.asr.run import load_trainable_state, trainable_state
    from fedwhisper.asr.train import decoding_options

    if not federation.own_test_share:
        raise FedwhisperError("personal models are tested on clips the federation never saw: run it with --own-test-share")
    shard = client_shard(federation, partition_id) if shard is None else shard
    model, config = model_to_train(federation)
    state = served_state(federation, state)  # what the device would serve without a personal model
    load_trainable_state(model, state)
    own_test = own_split(shard, federation.own_test_share, federation.seed)[1]
    own_test = own_test.select([i for i, text in enumerate(own_test["transcription"]) if text.strip()])
    if not len(own_test):
        raise FedwhisperError(f"client {partition_id}: no transcribed clips of its own to test a personal model on")
    tokenizer = base_model(federation.model)[1].tokenizer
    decoding = decoding_options(model, config)
    start = model.config.decoder_start_token_id

    def wer() -> float:
        return evaluate_batches(model, tokenizer, AsrBatches(own_test, start, window=config.window), decoding)["wer"]

    global_wer = wer()
    rows, labelling = training_rows(model, config, federation, shard)  # pseudo-labelled by the global model if untranscribed
    trained = personalise(model, config, rows, options, federation.seed + partition_id)
    personal_wer = wer()
    kept = personal_wer < global_wer
    metrics = {
        "global_wer": global_wer,
        "personal_wer": personal_wer,
        "kept": kept,
        "own_test_clips": len(own_test),
        "train_clips": len(rows),
        "train_loss": trained["loss"],
    } | labelling
    return (trainable_state(model) if kept else state), metrics


def personalise_run(run_dir, partition_id: int, options: PersonalOptions = PersonalOptions()) -> dict:
    """`asr personalise`: client ``partition_id`` of a finished simulated federation (``RUN``) fine-tunes the best round's
    global adapters on its own clips; a personal model that beats the global one on the client's own test clips is
    saved as ``RUN/personal/client-NNN`` (a plain model directory). Returns ``personal_model``'s metrics."""
    import json
    from pathlib import Path

    from fedwhisper.asr.federated import AsrFederationOptions, base_model, model_to_train
    from fedwhisper.asr.run import load_trainable_state, save_plain_model
    from fedwhisper.runs import RunDirectory, load_arrays

    run = RunDirectory(Path(run_dir))
    tested = run.path / "test.json"
    if not tested.is_file():
        raise FedwhisperError(f"{run.path}: no finished federation (test.json) to personalise")
    federation = AsrFederationOptions.from_config(run.saved_options())
    if not 0 <= partition_id < federation.num_clients:
        raise FedwhisperError(f"--client must be between 0 and {federation.num_clients - 1} (got {partition_id})")
    best = json.loads(tested.read_text())["round"]
    state, _ = load_arrays(run.path / f"trainable-round-{best:03d}.safetensors")
    kept_state, metrics = personal_model(federation, partition_id, state, options)
    if metrics["kept"]:
        model, config = model_to_train(federation)
        load_trainable_state(model, kept_state)
        out = run.path / "personal" / f"client-{partition_id:03d}"
        save_plain_model(model, base_model(federation.model)[1], out, config.window)
    return metrics
