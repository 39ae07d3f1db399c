"""Transcription with a transformers Whisper model: batched short clips, and long-form audio through transformers'
chunked pipeline (30-s chunks with overlapping strides, batched), with language detection and segment timestamps."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fedwhisper import constants
from fedwhisper.audio import SAMPLE_RATE, load_audio
from fedwhisper.errors import FedwhisperError
from fedwhisper.files import write_json, write_text

log = logging.getLogger("fedwhisper.transcribe")

OUTPUT_FORMATS = ("txt", "srt", "vtt", "json")
MAX_TOKENS_PER_SECOND = 12  # fast speech is ~4 words/s, ~6 tokens/s with timestamps (Swedish: more tokens a word)


def token_cap(seconds: float, ceiling: int) -> int:
    """Most new tokens worth generating for ``seconds`` of audio: a hallucination loop (one phrase repeated to the
    cap) costs more than the audio itself, and speech stays far below MAX_TOKENS_PER_SECOND, so decoding stops there."""
    return min(ceiling, 16 + int(MAX_TOKENS_PER_SECOND * seconds))


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

    def __post_init__(self):
        for name in ("num_beams", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise FedwhisperError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.task not in ("transcribe", "translate"):
            raise FedwhisperError(f"--task must be transcribe or translate (got {self.task!r})")
        if self.language is not None:
            from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

            if self.language.lower() not in LANGUAGES and self.language.lower() not in TO_LANGUAGE_CODE:
                raise FedwhisperError(
                    f"--language {self.language!r} is not a language Whisper knows (a code such as en, sv, de, or a name)"
                )


WHISPER_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # openai/whisper's transcribe default


def is_multilingual(model) -> bool:
    return constants.is_multilingual(model.config.vocab_size)


def check_language_and_task(multilingual: bool, options: DecodingOptions) -> None:
    """English-only models refuse other languages and translation (before any audio is read)."""
    if not multilingual and (options.task != "transcribe" or options.language not in (None, "en", "english")):
        raise FedwhisperError("this model is English-only: it can only transcribe English")


def language_code(language: str) -> str:
    """ "sv" for "sv", "swedish" or "Swedish"."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    return TO_LANGUAGE_CODE.get(language.lower(), language.lower())


class SuppressTokens:
    """Whisper's token suppression as transformers applies it (``suppress_tokens`` at every step,
    ``begin_suppress_tokens`` at the first generated position, which Whisper's ``generate`` sets through
    ``set_begin_index``), with each vocabulary mask built once: transformers' two processors rebuild theirs with
    ``torch.isin`` over the whole vocabulary at every step, ~1.2 ms each on a CPU core, a third of a 2-layer base
    decoder's step."""

    def __init__(self, suppress_tokens: Sequence[int], begin_suppress_tokens: Sequence[int]):
        self.suppress_tokens, self.begin_suppress_tokens = list(suppress_tokens), list(begin_suppress_tokens)
        self.begin_index = 0
        self._masks: tuple[torch.Tensor, torch.Tensor] | None = None  # built at the first step, from its scores' shape

    def set_begin_index(self, begin_index: int) -> None:
        self.begin_index = begin_index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self._masks is None:
            vocabulary = torch.arange(scores.shape[-1], device=scores.device)
            self._masks = tuple(
                torch.isin(vocabulary, torch.tensor(tokens, dtype=torch.long, device=scores.device))
                for tokens in (self.suppress_tokens, self.begin_suppress_tokens)
            )
        suppress, begin_suppress = self._masks
        scores = scores.masked_fill(suppress, -float("inf"))
        return scores.masked_fill(begin_suppress, -float("inf")) if input_ids.shape[-1] == self.begin_index else scores


