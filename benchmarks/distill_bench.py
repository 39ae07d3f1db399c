"""`make bench` suite `distill`: CPU serving (transformers vs CTranslate2 exports vs faster-whisper), and — as they
land — Distil-Whisper students and speculative decoding."""

from __future__ import annotations

import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from fedwhisper.audio import load_audio, write_audio
from fedwhisper.data.corpus import load_corpus
from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
from fedwhisper.metrics import word_error_rate
from fedwhisper.models.registry import packaged_checkpoint_dir


def long_recording(work: Path, small: bool) -> tuple[Path, str]:
    """Held-out synthetic speakers' clips joined with 0.6-s pauses into one file of ≥ 3 min (small: ≥ 40 s), and its
    reference text."""
    corpus = work / "asr-en"
    synthesize_audiofolder(corpus, AsrSynthesisOptions(sentences=60 if small else 160, speakers=4, test_speakers=4, seed=11))
    test = load_corpus(corpus)["test"]
    pieces, texts, seconds = [], [], 0.0
    for entry, text in zip(test["audio"], test["transcription"]):
        clip = load_audio(entry)
        pieces += [clip, np.zeros(9600, dtype=np.float32)]
        texts.append(text)
        seconds += clip.size / 16_000 + 0.6
        if seconds >= (40 if small else 200):
            break
    path = work / "long.wav"
    write_audio(path, np.concatenate(pieces))
    return path, " ".join(texts)


def _serve(kind: str, model: str, audio_path: str, batch_size: int, threads: int) -> dict:
    """One serving configuration in its own process: load, warm up on 5 s, transcribe the file once (timed)."""
    import torch

    torch.set_num_threads(threads)
    from fedwhisper.transcribe import WHISPER_TEMPERATURES, DecodingOptions

    audio = load_audio(audio_path)
    started = time.perf_counter()
    if kind == "faster-whisper":  # the library on its own, as its README shows, with our decoding settings (greedy, fallback)
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        whisper = WhisperModel(model, device="cpu", compute_type="int8", cpu_threads=threads)
        pipeline = BatchedInferencePipeline(whisper)

        def run(samples):
            segments, _ = pipeline.transcribe(samples, language="en", beam_size=1, batch_size=batch_size, without_timestamps=False)
            return " ".join(s.text.strip() for s in segments)
    else:
        from fedwhisper.backends import FasterWhisperTranscriber, load_transcriber
        from fedwhisper.transcribe import transcribe_file

        transcriber = (FasterWhisperTranscriber(model, batch_size=batch_size, threads=threads) if kind == "ctranslate2"
                       else load_transcriber(model, "transformers", batch_size))
        options = DecodingOptions(batch_size=batch_size, temperatures=WHISPER_TEMPERATURES)

        def run(samples):
            if samples is audio:
                return transcribe_file(transcriber, audio_path, options).text
            return transcriber(samples, options).text
    load_seconds = time.perf_counter() - started
    run(audio[: 5 * 16_000])
    started = time.perf_counter()
    text = run(audio)
    seconds = time.perf_counter() - started
    return {"text": text, "seconds": round(seconds, 2), "load_seconds": round(load_seconds, 2),
            "audio_seconds_per_second": round(audio.size / 16_000 / seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _in_fresh_process(*job) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_serve, *job).result()


def serving(work: Path, small: bool) -> dict:
    """tiny.en on one long recording: our transformers path, our CTranslate2 exports (float32, int8) through
    `transcribe --backend ctranslate2`, and faster-whisper on the packaged CTranslate2 checkpoint (int8), each in a fresh
    process (peak RSS) on 2 threads, batched 8 chunks at a time."""
    from fedwhisper.models.export import export_ctranslate2

    audio, reference = long_recording(work, small)
    exports = {q: str(export_ctranslate2("tiny.en", work / f"tiny.en-{q}", q)) for q in ("float32", "int8")}
    packaged = str(packaged_checkpoint_dir("tiny.en"))
    configs = {"transformers": ("transformers", "tiny.en"), "ours_ctranslate2_float32": ("ctranslate2", exports["float32"]),
               "ours_ctranslate2_int8": ("ctranslate2", exports["int8"]), "faster_whisper_packaged_int8": ("faster-whisper", packaged)}
    results = {"audio_seconds": round(load_audio(audio).size / 16_000, 1), "threads": 2, "batch_size": 8}
    for name, (kind, model) in configs.items():
        entry = _in_fresh_process(kind, model, str(audio), 8, 2)
        entry["wer"] = round(word_error_rate([reference], [entry["text"]]), 4)
        results[name] = entry
    ours, theirs = results["ours_ctranslate2_int8"], results["faster_whisper_packaged_int8"]
    results["int8_same_transcript_as_faster_whisper"] = ours["text"] == theirs["text"]
    results["int8_speed_over_faster_whisper"] = round(ours["audio_seconds_per_second"] / theirs["audio_seconds_per_second"], 3)
    results["int8_speed_over_transformers"] = round(ours["audio_seconds_per_second"] / results["transformers"]["audio_seconds_per_second"], 2)
    return results


PARTS = {"serving": serving}
