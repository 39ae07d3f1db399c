"""Federated ASR measurements. ``window_cost``: what one client's training costs per sample with the encoder on
Whisper's 30-s window against the clip's own length, same model, same LoRA adapters, same clips, in one run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fedwhisper.asr.batches import CLIP_BUCKET_FRAMES
from fedwhisper.asr.federated import AsrFederationOptions, model_to_train
from fedwhisper.asr.prepare import PrepareOptions, load_features, prepare_features
from fedwhisper.asr.train import batches_for, train_on_batches
from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder


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


PARTS = {"window_cost": window_cost}