def generation_kwargs(model, options: DecodingOptions, timestamps: bool = False) -> dict:
    """``generate`` arguments for ``options`` (and segment ``timestamps``); English-only models refuse other languages
    and translation."""
    check_language_and_task(is_multilingual(model), options)
    kwargs = {"num_beams": options.num_beams, "max_new_tokens": options.max_new_tokens}
    if not timestamps:  # Whisper's timestamp rules read suppressed scores, and its generate puts our processors after them
        # transformers' own suppression processors stay in the list (a None list is refilled from the model's
        # generation config) but get nothing to suppress
        config = model.generation_config
        kwargs |= {
            "logits_processor": [SuppressTokens(config.suppress_tokens or [], config.begin_suppress_tokens or [])],
            "suppress_tokens": [],
            "begin_suppress_tokens": [],
        }
    if len(options.temperatures) > 1:  # transformers samples at each temperature above 0
        kwargs |= {"temperature": tuple(options.temperatures), "compression_ratio_threshold": 1.35, "logprob_threshold": -1.0}
    else:
        kwargs |= {"do_sample": False}
    return kwargs | ({"task": options.task, "language": options.language} if is_multilingual(model) else {})


def load_assistant(ref: str | os.PathLike, device: str = "cpu"):
    """A student's decoder as a speculative-decoding assistant (transformers' ``WhisperForCausalLM``): it reads the
    main model's encoder outputs, so the encoder runs once (Distil-Whisper's students keep their teacher's encoder)."""
    from transformers import WhisperForCausalLM

    from fedwhisper.models.registry import from_pretrained, resolve_model

    return from_pretrained(WhisperForCausalLM, resolve_model(ref)).to(device).eval()


def generate_tokens(model, hidden: torch.Tensor, options: DecodingOptions, assistant=None) -> list[torch.Tensor]:
    """Each row's greedy/beam tokens from the encoder's output ``hidden``, one pass a window: without it, a text with
    two timestamp tokens mid-way sends transformers into its long-form loop, which needs input_features and fails.
    (Transcription, from input_features, does not force it: with temperature fallback transformers stacks a batch's
    one-pass results unpadded, and rows decoded again differ in length. Fallback itself decodes again from
    input_features, so it runs only there.) With an ``assistant`` (speculative decoding: the assistant drafts, the
    model verifies, so the text is the model's own) rows are decoded one at a time, as assisted generation requires."""
    from transformers.modeling_outputs import BaseModelOutput

    if len(options.temperatures) > 1:
        raise FedwhisperError(
            "batched decoding is greedy or beam search; temperature fallback runs in transcription (LongFormTranscriber)"
        )
    kwargs = generation_kwargs(model, options) | {"force_unique_generate_call": True}
    with torch.inference_mode():
        if assistant is None:
            return list(model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), **kwargs))
        return [
            model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=row[None]), assistant_model=assistant, **kwargs)[0]
            for row in hidden
        ]


def decode_batch(model, tokenizer, inputs: dict, options: DecodingOptions, assistant=None) -> list[str]:
    """Text (``generate_tokens``) for one batch of ``input_features`` or ``encoder_outputs`` (as the model's forward
    takes them)."""
    inputs = dict(inputs)
    inputs.pop("labels", None)
    if "input_features" in inputs:
        hidden = model.get_encoder()(inputs.pop("input_features").to(model.device, model.dtype)).last_hidden_state
    else:
        hidden = inputs.pop("encoder_outputs")[0].to(model.device, model.dtype)
    tokens = generate_tokens(model, hidden, options, assistant)
    return [text.strip() for text in tokenizer.batch_decode(tokens, skip_special_tokens=True)]


def transcribe_clips(
    model, processor, clips: Sequence[np.ndarray], options: DecodingOptions = DecodingOptions(), progress: bool = True
) -> list[str]:
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
    features = processor.feature_extractor(
        audio[: 30 * SAMPLE_RATE], sampling_rate=SAMPLE_RATE, return_tensors="pt"
    ).input_features
    token_id = int(model.detect_language(features.to(model.device, model.dtype))[0])
    return processor.tokenizer.convert_ids_to_tokens(token_id).strip("<|>")


