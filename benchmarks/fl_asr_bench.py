"""Federated ASR measurements.

- ``window_cost``: what one client's training costs per sample with the encoder on Whisper's 30-s window against the
  clip's own length, same model, same LoRA adapters, same clips, in one run.
- ``english``: federated LoRA on tiny.en over speaker clients of the English corpus (the ASR suite's), WER per round,
  held-out and flite-voice WER under both encoder windows, bytes per client; centralized and local-only baselines with
  the same total client steps.
- ``english_strategies``: the ``english`` federation with Flower's FedAvgM (server momentum), or with the clients'
  learning rate cosine-annealed over the rounds, instead of FedAvg at a constant rate.
- ``window_accuracy``: the same centralized LoRA fine-tune on 30-s and on clip windows, each model tested under both.
- ``swedish``: the same for base on the Swedish corpus, fewer clients (it has 17 training speakers) and rounds.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import asr_bench
from fedwhisper.asr.batches import CLIP_BUCKET_FRAMES, AsrBatches
from fedwhisper.asr.evaluate import evaluate_batches
from fedwhisper.asr.federated import (
    AsrFederationOptions,
    base_model,
    client_optimizer,
    client_shard,
    client_train_config,
    full_model_bytes,
    model_to_train,
)
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
    results = {
        "options": {"model": "tiny.en", "mode": "lora", "clips": len(clips), "batch_size": batch, "steps": steps},
        "model": "tiny.en",
        "clips": len(clips),
        "batch_size": batch,
        "steps": steps,
        "clip_seconds_mean": round(float(np.mean(clips["duration"])), 2),
        "clip_bucket_seconds": CLIP_BUCKET_FRAMES / 100,
    }
    for window in ("full", "clip"):
        options = AsrFederationOptions(
            features=str(features),
            model="tiny.en",
            mode="lora",
            window=window,
            batch_size=batch,
            local_steps=steps,
            cache_dir=str(work / "cache"),
        )
        model, config = model_to_train(options)
        batches = batches_for(model, clips, config, work / "cache", progress=False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        train_on_batches(
            model, batches.micro_batches(batch, 0, 0, 1), config, optimizer
        )  # warm-up: allocations, first-call costs
        started = time.perf_counter()
        result = train_on_batches(model, batches.micro_batches(batch, 0, 1, steps), config, optimizer)
        seconds = time.perf_counter() - started
        results[window] = {
            "samples_per_second": round(result["samples"] / seconds, 3),
            "seconds": round(seconds, 1),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
    results["clip_over_full"] = round(results["clip"]["samples_per_second"] / results["full"]["samples_per_second"], 2)
    return results


def _wer(model_ref: str, clips, language: str, window: str) -> dict:
    result = asr_bench.wer_of(model_ref, clips, language, window)
    return {key: result[key] for key in ("wer", "cer", "clips", "audio_seconds_per_second")}


def _spread(split, count: int):
    """``count`` clips spread over the split (it is ordered by speaker), so every held-out speaker is in it."""
    return split.select(np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int).tolist())


def _after(model_ref: str, held_out: dict, language: str, full_clips: int, windows=("clip", "full")) -> dict:
    """WER on each named test set: on clip windows over all of it, on 30-s windows over a spread ``full_clips`` subset
    (0: all of it); a 30-s window costs ~10x more to decode than a clip's."""
    return {
        name: {
            w: _wer(model_ref, _spread(split, full_clips) if w == "full" and full_clips else split, language, w) for w in windows
        }
        for name, split in held_out.items()
    }


def _tested(model_ref: str, held_out: dict, language: str, full_clips: int, subset) -> dict:
    """``_after``, and WER on clip windows on ``subset`` (the local-only models' test clips)."""
    return {
        "after": _after(model_ref, held_out, language, full_clips),
        "wer_same_clips": _wer(model_ref, subset, language, "clip")["wer"],
    }


def _kept(run_dir: Path) -> bool:
    """A run in a kept work directory (a resumable suite's) continues where it stopped."""
    return (run_dir / "options.json").is_file()


