"""WER / CER of a Whisper model on prepared features: batched generation, teacher-forced loss, per-utterance rows."""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fedwhisper.asr.batches import WINDOWS, AsrBatches, model_inputs
from fedwhisper.backends import decode_features
from fedwhisper.constants import IGNORE_INDEX
from fedwhisper.data.corpus import GROUP_COLUMNS
from fedwhisper.errors import FedwhisperError
from fedwhisper.metrics import character_error_rate, normalizer, word_error_rate
from fedwhisper.transcribe import DecodingOptions, decode_batch, load_assistant, token_cap


def evaluate_batches(
    model, tokenizer, batches: AsrBatches, options: DecodingOptions, progress: bool = False, assistant=None
) -> dict:
    """{"loss", "wer", "cer", "rows"}: each row has the clip's path, speaker, reference, hypothesis and its own WER.
    A batch generates at most ``token_cap`` tokens for its longest clip, so a model that loops stops early.
    ``model`` is a transformers Whisper (``assistant``: a student drafting for it, see ``decode_batch``), or a
    faster-whisper ``WhisperModel`` (CTranslate2, no loss)."""
    on_ctranslate2 = not isinstance(model, torch.nn.Module)
    was_training = not on_ctranslate2 and model.training
    if not on_ctranslate2:
        model.eval()
    dataset = batches.dataset
    references = dataset["transcription"]
    columns = {name: dataset[name] for name in ("path", "speaker_id", *GROUP_COLUMNS) if name in dataset.column_names}
    seconds = dataset["duration"] if "duration" in dataset.column_names else None
    hypotheses, loss_sum, tokens = [""] * len(dataset), 0.0, 0
    steps = batches.in_order(options.batch_size)
    for indices, batch in tqdm(
        steps, total=-(-len(batches) // options.batch_size), desc="evaluate", unit="batch", disable=not progress
    ):
        capped = (
            options
            if seconds is None
            else replace(options, max_new_tokens=token_cap(max(seconds[i] for i in indices), options.max_new_tokens))
        )
        if on_ctranslate2:
            decoded = decode_features(model, tokenizer, batch["input_features"].numpy(), options, capped.max_new_tokens)
            for i, text in zip(indices, decoded):
                hypotheses[i] = text
            continue
        with torch.inference_mode():
            inputs = model_inputs(model, batch)
            if "input_features" in inputs:  # encoded once for the loss and for generation (which would encode again)
                inputs["encoder_outputs"] = (model.get_encoder()(inputs.pop("input_features")).last_hidden_state,)
            logits = model(**inputs).logits
        labels = inputs["labels"]
        loss_sum += float(
            torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        )
        tokens += int((labels != IGNORE_INDEX).sum())
        for i, text in zip(indices, decode_batch(model, tokenizer, inputs, capped, assistant)):
            hypotheses[i] = text
    if was_training:
        model.train()
    language = options.language or "en"
    rows = []
    normalise = normalizer(language)
    for i, (reference, hypothesis) in enumerate(zip(references, hypotheses)):
        row = {name: values[i] for name, values in columns.items()} | {"reference": reference, "hypothesis": hypothesis}
        row["wer"] = round(word_error_rate([reference], [hypothesis], language), 4) if normalise(reference).strip() else None
        rows.append(row)
    scored = any(row["wer"] is not None for row in rows)  # untranscribed clips (pseudo-labelling) have no error rate
    grouped = [column for column in GROUP_COLUMNS if scored and column in columns and any(columns[column])]
    groups = {column: wer_by(rows, column, language) for column in grouped}
    return {
        "loss": None if on_ctranslate2 else loss_sum / max(tokens, 1),
        "wer": word_error_rate(references, hypotheses, language) if scored else None,
        "cer": character_error_rate(references, hypotheses, language) if scored else None,
        "groups": groups,  # e.g. {"age_group": {"adult": 0.2, "child": 0.3}}: WER pooled per value
        "rows": rows,
    }


def wer_by(rows: list[dict], column: str, language: str | None) -> dict[str, float]:
    """WER per value of ``column`` (speaker_id, age_group, ...), pooled over that value's utterances that have a
    reference (a value with none has no WER)."""
    pooled: dict[str, tuple[list, list]] = {}
    for row in rows:
        if row.get("wer") is None:
            continue
        refs, hyps = pooled.setdefault(row.get(column) or "", ([], []))
        refs.append(row["reference"])
        hyps.append(row["hypothesis"])
    return {value: round(word_error_rate(refs, hyps, language), 4) for value, (refs, hyps) in sorted(pooled.items())}


def speaker_wer(rows: list[dict], language: str | None) -> dict[str, float]:
    """WER per speaker (pooled over that speaker's utterances)."""
    return wer_by(rows, "speaker_id", language)


def write_rows(rows: list[dict], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    return path


def evaluate_data(
    data: str | os.PathLike,
    model: str,
    split: str = "test",
    options: DecodingOptions = DecodingOptions(),
    limit: int = 0,
    progress: bool = True,
    window: str | None = None,
    backend: str = "transformers",
    assistant: str | None = None,
) -> dict:
    """WER/CER of ``model`` on a split of prepared features or of a corpus directory (prepared for the model in a
    scratch directory first) with the encoder on ``window`` (full, or clip; None: the window the model was fine-tuned
    on), on ``backend`` (transformers, or ctranslate2: faster-whisper on the model's CTranslate2 export).
    ``options.language`` None: the features' language; ``assistant``: a student for speculative decoding
    (transformers). Adds "clips", "audio_seconds", "seconds" (decoding time) and "language" to ``evaluate_batches``'
    result."""
    import tempfile
    import time

    from fedwhisper.asr.prepare import MANIFEST, PrepareOptions, load_features, prepare_features
    from fedwhisper.asr.run import trained_window
    from fedwhisper.backends import check_backend, load_ctranslate2
    from fedwhisper.models.export import ctranslate2_model_dir, export_source
    from fedwhisper.models.registry import load_processor, load_whisper

    check_backend(backend)  # before a corpus is prepared or a model loaded
    if assistant and backend != "transformers":
        raise FedwhisperError("--assistant (speculative decoding) runs on the transformers backend")
    if window is not None and window not in WINDOWS:
        raise FedwhisperError(f"--window must be one of {', '.join(WINDOWS)} (got {window!r})")
    window = window or trained_window(model)
    data = Path(data)
    with tempfile.TemporaryDirectory(prefix="fedwhisper-eval-") as scratch:
        whisper = load_ctranslate2(ctranslate2_model_dir(model)) if backend == "ctranslate2" else None
        features = data
        if not (data / MANIFEST).is_file():  # a corpus
            features = Path(scratch) / "features"
            prepare_features(
                data,
                export_source(model),
                features,
                PrepareOptions(language=options.language or "en", task=options.task, validation_speakers=0),
            )
        dataset, manifest = load_features(features)
        if split not in dataset:
            raise FedwhisperError(f"{data} has no {split} split (it has {', '.join(dataset)})")
        rows = dataset[split].select(range(min(limit, len(dataset[split])))) if limit else dataset[split]
        whisper, processor = (whisper, load_processor(model)) if whisper else load_whisper(model)
        options = replace(options, language=options.language or manifest["options"]["language"])
        started = time.perf_counter()
        batches = AsrBatches(rows, processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>"), window=window)
        result = evaluate_batches(
            whisper, processor.tokenizer, batches, options, progress, load_assistant(assistant) if assistant else None
        )
        return result | {
            "clips": len(rows),
            "audio_seconds": float(sum(rows["duration"])),
            "seconds": time.perf_counter() - started,
            "language": options.language,
            "window": window,
        }