class LongFormTranscriber:
    """Audio of any length through transformers' ASR pipeline: 30-s chunks, overlapping strides merged, chunks batched.
    ``backends.FasterWhisperTranscriber`` is the same interface over CTranslate2."""

    backend = "transformers"

    def __init__(
        self, model, processor, chunk_seconds: float = 30.0, stride_seconds: float = 5.0, batch_size: int = 8, assistant=None
    ):
        from transformers import pipeline

        self.model, self.processor, self.chunk_seconds, self.stride_seconds = model, processor, chunk_seconds, stride_seconds
        self.assistant = assistant
        batch_size = 1 if assistant is not None else batch_size  # assisted generation decodes one chunk at a time
        if processor.tokenizer.pad_token is None:  # the pipeline's batch collation needs one; Whisper pads with end-of-text
            processor.tokenizer.pad_token = processor.tokenizer.eos_token
        self.pipe = pipeline(
            "automatic-speech-recognition",
            model=model,
            tokenizer=processor.tokenizer,
            feature_extractor=processor.feature_extractor,
            chunk_length_s=chunk_seconds,
            stride_length_s=stride_seconds,
            batch_size=batch_size,
            device=model.device,
            ignore_warning=True,  # transformers' note on chunking with seq2seq models: overlapping strides are how we merge
        )

    @property
    def multilingual(self) -> bool:
        return is_multilingual(self.model)

    @property
    def identity(self) -> dict:
        return {
            "backend": self.backend,
            "chunk_seconds": self.chunk_seconds,
            "stride_seconds": self.stride_seconds,
            "assistant": self.assistant.name_or_path if self.assistant is not None else None,
        }

    def check(self, options: DecodingOptions) -> None:
        generation_kwargs(self.model, options)

    def detect_language(self, audio: np.ndarray) -> str:
        return detect_language(self.model, self.processor, audio)

    def pieces(self, audio: np.ndarray, options: DecodingOptions) -> Iterator[tuple[float, list[dict], str]]:
        """(end in seconds, segments, text) of each block of ``options.batch_size`` chunks, cut at quiet points."""
        for start, end in block_bounds(audio, options.batch_size * (self.chunk_seconds - 2 * self.stride_seconds)):
            piece = self(audio[start:end], options)
            offset = start / SAMPLE_RATE
            yield (
                end / SAMPLE_RATE,
                [
                    {**seg, "start": round(seg["start"] + offset, 2), "end": round(seg["end"] + offset, 2)}
                    for seg in piece.segments
                ],
                piece.text,
            )

    def __call__(self, audio: np.ndarray, options: DecodingOptions = DecodingOptions(), timestamps: bool = True) -> Transcript:
        language = options.language or detect_language(self.model, self.processor, audio)
        kwargs = generation_kwargs(
            self.model,
            DecodingOptions(**(asdict(options) | {"language": language if is_multilingual(self.model) else None})),
            timestamps,
        )
        kwargs["max_new_tokens"] = token_cap(min(audio.size / SAMPLE_RATE, self.chunk_seconds), 440)  # Whisper's 448 positions
        if self.assistant is not None:
            kwargs["assistant_model"] = self.assistant
        with torch.random.fork_rng(
            devices=[]
        ):  # fallback samples: the same audio gives the same text, the caller's RNG untouched
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