def _timed(job, *args) -> tuple[object, float]:
    started = time.perf_counter()
    return job(*args), round(time.perf_counter() - started, 1)


def _in_parallel(*jobs: tuple) -> list:
    """``(function, *args)`` jobs two at a time in single-threaded worker processes, each result with its seconds. On 2
    cores two 1-thread jobs do more than one 2-thread job: a federated client on one thread trained 3.0 samples/s
    while the other core was busy, the centralized run on both threads 3.8 (fl-asr:english, before this split)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,)
    ) as pool:
        futures = [pool.submit(_timed, *job) for job in jobs]
        return [future.result() for future in futures]


def _centralized(work: Path, options: AsrFederationOptions, total_steps: int) -> dict:
    """The same adapters, window, batch and learning rate on all training clips, as many steps as all clients took."""
    dataset = load_features(options.features)[0]
    whisper, processor = load_whisper(options.model)
    config = replace(
        client_train_config(options),
        max_steps=total_steps,
        eval_every=max(total_steps // 5, 1),
        save_every=total_steps,
        log_every=max(total_steps // 10, 1),
        eval_clips=options.eval_clips,
    )
    central = fine_tune(
        whisper,
        processor,
        dataset["train"],
        config,
        eval_set=dataset["validation"],
        run_dir=work / "centralized",
        resume=_kept(work / "centralized"),
        cache_root=work / "cache-centralized",
        progress=False,
    )
    return {
        "steps": total_steps,
        "best_step": central.best_step,
        "best_validation_wer": round(central.best_wer, 4),
        "train_samples_per_second": round(central.samples_per_second, 3),
    }


def _pretrained_and_local_only(
    work: Path, options: AsrFederationOptions, held_out: dict, language: str, small: bool, subset
) -> dict:
    """The pretrained model on 30-s windows (on clip windows it loops: round 0 of the federation); then local-only: a
    seeded sample of clients, each training alone for its share of the total steps, tested on ``subset``."""
    started = time.perf_counter()
    pretrained = _after(options.model, held_out, language, 0, ("full",))
    pretrained_seconds = round(time.perf_counter() - started, 1)
    chosen = sorted(random.Random(0).sample(range(options.num_clients), 2 if small else 5))
    steps_each = options.rounds * options.clients_per_round * options.local_steps // options.num_clients
    tokenizer = base_model(options.model)[1].tokenizer
    local = {}
    for partition in chosen:
        model, train_config = model_to_train(options)
        batches = batches_for(model, client_shard(options, partition), train_config, work / "cache-local", progress=False)
        train_on_batches(
            model,
            batches.micro_batches(options.batch_size, options.seed + partition, 0, steps_each),
            train_config,
            client_optimizer(model, options),
        )
        clips = AsrBatches(subset, model.config.decoder_start_token_id, window="clip")
        local[partition] = round(evaluate_batches(model, tokenizer, clips, decoding_options(model, train_config))["wer"], 4)
    return {
        "pretrained": pretrained,
        "pretrained_seconds": pretrained_seconds,
        "local_only": {
            "clients": chosen,
            "steps_each": steps_each,
            "subset_clips": len(subset),
            "wer_per_client": local,
            "mean_wer": round(float(np.mean(list(local.values()))), 4),
        },
    }


def federated_with_baselines(
    work: Path, small: bool, options: AsrFederationOptions, language: str, held_out: dict, preparation_seconds: float
) -> dict:
    """The federation, and centralized and local-only training with the same total client steps. ``held_out``: named
    test sets (the first: held-out speakers of the training voices), each evaluated before (30-s window) and after
    (clip and 30-s windows). Jobs that do not depend on each other run two at a time on one thread each: the
    centralized training beside the pretrained evaluation and local-only training, then the federation (its own two
    clients at a time), then the federated and the centralized model's evaluations side by side."""
    dataset = load_features(options.features)[0]
    total_steps = options.rounds * options.clients_per_round * options.local_steps
    full_clips = 20 if small else 60
    subset = _spread(next(iter(held_out.values())), full_clips)
    results = {
        "options": options.to_config(),
        "splits": {name: len(split) for name, split in dataset.items()} | {name: len(split) for name, split in held_out.items()},
        "client_steps_total": total_steps,
        "full_window_subset_clips": full_clips,
    }
    seconds = {"corpus_and_features": preparation_seconds}

    started = time.perf_counter()
    (central, seconds["centralized"]), (before, seconds["pretrained_and_local_only"]) = _in_parallel(
        (_centralized, work, options, total_steps), (_pretrained_and_local_only, work, options, held_out, language, small, subset)
    )
    seconds["baselines_wall"] = time.perf_counter() - started
    results["pretrained"], results["centralized"] = before["pretrained"], central
    results["pretrained_seconds"] = before["pretrained_seconds"]

    started = time.perf_counter()
    run = simulate(options, work / "federated", resume=_kept(work / "federated"))
    seconds["federation"] = time.perf_counter() - started
    rows = run.rows
    up = [b for row in rows[1:] for b in row["bytes_up"]]
    results["federated"] = {
        "rounds": [
            {
                key: row[key]
                for key in ("round", "wer", "cer", "seconds", "train_loss", "clients_trained", "clients_failed")
                if key in row
            }
            for row in rows
        ],
        "bytes_down_per_client_per_round": rows[1]["bytes_down_per_client"],
        "bytes_up_per_client_per_round": max(up),
        "bytes_total": sum(row["bytes_down_per_client"] * len(row["bytes_up"]) + sum(row["bytes_up"]) for row in rows[1:]),
        "full_model_bytes": full_model_bytes(options),
        "upload_fraction_of_full_model": round(max(up) / full_model_bytes(options), 4),
        "client_samples_per_second": [s for row in rows[1:] for s in row["client_samples_per_second"]],
        "best": json.loads((run.path / "test.json").read_text()),
    }

    started = time.perf_counter()
    (federated, seconds["federated_evaluation"]), (centralized, seconds["centralized_evaluation"]) = _in_parallel(
        *((_tested, str(path / "best"), held_out, language, full_clips, subset) for path in (run.path, work / "centralized"))
    )
    seconds["evaluation_wall"] = time.perf_counter() - started
    results["federated"]["after"], results["centralized"]["after"] = federated["after"], centralized["after"]
    results["local_only"] = before["local_only"] | {
        "federated_wer_same_clips": federated["wer_same_clips"],
        "centralized_wer_same_clips": centralized["wer_same_clips"],
    }
    results["seconds"] = {key: round(value, 1) for key, value in seconds.items()} | {
        "total": round(preparation_seconds + seconds["baselines_wall"] + seconds["federation"] + seconds["evaluation_wall"], 1)
    }
    first = next(iter(held_out))
    before_wer, federated = results["pretrained"][first]["full"]["wer"], results["federated"]["after"][first]["clip"]["wer"]
    results["federated"]["relative_wer_cut_held_out"] = round(1 - federated / before_wer, 3)
    results["federated"]["over_centralized"] = round(federated / results["centralized"]["after"][first]["clip"]["wer"], 3)
    return results


