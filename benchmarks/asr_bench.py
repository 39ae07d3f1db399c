"""ASR fine-tuning demonstrations: WER on held-out speakers before and after fine-tuning, forgetting on a voice engine
not used in training, training throughput and transcription speed; English on tiny.en, Swedish on base."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedwhisper.asr.batches import AsrBatches
from fedwhisper.asr.evaluate import evaluate_batches
from fedwhisper.asr.prepare import PrepareOptions, load_features, prepare_features
from fedwhisper.asr.train import TrainConfig, fine_tune
from fedwhisper.audio import load_audio
from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
from fedwhisper.data.text import load_sentences
from fedwhisper.models.registry import load_whisper
from fedwhisper.serve.browser import running_app, use_app
from fedwhisper.transcribe import DecodingOptions, LongFormTranscriber

RESULTS = Path(__file__).resolve().parent / "results"


def wer_of(model_ref: str, dataset, language: str, window: str = "full") -> dict:
    """WER/CER of a model on prepared clips with the encoder on ``window``; decoding speed; the first examples."""
    model, processor = load_whisper(model_ref)
    options = DecodingOptions(language=language, batch_size=16)
    started = time.perf_counter()
    batches = AsrBatches(dataset, model.config.decoder_start_token_id, window=window)
    result = evaluate_batches(model, processor.tokenizer, batches, options, progress=True)
    seconds = time.perf_counter() - started
    audio = float(sum(dataset["duration"]))
    return {
        "wer": round(result["wer"], 4),
        "cer": round(result["cer"], 4),
        "clips": len(dataset),
        "audio_seconds_per_second": round(audio / seconds, 2),
        "examples": result["rows"][:3],
    }


def _fine_tune(model_ref: str, dataset, config: TrainConfig, run_dir: Path) -> dict:
    model, processor = load_whisper(model_ref)
    started = time.perf_counter()
    result = fine_tune(model, processor, dataset["train"], config, eval_set=dataset["validation"], run_dir=run_dir)
    return {
        "config": asdict(config),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "best_step": result.best_step,
        "best_validation_wer": round(result.best_wer, 4),
        "train_samples_per_second": round(result.samples_per_second, 2),
        "train_clips": len(dataset["train"]),
        "curve": [{k: v for k, v in r.items() if v is not None} for r in result.metrics if r.get("eval_wer") is not None],
    }


def transcription_speed(model_ref: str, clips: list[np.ndarray]) -> dict:
    """Long-form transcription (chunked pipeline) of the clips joined into one recording: audio seconds per compute second."""
    model, processor = load_whisper(model_ref)
    transcriber = LongFormTranscriber(model, processor)
    audio = np.concatenate([np.pad(c, (0, 8000)) for c in clips])
    transcriber(audio[: 16_000 * 5])  # warm-up
    started = time.perf_counter()
    transcript = transcriber(audio)
    seconds = time.perf_counter() - started
    return {
        "audio_seconds": round(audio.size / 16_000, 1),
        "compute_seconds": round(seconds, 1),
        "audio_seconds_per_second": round(audio.size / 16_000 / seconds, 2),
        "segments": len(transcript.segments),
    }


def english_espeak_options(small: bool) -> AsrSynthesisOptions:
    """The English corpus's espeak-ng speakers: training, validation and held-out test voices."""
    return AsrSynthesisOptions(
        sentences=160 if small else 1400, speakers=12 if small else 40, test_speakers=3 if small else 6, engines=("espeak-ng",)
    )


def unused_sentences(work: Path, name: str) -> Path:
    """``work/NAME``: the built-in English sentences that no clip of the English corpora (espeak-ng, flite) reads."""
    import csv

    used = set()
    for corpus in ("asr-en-espeak", "asr-en-flite"):
        for split in ("train", "test"):
            with open(work / corpus / split / "metadata.csv", newline="", encoding="utf-8") as stream:
                used |= {row["transcription"] for row in csv.DictReader(stream)}
    text = work / name
    text.write_text("\n".join(s for s in load_sentences("en") if s not in used) + "\n", encoding="utf-8")
    return text


def english_features(work: Path, small: bool) -> tuple[Path, Path, float]:
    """The English corpus for tiny.en: espeak-ng voices (train, validation and held-out test speakers) and flite voices
    (test only, never trained on), prepared; returns both feature directories and the preparation seconds."""
    espeak = work / "asr-en-espeak"
    synthesize_audiofolder(espeak, english_espeak_options(small))
    flite = work / "asr-en-flite"
    synthesize_audiofolder(
        flite, AsrSynthesisOptions(sentences=60 if small else 200, speakers=6, test_speakers=5, engines=("flite",), seed=7)
    )
    started = time.perf_counter()
    prepare_features(espeak, "tiny.en", work / "features-en", PrepareOptions(num_proc=2, validation_speakers=2 if small else 4))
    prepare_features(flite, "tiny.en", work / "features-en-flite", PrepareOptions(num_proc=2, validation_speakers=0))
    return work / "features-en", work / "features-en-flite", time.perf_counter() - started