def block_bounds(audio: np.ndarray, block_seconds: float, search_seconds: float = 5.0) -> list[tuple[int, int]]:
    """(start, end) samples of blocks about ``block_seconds`` long, each cut at the quietest 0.1 s within
    ``search_seconds`` of the nominal boundary, so a cut rarely falls inside a word."""
    frame, block = SAMPLE_RATE // 10, int(block_seconds * SAMPLE_RATE)
    bounds, start = [], 0
    while audio.size - start > block + search_seconds * SAMPLE_RATE:
        low, high = start + block - int(search_seconds * SAMPLE_RATE), start + block + int(search_seconds * SAMPLE_RATE)
        energy = (audio[low:high][: (high - low) // frame * frame].reshape(-1, frame) ** 2).mean(axis=1)
        cut = low + int(energy.argmin()) * frame + frame // 2
        bounds.append((start, cut))
        start = cut
    return bounds + [(start, audio.size)]


def transcribe_file(
    transcriber,
    path: str | os.PathLike,
    options: DecodingOptions = DecodingOptions(),
    partial: str | os.PathLike | None = None,
    progress: bool = False,
    on_resume: Callable[[float], None] | None = None,
) -> Transcript:
    """The transcript of one file of any length, decoded piece by piece (``transcriber.pieces``: blocks of chunks, or
    segments).

    With ``partial``, each finished piece is saved there at once and a later call with the same file, transcriber and
    options continues after the last saved piece (calling ``on_resume(seconds already done)``): an interruption loses
    at most the piece being decoded."""
    audio = load_audio(path)
    duration = round(audio.size / SAMPLE_RATE, 2)
    job = {
        "source": str(Path(path).resolve()),
        "samples": int(audio.size),
        "options": asdict(options),
        "transcriber": transcriber.identity,
    }
    state = _read_partial(partial, job) or {**job, "done_samples": 0, "language": None, "texts": [], "segments": []}
    if state["language"] is None:
        state["language"] = options.language or transcriber.detect_language(audio)
    start = state["done_samples"]
    if start and on_resume:
        on_resume(round(start / SAMPLE_RATE, 1))
    with tqdm(
        total=duration, initial=round(start / SAMPLE_RATE, 1), desc=Path(path).name, unit="audio s", disable=not progress
    ) as bar:
        for end_seconds, segments, text in transcriber.pieces(audio[start:], replace(options, language=state["language"])):
            offset = start / SAMPLE_RATE
            state["texts"].append(text)
            state["segments"] += [
                {**seg, "start": round(seg["start"] + offset, 2), "end": round(seg["end"] + offset, 2)} for seg in segments
            ]
            done = min(audio.size, start + round(end_seconds * SAMPLE_RATE))
            bar.update(round((done - state["done_samples"]) / SAMPLE_RATE, 1))
            state["done_samples"] = done
            if partial:
                write_json(partial, state)
    text = " ".join(t for t in state["texts"] if t)
    return Transcript(text=text, segments=state["segments"], language=state["language"], duration=duration, source=str(path))


def _read_partial(partial: str | os.PathLike | None, job: dict) -> dict | None:
    """The saved blocks of this same job (file, length, options), or None."""
    if not partial or not Path(partial).is_file():
        return None
    try:
        state = json.loads(Path(partial).read_text())
    except (OSError, json.JSONDecodeError) as error:
        log.warning("%s: saved progress is damaged (%s); decoding from the start", partial, error)
        return None
    return state if all(state.get(key) == json.loads(json.dumps(value)) for key, value in job.items()) else None


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
        return "".join(
            f"{i}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text']}\n\n" for i, s in enumerate(segments, 1)
        )
    if output_format == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text']}\n\n" for s in segments)
    raise FedwhisperError(f"unknown output format {output_format!r}; choose from {', '.join(OUTPUT_FORMATS)}")


def transcript_paths(source: str | os.PathLike, out_dir: str | os.PathLike, formats: Sequence[str]) -> list[Path]:
    return [Path(out_dir) / f"{Path(source).stem or 'transcript'}.{output_format}" for output_format in formats]


def write_transcript(transcript: Transcript, out_dir: str | os.PathLike, formats: Sequence[str]) -> list[Path]:
    paths = transcript_paths(transcript.source, out_dir, formats)
    for path, output_format in zip(paths, formats, strict=True):
        write_text(path, format_transcript(transcript, output_format))
    return paths
