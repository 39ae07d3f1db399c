"""The demo jobs. `make demo` runs the keyword-spotting one: synthesise (or reuse) a Speech Commands-style corpus,
encode it once per client, federate the head over 100 speaker-grouped clients for 10 rounds."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedwhisper.audio import load_audio
from fedwhisper.data.corpus import load_corpus
from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands
from fedwhisper.fl.kws_app import simulate
from fedwhisper.kws.task import KwsOptions
from fedwhisper.metrics import word_error_rate
from fedwhisper.models.registry import fedwhisper_home, load_whisper
from fedwhisper.runs import runs_root
from fedwhisper.transcribe import DecodingOptions, transcribe_clips

DEMO_CORPUS = AsrSynthesisOptions(sentences=60, speakers=12, test_speakers=2)
DEMO_KWS_CORPUS = KwsSynthesisOptions(speakers=300)


@dataclass
class DemoResult:
    references: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    speakers: list[str] = field(default_factory=list)
    wer: float = 0.0
    audio_seconds: float = 0.0
    transcribe_seconds: float = 0.0


def run_kws_demo(
    model_name: str = "tiny.en", on_round=None, corpus: KwsSynthesisOptions = DEMO_KWS_CORPUS, options: KwsOptions = KwsOptions()
):
    """Federated keyword spotting on the embedded default: 300 synthetic speakers, 100 clients, 10 per round, 10 rounds
    (``corpus`` and ``options`` change the scale)."""
    variant = hashlib.sha1(repr(corpus).encode()).hexdigest()[:8]  # another scale or vocabulary: a corpus of its own
    name = "demo-kws" if corpus == DEMO_KWS_CORPUS else f"demo-kws-{corpus.speakers}-{variant}"
    directory = fedwhisper_home() / "corpora" / name
    synthesize_speech_commands(directory, corpus)
    run_dir = runs_root() / f"demo-kws-{time.strftime('%Y%m%d-%H%M%S')}"
    return simulate(replace(options, corpus=str(directory), model=model_name), run_dir, on_round=on_round)


def run_asr_demo(model_name: str = "tiny.en", corpus_dir: Path | None = None, clips: int = 10) -> DemoResult:
    corpus_dir = corpus_dir or fedwhisper_home() / "corpora" / "demo-asr-en"
    synthesize_audiofolder(corpus_dir, DEMO_CORPUS)
    test = load_corpus(corpus_dir)["test"].select(range(clips))
    audio = [load_audio(entry) for entry in test["audio"]]
    model, processor = load_whisper(model_name)
    started = time.perf_counter()
    hypotheses = transcribe_clips(model, processor, audio, DecodingOptions(language="en"))
    result = DemoResult(
        references=list(test["transcription"]),
        hypotheses=hypotheses,
        speakers=list(test["speaker_id"]),
        transcribe_seconds=time.perf_counter() - started,
        audio_seconds=sum(a.size for a in audio) / 16_000,
    )
    result.wer = word_error_rate(result.references, result.hypotheses, "en")
    return result
