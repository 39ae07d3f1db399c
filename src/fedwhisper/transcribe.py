"""Transcription with a transformers Whisper model: batched short clips, and long-form audio through transformers'
chunked pipeline (30-s chunks with overlapping strides, batched), with language detection and segment timestamps."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fedwhisper import constants
from fedwhisper.audio import SAMPLE_RATE, load_audio
from fedwhisper.errors import FedwhisperError

OUTPUT_FORMATS = ("txt", "srt", "vtt", "json")
MAX_TOKENS_PER_SECOND = 12  # fast speech is ~4 words/s, ~6 tokens/s with timestamps (Swedish: more tokens a word)


@dataclass(frozen=True)
class DecodingOptions:
    language: str | None = None  # None: detected (multilingual models) or English (English-only models)
    task: str = "transcribe"  # or "translate" (multilingual models)
    num_beams: int = 1
    batch_size: int = 8
    max_new_tokens: int = 128
    # Whisper's temperature fallback: a text that repeats itself (token compression ratio > 1.35) or is improbable (mean
    # log-prob < -1) is decoded again at the next temperature. (0.0,) is plain greedy/beam search, as evaluation uses.
    temperatures: tuple[float, ...] = (0.0,)


WHISPER_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai/whisper's transcribe default


def is_multilingual(model) -> bool:
    return constants.is_multilingual(model.config.vocab_size)


def generation_kwargs(model, options: DecodingOptions) -> dict:
    """``generate`` arguments for ``options``; English-only models refuse other languages and translation."""
    if options.task not in ("transcribe", "translate"):
        raise FedwhisperError(f"task must be transcribe or translate, not {options.task!r}")
    kwargs = {"num_beams": options.num_beams, "max_new_tokens": options.max_new_tokens}
    if len(options.temperatures) > 1:  # transformers samples at each temperature above 0
        kwargs |= {"temperature": tuple(options.temperatures), "compression_ratio_threshold": 1.35, "logprob_threshold": -1.0}
    else:
        kwargs |= {"do_sample": False}
    if not is_multilingual(model):
        if options.task != "transcribe" or options.language not in (None, "en", "english"):
            raise FedwhisperError("this model is English-only: it can only transcribe English")
        return kwargs
    return kwargs | {"task": options.task, "language": options.language}


def decode_batch(model, tokenizer, inputs: dict, options: DecodingOptions) -> list[str]:
    """Greedy/beam text for one batch of ``input_features`` or ``encoder_outputs`` (as the model's forward takes them)."""
    from transformers.modeling_outputs import BaseModelOutput

    inputs = dict(inputs)
    inputs.pop("labels", None)
    if "encoder_outputs" in inputs:
        hidden = inputs["encoder_outputs"][0].to(model.device, model.dtype)
        inputs["encoder_outputs"] = BaseModelOutput(last_hidden_state=hidden)
    else:
        inputs["input_features"] = inputs["input_features"].to(model.device, model.dtype)
    with torch.inference_mode():
        tokens = model.generate(**inputs, **generation_kwargs(model, options))
    return [text.strip() for text in tokenizer.batch_decode(tokens, skip_special_tokens=True)]


def transcribe_clips(model, processor, clips: Sequence[np.ndarray], options: DecodingOptions = DecodingOptions(), progress: bool = True) -> list[str]:
    """Text for each 16 kHz clip of at most 30 s, in order."""
    texts: list[str] = []
    batches = range(0, len(clips), options.batch_size)
    for start in tqdm(batches, desc="transcribe", unit="batch", disable=not progress or len(batches) < 2):
        batch = [np.asarray(c, dtype=np.float32) for c in clips[start : start + options.batch_size]]
        features = processor.feature_extractor(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        texts += decode_batch(model, processor.tokenizer, {"input_features": features.input_features}, options)
    return texts


@dataclass
class Transcript:
    text: str
    segments: list[dict] = field(default_factory=list)  # {"start": s, "end": s, "text": ...}
    language: str | None = None
    duration: float = 0.0
    source: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def detect_language(model, processor, audio: np.ndarray) -> str:
    """Whisper's language token for the first 30 s, as a code ("en", "sv", …); English-only models answer "en"."""
    if not is_multilingual(model):
        return "en"
    features = processor.feature_extractor(audio[: 30 * SAMPLE_RATE], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    token_id = int(model.detect_language(features.to(model.device, model.dtype))[0])
    return processor.tokenizer.convert_ids_to_tokens(token_id).strip("<|>")


class LongFormTranscriber:
    """Audio of any length through transformers' ASR pipeline: 30-s chunks, overlapping strides merged, chunks batched."""

    def __init__(self, model, processor, chunk_seconds: float = 30.0, stride_seconds: float = 5.0, batch_size: int = 8):
        from transformers import pipeline

        self.model, self.processor, self.chunk_seconds = model, processor, chunk_seconds
        if processor.tokenizer.pad_token is None:  # the pipeline's batch collation needs one; Whisper pads with end-of-text
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
        self.pipe = pipeline(
            "automatic-speech-recognition", model=model, tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor,
            chunk_length_s=chunk_seconds, stride_length_s=stride_seconds, batch_size=batch_size, device=model.device,
            ignore_warning=True,  # transformers' note on chunking with seq2seq models: overlapping strides are how we merge
        )

    def __call__(self, audio: np.ndarray, options: DecodingOptions = DecodingOptions(), timestamps: bool = True) -> Transcript:
        language = options.language or detect_language(self.model, self.processor, audio)
        kwargs = generation_kwargs(self.model, DecodingOptions(**(asdict(options) | {"language": language if is_multilingual(self.model) else None})))
        # A chunk's text may be long, but a hallucination loop (one phrase repeated up to Whisper's 448 positions) costs
        # more than the audio itself: speech stays far below MAX_TOKENS_PER_SECOND, so decoding stops there.
        seconds = min(audio.size / SAMPLE_RATE, self.chunk_seconds)
        kwargs["max_new_tokens"] = min(440, 16 + int(MAX_TOKENS_PER_SECOND * seconds))
        with torch.random.fork_rng(devices=[]):  # fallback samples: the same audio gives the same text, the caller's RNG untouched
            torch.manual_seed(0)
            output = self.pipe({"raw": audio, "sampling_rate": SAMPLE_RATE}, return_timestamps=timestamps, generate_kwargs=kwargs)
        duration = audio.size / SAMPLE_RATE
        segments = []
        for chunk in output.get("chunks", []):
            start, end = chunk["timestamp"]
            start = 0.0 if start is None else float(start)
            end = duration if end is None else min(float(end), duration)
            segments.append({"start": round(start, 2), "end": round(max(end, start), 2), "text": chunk["text"].strip()})
        return Transcript(text=output["text"].strip(), segments=segments, language=language, duration=round(duration, 2))


def transcribe_file(transcriber: LongFormTranscriber, path: str | os.PathLike, options: DecodingOptions = DecodingOptions()) -> Transcript:
    audio = load_audio(path)
    transcript = transcriber(audio, options)
    transcript.source = str(path)
    return transcript


def _clock(seconds: float, separator: str) -> str:
    milliseconds = int(round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{milliseconds:03d}"


def format_transcript(transcript: Transcript, output_format: str) -> str:
    """The transcript as txt, SubRip (srt), WebVTT (vtt) or json."""
    segments = transcript.segments or [{"start": 0.0, "end": transcript.duration, "text": transcript.text}]
    if output_format == "txt":
        return transcript.text + "\n"
    if output_format == "json":
        return json.dumps(transcript.as_dict(), indent=2, ensure_ascii=False) + "\n"
    if output_format == "srt":
        return "".join(f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text']}\n\n" for i, s in enumerate(segments, 1))
    if output_format == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text']}\n\n" for s in segments)
    raise FedwhisperError(f"unknown output format {output_format!r}; choose from {', '.join(OUTPUT_FORMATS)}")


def write_transcript(transcript: Transcript, out_dir: str | os.PathLike, formats: Sequence[str]) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for output_format in formats:
        path = out_dir / f"{Path(transcript.source).stem or 'transcript'}.{output_format}"
        path.write_text(format_transcript(transcript, output_format), encoding="utf-8")
        written.append(path)
    return written