def english(work: Path, small: bool) -> dict:
    """tiny.en fine-tuned on espeak-ng voices; tested on held-out espeak-ng speakers and on flite voices (never trained on)."""
    features, flite_features, prepare_seconds = english_features(work, small)
    dataset, _ = load_features(features)
    flite_test = load_features(flite_features)[0]["test"]
    before = {"held_out_espeak": wer_of("tiny.en", dataset["test"], "en"), "flite": wer_of("tiny.en", flite_test, "en")}
    # The errors are acoustic (robotic voices), so the whole encoder must adapt: decoder-only training only memorises
    # the text, and keeping even the bottom two blocks fixed (cached, 1.7x faster steps) needs twice the steps for the
    # same WER. One epoch of full fine-tuning fits the 30-minute budget.
    config = TrainConfig(
        mode="full",
        learning_rate=5e-5,
        warmup_steps=20,
        max_steps=20 if small else 130,
        batch_size=8,
        eval_every=10 if small else 65,
        save_every=65,
        log_every=10,
        eval_clips=60,
    )
    training = _fine_tune("tiny.en", dataset, config, work / "run-en")
    tuned = str(work / "run-en" / "best")
    after = {"held_out_espeak": wer_of(tuned, dataset["test"], "en"), "flite": wer_of(tuned, flite_test, "en")}
    clips = [load_audio(path) for path in dataset["test"]["path"][: 12 if small else 40]]
    return {
        "options": {"model": "tiny.en", "synthesis": asdict(english_espeak_options(small)), "training": asdict(config)},
        "model": "tiny.en",
        "train_engine": "espeak-ng",
        "prepare_seconds": round(prepare_seconds, 1),
        "splits": {name: len(split) for name, split in dataset.items()} | {"flite_test": len(flite_test)},
        "before": before,
        "training": training,
        "after": after,
        "wer_ratio_held_out": round(after["held_out_espeak"]["wer"] / before["held_out_espeak"]["wer"], 3),
        "transcription_speed": {"before": transcription_speed("tiny.en", clips), "after": transcription_speed(tuned, clips)},
    }


def swedish_features(work: Path, small: bool) -> Path:
    """The Swedish corpus (synth-asr --language sv), prepared for base."""
    corpus = work / "asr-sv"
    synthesize_audiofolder(
        corpus,
        AsrSynthesisOptions(
            language="sv", sentences=120 if small else 900, speakers=10 if small else 24, test_speakers=2 if small else 4
        ),
    )
    prepare_features(
        corpus, "base", work / "features-sv", PrepareOptions(language="sv", num_proc=2, validation_speakers=2 if small else 3)
    )
    return work / "features-sv"


def swedish(work: Path, small: bool) -> dict:
    """base fine-tuned on a Swedish synthetic corpus, like the course lab; and the English translation of a Swedish clip
    in the app."""
    dataset, _ = load_features(swedish_features(work, small))
    before = wer_of("base", dataset["test"], "sv")
    # The errors are acoustic, as in English; training only the encoder adapts to the voices and leaves the decoder's
    # translation (which transcribe-only data would wear down) as it was.
    config = TrainConfig(
        mode="encoder-only",
        learning_rate=5e-5,
        warmup_steps=10,
        max_steps=10 if small else 100,
        batch_size=8,
        eval_every=5 if small else 50,
        save_every=50,
        log_every=10,
        eval_clips=40,
        language="sv",
    )
    training = _fine_tune("base", dataset, config, work / "run-sv")
    tuned = str(work / "run-sv" / "best")
    after = wer_of(tuned, dataset["test"], "sv")
    clip = dataset["test"]["path"][0]
    # the app itself, in headless Chromium, with the language left on auto as a user would; screenshot kept
    pages = {}
    for name, model_ref in (("base", "base"), ("fine_tuned", tuned)):
        with running_app([model_ref]) as url:
            pages[name] = use_app(url, clip, screenshot=RESULTS / f"asr-sv-app-{name}{'-small' if small else ''}.png")
    return {
        "options": {"model": "base", "language": "sv", "training": asdict(config)},
        "model": "base",
        "splits": {name: len(split) for name, split in dataset.items()},
        "before": before,
        "training": training,
        "after": after,
        "app_translation": {"clip": clip, "reference": dataset["test"]["transcription"][0]} | pages,
    }


PARTS = {"english": english, "swedish": swedish}
