"""Batched greedy transcription of short clips (up to 30 s) with a transformers Whisper model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from fedwhisper.audio import SAMPLE_RATE


@dataclass(frozen=True)
class DecodingOptions:
    language: str | None = None  # None: detected (multilingual models) or English (English-only models)
    task: str = "transcribe"  # or "translate" (multilingual models)
    num_beams: int = 1
    batch_size: int = 8
    max_new_tokens: int = 128


def transcribe_clips(model, processor, clips: Sequence[np.ndarray], options: DecodingOptions = DecodingOptions(), progress: bool = True) -> list[str]:
    """Text for each 16 kHz clip, in order."""
    multilingual = bool(getattr(model.generation_config, "is_multilingual", False))
    if not multilingual and (options.task != "transcribe" or options.language not in (None, "en", "english")):
        raise ValueError("this model is English-only: it can only transcribe English")
    kwargs = {"num_beams": options.num_beams, "do_sample": False, "max_new_tokens": options.max_new_tokens}
    if multilingual:
        kwargs |= {"task": options.task, "language": options.language}
    texts: list[str] = []
    batches = range(0, len(clips), options.batch_size)
    for start in tqdm(batches, desc="transcribe", unit="batch", disable=not progress or len(batches) < 2):
        batch = [np.asarray(c, dtype=np.float32) for c in clips[start : start + options.batch_size]]
        features = processor.feature_extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
        with torch.inference_mode():
            tokens = model.generate(
                features.input_features.to(model.device, model.dtype), attention_mask=features.attention_mask.to(model.device), **kwargs
            )
        texts += [text.strip() for text in processor.batch_decode(tokens, skip_special_tokens=True)]
    return texts
