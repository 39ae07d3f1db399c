"""The ctranslate2 inference backend: faster-whisper over a CTranslate2 export, for transcription and evaluation.

Same interface as ``transcribe.LongFormTranscriber`` (the transformers backend): ``load_transcriber`` picks one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedwhisper.audio import SAMPLE_RATE
from fedwhisper.constants import BACKENDS
from fedwhisper.errors import FedwhisperError
from fedwhisper.transcribe import DecodingOptions, Transcript, check_language_and_task, language_code


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise FedwhisperError(f"--backend must be one of {', '.join(BACKENDS)} (got {backend!r})")


def load_ctranslate2(model_dir: str | os.PathLike, threads: int = 0):
    """faster-whisper's ``WhisperModel`` on the CPU, weights in the export's own precision (int8 for an int8 export)."""
    from faster_whisper import WhisperModel

    return WhisperModel(str(model_dir), device="cpu", compute_type="default", cpu_threads=threads or min(4, os.cpu_count() or 1))


class FasterWhisperTranscriber:
    """Audio of any length through faster-whisper: its batched pipeline over VAD-cut chunks (``batch_size`` > 1), or
    its sequential decoding of 30-s windows, each conditioned on the previous text (``batch_size`` 1; ``vad`` optional)."""

    backend = "ctranslate2"

    def __init__(self, model_dir: str | os.PathLike, batch_size: int = 8, vad: bool = False, threads: int = 0):
        from faster_whisper import BatchedInferencePipeline

        self.model_dir, self.batch_size, self.vad = Path(model_dir), batch_size, vad
        self.model = load_ctranslate2(model_dir, threads)
        self.pipeline = BatchedInferencePipeline(self.model) if batch_size > 1 else None

    @property
    def multilingual(self) -> bool:
        return self.model.model.is_multilingual

    @property
    def identity(self) -> dict:
        return {"backend": self.backend, "model": str(self.model_dir.resolve()), "batch_size": self.batch_size, "vad": self.vad}

    def check(self, options: DecodingOptions) -> None:
        check_language_and_task(self.multilingual, options)

    def detect_language(self, audio: np.ndarray) -> str:
        if not self.multilingual:
            return "en"
        language, _, _ = self.model.detect_language(audio[: 30 * SAMPLE_RATE])
        return language

    def _segments(self, audio: np.ndarray, options: DecodingOptions, timestamps: bool):
        self.check(options)
        language = language_code(options.language) if options.language else self.detect_language(audio)
        kwargs = {
            "language": language if self.multilingual else "en",
            "task": options.task,
            "beam_size": options.num_beams,
            "temperature": list(options.temperatures),
            "without_timestamps": not timestamps,
        }
        if self.pipeline is not None:  # faster-whisper's batched pipeline cuts long audio at VAD pauses
            segments, _ = self.pipeline.transcribe(audio, batch_size=self.batch_size, vad_filter=True, **kwargs)
        else:
            segments, _ = self.model.transcribe(audio, vad_filter=self.vad, **kwargs)
        return language, segments

    def pieces(self, audio: np.ndarray, options: DecodingOptions) -> Iterator[tuple[float, list[dict], str]]:
        """(end in seconds, [segment], text) of each segment as faster-whisper finishes it."""
        _, segments = self._segments(audio, options, timestamps=True)
        for segment in segments:
            text = segment.text.strip()
            yield segment.end, [{"start": round(segment.start, 2), "end": round(segment.end, 2), "text": text}], text

    def __call__(self, audio: np.ndarray, options: DecodingOptions = DecodingOptions(), timestamps: bool = True) -> Transcript:
        language, segments = self._segments(audio, options, timestamps)
        rows = [{"start": round(s.start, 2), "end": round(s.end, 2), "text": s.text.strip()} for s in segments]
        return Transcript(
            text=" ".join(r["text"] for r in rows if r["text"]),
            segments=rows if timestamps else [],
            language=language,
            duration=round(audio.size / SAMPLE_RATE, 2),
        )


def load_transcriber(model: str, backend: str = "transformers", batch_size: int = 8, assistant: str | None = None):
    """The long-form transcriber of ``model`` on ``backend``; ctranslate2 exports a transformers model on first use.
    ``assistant``: a student that drafts tokens for ``model`` (speculative decoding, transformers backend)."""
    check_backend(backend)
    if assistant and backend != "transformers":
        raise FedwhisperError("--assistant (speculative decoding) runs on the transformers backend")
    if backend == "ctranslate2":
        from fedwhisper.models.export import ctranslate2_model_dir

        return FasterWhisperTranscriber(ctranslate2_model_dir(model), batch_size=batch_size)
    from fedwhisper.models.registry import load_whisper
    from fedwhisper.transcribe import LongFormTranscriber, load_assistant

    whisper, processor = load_whisper(model)
    return LongFormTranscriber(
        whisper, processor, batch_size=batch_size, assistant=load_assistant(assistant) if assistant else None
    )


def decode_features(whisper, tokenizer, features: np.ndarray, options: DecodingOptions, max_new_tokens: int) -> list[str]:
    """Greedy/beam text for a batch of 30-s log-mels ``[batch, n_mels, 3000]`` on CTranslate2 (``whisper``: a
    faster-whisper ``WhisperModel``), prompted as the transformers path is: start, language, task, no timestamps."""
    import ctranslate2

    check_language_and_task(whisper.model.is_multilingual, options)
    prompt = ["<|startoftranscript|>"]
    if whisper.model.is_multilingual:
        prompt += [f"<|{language_code(options.language or 'en')}|>", f"<|{options.task}|>"]
    prompt = tokenizer.convert_tokens_to_ids(prompt + ["<|notimestamps|>"])
    results = whisper.model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
        [prompt] * len(features),
        beam_size=options.num_beams,
        max_length=len(prompt) + max_new_tokens,
        suppress_blank=True,
        suppress_tokens=[-1],
    )
    return [text.strip() for text in tokenizer.batch_decode([r.sequences_ids[0] for r in results], skip_special_tokens=True)]
