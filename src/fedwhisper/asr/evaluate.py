"""WER / CER of a Whisper model on prepared features: batched generation, teacher-forced loss, per-utterance rows."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fedwhisper.asr.batches import AsrBatches, model_inputs
from fedwhisper.metrics import character_error_rate, normalizer, word_error_rate
from fedwhisper.transcribe import DecodingOptions, decode_batch


def evaluate_batches(model, tokenizer, batches: AsrBatches, options: DecodingOptions, progress: bool = False) -> dict:
    """{"loss", "wer", "cer", "rows"}: each row has the clip's path, speaker, reference, hypothesis and its own WER."""
    was_training = model.training
    model.eval()
    dataset = batches.dataset
    references = dataset["transcription"]
    columns = {name: dataset[name] for name in ("path", "speaker_id") if name in dataset.column_names}
    hypotheses, loss_sum, tokens = [], 0.0, 0
    steps = batches.in_order(options.batch_size)
    for _, batch in tqdm(steps, total=-(-len(batches) // options.batch_size), desc="evaluate", unit="batch", disable=not progress):
        with torch.inference_mode():
            inputs = model_inputs(model, batch)
            logits = model(**inputs).logits
        labels = inputs["labels"]
        loss_sum += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="sum"))
        tokens += int((labels != -100).sum())
        hypotheses += decode_batch(model, tokenizer, inputs, options)
    if was_training:
        model.train()
    language = options.language or "en"
    rows = []
    normalise = normalizer(language)
    for i, (reference, hypothesis) in enumerate(zip(references, hypotheses)):
        row = {name: values[i] for name, values in columns.items()} | {"reference": reference, "hypothesis": hypothesis}
        row["wer"] = round(word_error_rate([reference], [hypothesis], language), 4) if normalise(reference).strip() else None
        rows.append(row)
    return {"loss": loss_sum / max(tokens, 1), "wer": word_error_rate(references, hypotheses, language),
            "cer": character_error_rate(references, hypotheses, language), "rows": rows}


def speaker_wer(rows: list[dict], language: str | None) -> dict[str, float]:
    """WER per speaker (pooled over that speaker's utterances)."""
    speakers: dict[str, tuple[list, list]] = {}
    for row in rows:
        refs, hyps = speakers.setdefault(row.get("speaker_id") or "", ([], []))
        refs.append(row["reference"])
        hyps.append(row["hypothesis"])
    return {speaker: round(word_error_rate(refs, hyps, language), 4) for speaker, (refs, hyps) in sorted(speakers.items())}


def write_rows(rows: list[dict], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path