def english(work: Path, small: bool) -> dict:
    """tiny.en, LoRA on clip windows, over the English corpus's training speakers; flite voices measure forgetting."""
    started = time.perf_counter()
    features, flite_features, _ = asr_bench.english_features(work, small)
    held_out = {"held_out_espeak": load_features(features)[0]["test"], "flite": load_features(flite_features)[0]["test"]}
    return federated_with_baselines(
        work, small, _english_options(work, small, features), "en", held_out, time.perf_counter() - started
    )


def _english_options(work: Path, small: bool, features: Path, **changes) -> AsrFederationOptions:
    return AsrFederationOptions(
        features=str(features),
        model="tiny.en",
        mode="lora",
        window="clip",
        num_clients=6 if small else 20,
        clients_per_round=3 if small else 5,
        rounds=2 if small else 10,
        local_steps=2 if small else 4,
        eval_clips=10 if small else 60,
        cache_dir=str(work / "cache"),
        **changes,
    )


def english_strategies(work: Path, small: bool) -> dict:
    """The ``english`` federation with server momentum (Flower's FedAvgM) or with the clients' learning rate
    cosine-annealed over the rounds, instead of plain FedAvg at a constant rate: same clients, rounds and steps; the
    best round's model on the held-out speakers (all clips on clip windows, the spread subset on 30-s windows)."""
    features, _, _ = asr_bench.english_features(work, small)
    subset = _spread(load_features(features)[0]["test"], 20 if small else 60)
    results = {"options": _english_options(work, small, features).to_config()}  # each run's changes: its own "options"
    # measured at the clients' earlier default rate, 1e-3 (FedAvg there: 19.04 % on the test split)
    for name, changes in (
        ("fedavgm", {"strategy": "fedavgm", "server_momentum": 0.7, "learning_rate": 1e-3}),
        ("fedavg-cosine", {"lr_schedule": "cosine", "learning_rate": 1e-3}),
    ):
        options = _english_options(work, small, features, **changes)
        started = time.perf_counter()
        run = simulate(options, work / name)
        results[name] = {
            "options": changes,
            "validation_wer_per_round": [round(row["wer"], 4) for row in run.rows],
            "best": json.loads((run.path / "test.json").read_text()),
            "seconds": round(time.perf_counter() - started, 1),
            "best_full_window_subset": _wer(str(run.path / "best"), subset, "en", "full"),
        }
    return results


