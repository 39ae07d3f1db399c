"""Pseudo-labels on the device: a client whose clips have no transcript labels them with the global model it received
(greedy, on its training window), keeps the labels the model itself is confident of, and trains on those. Nothing about
the labels leaves the device but how many clips passed (the client's FedAvg weight, so a client whose labels are poor
weighs little)."""

from __future__ import annotations

import zlib

import numpy as np
import torch

from fedwhisper.asr.batches import AsrBatches, model_inputs
from fedwhisper.asr.prepare import label_ids
from fedwhisper.constants import IGNORE_INDEX

# Whisper's own signs of a failed decode (openai/whisper's transcribe: compression_ratio_threshold 2.4 for a text that
# repeats itself); the log-prob floor is the federation's option (pseudo_min_logprob)
MAX_COMPRESSION_RATIO = 2.4


def untranscribed(rows) -> list[int]:
    """Indices of the rows without a reference transcript."""
    return [i for i, text in enumerate(rows["transcription"]) if not (text or "").strip()]


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def mean_log_probs(model, batches: AsrBatches, batch_size: int) -> list[float]:
    """Each row's mean log-probability per label token (text and end of text) under ``model``, teacher-forced."""
    scores = [0.0] * len(batches)
    with torch.inference_mode():
        for indices, batch in batches.in_order(batch_size):
            inputs = model_inputs(model, batch)
            labels = inputs["labels"]
            logits = model(**inputs).logits.float()
            token_scores = -torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
            counted = (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
            for i, score in zip(indices, (token_scores.sum(dim=1) / counted).tolist()):
                scores[i] = score
    return scores


def pseudo_label(model, tokenizer, rows, window: str, options, manifest: dict, min_log_prob: float) -> tuple[object, dict]:
    """(``rows`` labelled with ``model``'s greedy transcripts, only those with mean token log-prob >= ``min_log_prob``
    that do not repeat themselves; {"pseudo-candidates", "pseudo-labelled", "pseudo-mean-log-prob"}). ``options``: the
    decoding options; ``manifest``: the features' (tokenizer prompt: language, task)."""
    from fedwhisper.asr.evaluate import evaluate_batches

    was_training = model.training
    model.eval()
    start = model.config.decoder_start_token_id
    decoded = evaluate_batches(model, tokenizer, AsrBatches(rows, start, window=window), options)
    texts = [row["hypothesis"] for row in decoded["rows"]]
    prompt = manifest["options"]
    labels = [label_ids(tokenizer, text, manifest["multilingual"], prompt["language"], prompt["task"]) for text in texts]
    labelled = rows.remove_columns(["labels"]).add_column("labels", labels)
    scores = mean_log_probs(model, AsrBatches(labelled, start, window=window), options.batch_size)
    if was_training:
        model.train()
    kept = [
        i
        for i, (text, score) in enumerate(zip(texts, scores))
        if text.strip() and score >= min_log_prob and compression_ratio(text) <= MAX_COMPRESSION_RATIO
    ]
    metrics = {
        "pseudo-candidates": len(rows),
        "pseudo-labelled": len(kept),
        "pseudo-mean-log-prob": float(np.mean(scores)) if scores else 0.0,
    }
    return labelled.select(kept), metrics
