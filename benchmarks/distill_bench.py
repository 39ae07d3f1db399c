"""`make bench` suite `distill`: CPU serving (transformers vs CTranslate2 exports vs faster-whisper), and — as they
land — Distil-Whisper students and speculative decoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fedwhisper.audio import load_audio, write_audio


def long_recording(work: Path, small: bool) -> tuple[Path, str]:
    """Held-out synthetic speakers' clips joined with 0.6-s pauses into one file of ≥ 3 min (small: ≥ 40 s), and its
    reference text."""
    from fedwhisper.data.corpus import load_corpus
    from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder

    corpus = work / "asr-en"
    synthesize_audiofolder(corpus, AsrSynthesisOptions(sentences=60 if small else 160, speakers=5, test_speakers=4, seed=11))
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


def _serve(kind: str, model: str, compute_type: str, audio_path: str, batch_size: int, threads: int, repeats: int) -> dict:
    """One serving configuration in its own process: load, warm up on 5 s, transcribe the file ``repeats`` times (the
    median time counts); peak RSS of the process (it imports only what the configuration needs), and before the model."""
    audio = load_audio(audio_path)
    rss_before = _peak_rss_mb()
    started = time.perf_counter()
    if kind == "faster-whisper":  # the library on its own, as its README shows, with our decoding settings (greedy, fallback)
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        whisper = WhisperModel(model, device="cpu", compute_type=compute_type, cpu_threads=threads)
        pipeline = BatchedInferencePipeline(whisper)

        def run(samples):
            segments, _ = pipeline.transcribe(samples, language="en", beam_size=1, batch_size=batch_size, without_timestamps=False)
            return " ".join(s.text.strip() for s in segments)
    else:
        import torch

        from fedwhisper.backends import FasterWhisperTranscriber, load_transcriber
        from fedwhisper.transcribe import WHISPER_TEMPERATURES, DecodingOptions, transcribe_file

        torch.set_num_threads(threads)

        transcriber = (FasterWhisperTranscriber(model, batch_size=batch_size, threads=threads) if kind == "ctranslate2"
                       else load_transcriber(model, "transformers", batch_size))
        options = DecodingOptions(batch_size=batch_size, temperatures=WHISPER_TEMPERATURES)

        def run(samples):
            if samples is audio:
                return transcribe_file(transcriber, audio_path, options).text
            return transcriber(samples, options).text
    load_seconds = time.perf_counter() - started
    run(audio[: 5 * 16_000])
    times, texts = [], set()
    for _ in range(repeats):
        started = time.perf_counter()
        texts.add(run(audio))
        times.append(time.perf_counter() - started)
    seconds = float(np.median(times))
    return {"text": texts.pop(), "same_text_every_repeat": not texts, "seconds": round(seconds, 2), "seconds_each": [round(t, 2) for t in times],
            "load_seconds": round(load_seconds, 2), "audio_seconds_per_second": round(audio.size / 16_000 / seconds, 2),
            "rss_before_model_mb": round(rss_before, 1), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _peak_rss_mb() -> float:
    """The process's peak resident memory (VmHWM: unlike getrusage's maxrss it does not carry the forking parent's)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _in_fresh_process(*job) -> dict:
    """``_serve(*job)`` in a new interpreter that imports nothing else (peak RSS is the configuration's own)."""
    code = f"import json, distill_bench; print(json.dumps(distill_bench._serve(*{job!r})))"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"serving {job[:3]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def serving(work: Path, small: bool) -> dict:
    """tiny.en on one long recording, each configuration in a fresh process on 2 threads, 8 chunks a batch, greedy
    with Whisper's temperature fallback: our transformers path; `transcribe --backend ctranslate2` on our CTranslate2
    exports of the imported tiny.en (float32, int8); faster-whisper alone on the int8 export (same model: the wrapper's
    cost) and on the packaged CTranslate2 checkpoint (float32 compute, and int8 quantized at load: the conversion's
    exactness)."""
    from fedwhisper.metrics import word_error_rate
    from fedwhisper.models.export import export_ctranslate2
    from fedwhisper.models.registry import packaged_checkpoint_dir

    audio, reference = long_recording(work, small)
    exports = {q: str(export_ctranslate2("tiny.en", work / f"tiny.en-{q}", q)) for q in ("float32", "int8")}
    packaged = str(packaged_checkpoint_dir("tiny.en"))
    configs = {"transformers": ("transformers", "tiny.en", ""), "ours_ctranslate2_float32": ("ctranslate2", exports["float32"], ""),
               "ours_ctranslate2_int8": ("ctranslate2", exports["int8"], ""),
               "faster_whisper_our_int8_export": ("faster-whisper", exports["int8"], "default"),
               "faster_whisper_packaged_float32": ("faster-whisper", packaged, "float32"),
               "faster_whisper_packaged_int8": ("faster-whisper", packaged, "int8")}
    repeats = 3
    results = {"audio_seconds": round(load_audio(audio).size / 16_000, 1), "threads": 2, "batch_size": 8, "repeats": repeats}
    for name, (kind, model, compute_type) in configs.items():
        entry = _in_fresh_process(kind, model, compute_type, str(audio), 8, 2, repeats)
        entry["wer"] = round(word_error_rate([reference], [entry["text"]]), 4)
        results[name] = entry
    ours, alone = results["ours_ctranslate2_int8"], results["faster_whisper_our_int8_export"]
    results["int8_same_transcript_as_faster_whisper_same_export"] = ours["text"] == alone["text"]
    results["int8_speed_over_faster_whisper_same_export"] = round(ours["audio_seconds_per_second"] / alone["audio_seconds_per_second"], 3)
    results["float32_export_same_transcript_as_packaged_float32"] = results["ours_ctranslate2_float32"]["text"] == results["faster_whisper_packaged_float32"]["text"]
    results["int8_export_same_transcript_as_packaged_int8"] = ours["text"] == results["faster_whisper_packaged_int8"]["text"]
    results["int8_speed_over_transformers"] = round(ours["audio_seconds_per_second"] / results["transformers"]["audio_seconds_per_second"], 2)
    return results


PARTS = {"serving": serving}
