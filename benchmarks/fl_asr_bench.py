"""Federated ASR measurements.

- ``window_cost``: what one client's training costs per sample with the encoder on Whisper's 30-s window against the
  clip's own length, same model, same LoRA adapters, same clips, in one run.
- ``english``: federated LoRA on tiny.en over speaker clients of the English corpus (the ASR suite's), WER per round,
  held-out and flite-voice WER under both encoder windows, bytes per client; centralized and local-only baselines with
  the same total client steps.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

import asr_bench
import numpy as np
import torch

from fedwhisper.asr.batches import CLIP_BUCKET_FRAMES, AsrBatches
from fedwhisper.asr.evaluate import evaluate_batches
from fedwhisper.asr.federated import AsrFederationOptions, base_model, client_shard, full_model_bytes, model_to_train
from fedwhisper.asr.prepare import PrepareOptions, load_features, prepare_features
from fedwhisper.asr.train import batches_for, decoding_options, fine_tune, train_on_batches
from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
from fedwhisper.fl.asr_app import simulate
from fedwhisper.models.registry import load_whisper


def window_cost(work: Path, small: bool) -> dict:
    corpus, features = work / "asr-en", work / "features"
    synthesize_audiofolder(corpus, AsrSynthesisOptions(sentences=120 if small else 240, speakers=12, test_speakers=2))
    prepare_features(corpus, "tiny.en", features, PrepareOptions(validation_speakers=1))
    train = load_features(features)[0]["train"]
    clips = train.select(range(min(len(train), 16 if small else 64)))
    steps, batch = (2, 8) if small else (8, 8)
    results = {"model": "tiny.en", "clips": len(clips), "batch_size": batch, "steps": steps,
               "clip_seconds_mean": round(float(np.mean(clips["duration"])), 2), "clip_bucket_seconds": CLIP_BUCKET_FRAMES / 100}
    for window in ("full", "clip"):
        options = AsrFederationOptions(features=str(features), model="tiny.en", mode="lora", window=window, batch_size=batch,
                                       local_steps=steps, cache_dir=str(work / "cache"))
        model, config = model_to_train(options)
        batches = batches_for(model, clips, config, work / "cache", progress=False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        train_on_batches(model, batches.micro_batches(batch, 0, 0, 1), config, optimizer)  # warm-up: allocations, first-call costs
        started = time.perf_counter()
        result = train_on_batches(model, batches.micro_batches(batch, 0, 1, steps), config, optimizer)
        seconds = time.perf_counter() - started
        results[window] = {"samples_per_second": round(result["samples"] / seconds, 3), "seconds": round(seconds, 1),
                           "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    results["clip_over_full"] = round(results["clip"]["samples_per_second"] / results["full"]["samples_per_second"], 2)
    return results


def _wer(model_ref: str, clips, window: str) -> dict:
    result = asr_bench.wer_of(model_ref, clips, "en", window)
    return {key: result[key] for key in ("wer", "cer", "clips", "audio_seconds_per_second")}


def _spread(split, count: int):
    """``count`` clips spread over the split (it is ordered by speaker), so every held-out speaker is in it."""
    return split.select(np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int).tolist())


def english(work: Path, small: bool) -> dict:
    started = time.perf_counter()
    features, flite_features, _ = asr_bench.english_features(work, small)
    dataset, flite_test = load_features(features)[0], load_features(flite_features)[0]["test"]
    options = AsrFederationOptions(features=str(features), model="tiny.en", mode="lora", window="clip", num_clients=6 if small else 20,
                                   clients_per_round=3 if small else 5, rounds=2 if small else 10, local_steps=2 if small else 5,
                                   eval_clips=10 if small else 60, cache_dir=str(work / "cache"))
    total_steps = options.rounds * options.clients_per_round * options.local_steps
    seconds = {"corpus_and_features": time.perf_counter() - started}
    results = {"options": options.to_config(), "splits": {name: len(split) for name, split in dataset.items()} | {"flite_test": len(flite_test)},
               "client_steps_total": total_steps}

    started = time.perf_counter()  # the pretrained model works only on 30-s windows (on clip windows it loops: round 0 below)
    results["pretrained"] = {"held_out_espeak": {"full": _wer("tiny.en", dataset["test"], "full")}, "flite": {"full": _wer("tiny.en", flite_test, "full")}}
    seconds["pretrained_evaluation"] = time.perf_counter() - started

    started = time.perf_counter()
    run = simulate(options, work / "federated")
    seconds["federation"] = time.perf_counter() - started
    rows = run.rows
    up = [b for row in rows[1:] for b in row["bytes_up"]]
    results["federated"] = {
        "rounds": [{key: row[key] for key in ("round", "wer", "cer", "seconds", "train_loss", "clients_trained", "clients_failed") if key in row}
                   for row in rows],
        "bytes_down_per_client_per_round": rows[1]["bytes_down_per_client"], "bytes_up_per_client_per_round": max(up),
        "bytes_total": sum(row["bytes_down_per_client"] * len(row["bytes_up"]) + sum(row["bytes_up"]) for row in rows[1:]),
        "full_model_bytes": full_model_bytes(options), "upload_fraction_of_full_model": round(max(up) / full_model_bytes(options), 4),
        "client_samples_per_second": [s for row in rows[1:] for s in row["client_samples_per_second"]],
        "best": json.loads((run.path / "test.json").read_text()),
    }
    started = time.perf_counter()
    federated_best = str(run.path / "best")
    results["federated"]["after"] = {"held_out_espeak": {w: _wer(federated_best, dataset["test"], w) for w in ("clip", "full")},
                                     "flite": {w: _wer(federated_best, flite_test, w) for w in ("clip", "full")}}
    seconds["federated_evaluation"] = time.perf_counter() - started

    # centralized: the same adapters, window, batch and learning rate on all training clips, as many steps as all clients took
    started = time.perf_counter()
    whisper, processor = load_whisper("tiny.en")
    config = replace(options.train_config(len(whisper.model.encoder.layers)), max_steps=total_steps, eval_every=max(total_steps // 5, 1),
                     save_every=total_steps, log_every=max(total_steps // 10, 1), eval_clips=options.eval_clips)
    central = fine_tune(whisper, processor, dataset["train"], config, eval_set=dataset["validation"], run_dir=work / "centralized",
                        cache_root=work / "cache", progress=False)
    seconds["centralized"] = time.perf_counter() - started
    started = time.perf_counter()
    central_best = str(work / "centralized" / "best")
    results["centralized"] = {"steps": total_steps, "best_step": central.best_step, "best_validation_wer": round(central.best_wer, 4),
                              "train_samples_per_second": round(central.samples_per_second, 3),
                              "after": {"held_out_espeak": {w: _wer(central_best, dataset["test"], w) for w in ("clip", "full")},
                                        "flite": {"clip": _wer(central_best, flite_test, "clip")}}}
    seconds["centralized_evaluation"] = time.perf_counter() - started

    # local-only: a seeded sample of clients, each training alone for its share of the total steps, tested on a spread
    # subset of the held-out clips (as are the federated and centralized models, for the comparison)
    started = time.perf_counter()
    subset = _spread(dataset["test"], 20 if small else 60)
    chosen = sorted(random.Random(0).sample(range(options.num_clients), 2 if small else 5))
    steps_each = total_steps // options.num_clients
    tokenizer = base_model(options.model)[1].tokenizer
    local = {}
    for partition in chosen:
        model, train_config = model_to_train(options)
        batches = batches_for(model, client_shard(options, partition), train_config, work / "cache", progress=False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.learning_rate)
        train_on_batches(model, batches.micro_batches(options.batch_size, options.seed + partition, 0, steps_each), train_config, optimizer)
        held_out = AsrBatches(subset, model.config.decoder_start_token_id, window="clip")
        local[partition] = round(evaluate_batches(model, tokenizer, held_out, decoding_options(model, train_config))["wer"], 4)
    results["local_only"] = {"clients": chosen, "steps_each": steps_each, "subset_clips": len(subset), "wer_per_client": local,
                             "mean_wer": round(float(np.mean(list(local.values()))), 4),
                             "federated_wer_same_clips": _wer(federated_best, subset, "clip")["wer"],
                             "centralized_wer_same_clips": _wer(central_best, subset, "clip")["wer"]}
    seconds["local_only"] = time.perf_counter() - started
    results["seconds"] = {key: round(value, 1) for key, value in seconds.items()} | {"total": round(sum(seconds.values()), 1)}
    before, after = results["pretrained"]["held_out_espeak"]["full"]["wer"], results["federated"]["after"]["held_out_espeak"]["clip"]["wer"]
    results["federated"]["relative_wer_cut_held_out"] = round(1 - after / before, 3)
    results["federated"]["over_centralized"] = round(after / results["centralized"]["after"]["held_out_espeak"]["clip"]["wer"], 3)
    return results


PARTS = {"window_cost": window_cost, "english": english}