def window_accuracy(work: Path, small: bool) -> dict:
    """Does training on clip windows cost accuracy? The same LoRA fine-tune (centralized, same steps, same clips) with the
    encoder on 30-s windows and on clip windows; each model tested under both windows on held-out speakers."""
    features, _, _ = asr_bench.english_features(work, small)
    dataset = load_features(features)[0]
    held_out = _spread(dataset["test"], 20 if small else 100)
    steps = 4 if small else 60
    results = {"steps": steps, "held_out_clips": len(held_out)}
    results["options"] = {"model": "tiny.en", "mode": "lora", "learning_rate": 1e-3, "steps": steps, "windows": ["full", "clip"]}
    for window in ("full", "clip"):
        options = AsrFederationOptions(features=str(features), model="tiny.en", mode="lora", window=window, learning_rate=1e-3)
        config = replace(client_train_config(options), max_steps=steps, eval_every=steps, save_every=steps, eval_clips=20)
        whisper, processor = load_whisper("tiny.en")
        started = time.perf_counter()
        trained = fine_tune(
            whisper,
            processor,
            dataset["train"],
            config,
            eval_set=dataset["validation"],
            run_dir=work / f"train-{window}",
            cache_root=work / "cache",
            progress=False,
        )
        best = str(work / f"train-{window}" / "best")
        results[f"trained_{window}"] = {
            "train_seconds": round(time.perf_counter() - started, 1),
            "train_samples_per_second": round(trained.samples_per_second, 3),
            "held_out": {w: _wer(best, held_out, "en", w) for w in ("clip", "full")},
        }
    results["clip_over_full_samples_per_second"] = round(
        results["trained_clip"]["train_samples_per_second"] / results["trained_full"]["train_samples_per_second"], 2
    )
    return results


def swedish(work: Path, small: bool) -> dict:
    """base (multilingual), LoRA on clip windows, over the Swedish corpus's training speakers (the ASR suite's corpus)."""
    started = time.perf_counter()
    features = asr_bench.swedish_features(work, small)
    held_out = {"held_out": load_features(features)[0]["test"]}
    options = AsrFederationOptions(
        features=str(features),
        model="base",
        mode="lora",
        window="clip",
        num_clients=4 if small else 16,
        clients_per_round=2 if small else 4,
        rounds=2 if small else 5,
        local_steps=2 if small else 5,
        eval_clips=10 if small else 40,
        learning_rate=1e-3,
        cache_dir=str(work / "cache"),
    )
    return federated_with_baselines(work, small, options, "sv", held_out, time.perf_counter() - started)


PARTS = {
    "window_cost": window_cost,
    "english": english,
    "english_strategies": english_strategies,
    "window_accuracy": window_accuracy,
    "swedish": swedish,
}
