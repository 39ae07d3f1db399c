"""`make bench` suite `distill`.

- ``students``: Distil-Whisper students of domain-fine-tuned teachers (tiny.en and base): pseudo-labels, 2-decoder-layer
  students, WER teacher vs student on held-out and flite voices, per-clip encoder/decoder latency beside the
  multiply-add bound, and speculative decoding (the teacher with its student as assistant).
- ``serving``: CPU serving on a long recording: transformers vs our CTranslate2 exports vs faster-whisper.
- ``threads``: `asr evaluate` speed quiet and with another process on one core, before and after the OpenMP fix.
- ``encoder-cache``: a clip-window distillation step with the frozen encoder run every step vs its outputs cached;
  ``encoder-cache-accuracy`` (on demand, after students): the same student trained both ways, tested.
- ``scale`` / ``scale-base`` (on demand, hours): more pseudo-labelled audio for the students.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

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
            segments, _ = pipeline.transcribe(
                samples, language="en", beam_size=1, batch_size=batch_size, without_timestamps=False
            )
            return " ".join(s.text.strip() for s in segments)
    else:
        import torch

        from fedwhisper.backends import FasterWhisperTranscriber, load_transcriber
        from fedwhisper.transcribe import WHISPER_TEMPERATURES, DecodingOptions, transcribe_file

        torch.set_num_threads(threads)

        transcriber = (
            FasterWhisperTranscriber(model, batch_size=batch_size, threads=threads)
            if kind == "ctranslate2"
            else load_transcriber(model, "transformers", batch_size)
        )
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
    return {
        "text": texts.pop(),
        "same_text_every_repeat": not texts,
        "seconds": round(seconds, 2),
        "seconds_each": [round(t, 2) for t in times],
        "load_seconds": round(load_seconds, 2),
        "audio_seconds_per_second": round(audio.size / 16_000 / seconds, 2),
        "rss_before_model_mb": round(rss_before, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


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
    configs = {
        "transformers": ("transformers", "tiny.en", ""),
        "ours_ctranslate2_float32": ("ctranslate2", exports["float32"], ""),
        "ours_ctranslate2_int8": ("ctranslate2", exports["int8"], ""),
        "faster_whisper_our_int8_export": ("faster-whisper", exports["int8"], "default"),
        "faster_whisper_packaged_float32": ("faster-whisper", packaged, "float32"),
        "faster_whisper_packaged_int8": ("faster-whisper", packaged, "int8"),
    }
    repeats = 3
    options = {"model": "tiny.en", "threads": 2, "batch_size": 8, "repeats": repeats, "temperature_fallback": True}
    options["configurations"] = {name: {"engine": kind, "compute_type": c or None} for name, (kind, _, c) in configs.items()}
    results = {"options": options, "audio_seconds": round(load_audio(audio).size / 16_000, 1), "threads": 2, "batch_size": 8}
    results["repeats"] = repeats
    for name, (kind, model, compute_type) in configs.items():
        entry = _in_fresh_process(kind, model, compute_type, str(audio), 8, 2, repeats)
        entry["wer"] = round(word_error_rate([reference], [entry["text"]]), 4)
        results[name] = entry
    ours, alone = results["ours_ctranslate2_int8"], results["faster_whisper_our_int8_export"]
    results["int8_same_transcript_as_faster_whisper_same_export"] = ours["text"] == alone["text"]
    results["int8_speed_over_faster_whisper_same_export"] = round(
        ours["audio_seconds_per_second"] / alone["audio_seconds_per_second"], 3
    )
    results["float32_export_same_transcript_as_packaged_float32"] = (
        results["ours_ctranslate2_float32"]["text"] == results["faster_whisper_packaged_float32"]["text"]
    )
    results["int8_export_same_transcript_as_packaged_int8"] = ours["text"] == results["faster_whisper_packaged_int8"]["text"]
    results["int8_speed_over_transformers"] = round(
        ours["audio_seconds_per_second"] / results["transformers"]["audio_seconds_per_second"], 2
    )
    return results


# teacher: the fl-asr centralized LoRA recipe (clip windows, lr 2e-3), base for half the steps (~3x the cost a step)
STUDENT_RECIPES = {
    "tiny.en": {"teacher_steps": 200, "student_steps": 600},
    "base": {"teacher_steps": 100, "student_steps": 600},
}
# the student trains its two decoder blocks; the token embeddings (tied to the output projection: 20 of tiny.en's 29M
# decoder weights) stay the teacher's. Training them too overfit ~1,000 labels: validation WER 44 % -> 57 % from step
# 100 to 200, against 29 % at step 100 with them frozen (tiny.en, lr 3e-4 / 5e-4); on distill:scale's 14,687 clips
# they still set it back: step 500 at 53.8 % (validation loss 1.78) against 32.0 % (1.08) frozen, lr 5e-4
STUDENT_TRAINING = {"mode": "decoder-only", "learning_rate": 5e-4, "warmup_steps": 20, "batch_size": 8}
UNLABELLED_SENTENCES = 2000


def untranscribed_corpus(work: Path, features: Path, small: bool) -> Path:
    """What a device holds beside its few transcripts: the training speakers of the English corpus reading new
    sentences (none of the corpus's or the flite set's), without transcripts; validation and test speakers left out."""
    import asr_bench
    from fedwhisper.data.synth_asr import synthesize_audiofolder

    text = asr_bench.unused_sentences(work, "untranscribed-sentences.txt")
    out = work / "asr-en-untranscribed"
    options = replace(
        asr_bench.english_espeak_options(small), sentences=200 if small else UNLABELLED_SENTENCES, text=str(text)
    )  # same voices
    synthesize_audiofolder(out, options)
    return _without_transcripts(out, _validation_speakers(features), work / "untranscribed")


def _validation_speakers(features: Path) -> set[str]:
    """The speakers of prepared ``features``' validation split: their audio never becomes training data."""
    from fedwhisper.asr.prepare import load_features

    return set(load_features(features)[0]["validation"]["speaker_id"])


def _without_transcripts(corpus: Path, held: set[str], private: Path) -> Path:
    """A corpus whose metadata points at ``corpus``'s training clips of speakers not in ``held``, without transcripts."""
    with open(corpus / "train" / "metadata.csv", newline="", encoding="utf-8") as stream:
        rows = [row for row in csv.DictReader(stream) if row["speaker_id"] not in held]
    (private / "train").mkdir(parents=True, exist_ok=True)
    with open(private / "train" / "metadata.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["file_name", "speaker_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**row, "file_name": str(corpus / "train" / row["file_name"])} for row in rows)
    return private


def _merged_labels(labelled: Path, extras: list[Path], out: Path) -> Path:
    """``labelled`` with every clip of each of ``extras`` (pseudo-labelled untranscribed audio) added to its training
    split, in order; kept when ``out`` holds a finished merge (its manifest is written last)."""
    import datasets

    from fedwhisper.asr.prepare import MANIFEST, load_features

    if (out / MANIFEST).is_file():
        return out
    dataset, manifest = load_features(labelled)
    train = dataset["train"]
    for extra in extras:
        more = load_features(extra)[0]
        columns = [c for c in train.column_names if c in more["train"].column_names]
        train = datasets.concatenate_datasets(
            [
                train.select_columns(columns),
                *(more[split].select_columns(columns).cast(train.select_columns(columns).features) for split in more),
            ]
        )
    for name, rows in (dataset | {"train": train}).items():
        rows.save_to_disk(str(out / name))
    (out / "dataset_dict.json").write_text(json.dumps({"splits": list(dataset)}))
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def _teacher_and_labels(
    work: Path, model: str, features: str, untranscribed: str, teacher_steps: int, backend: str = "transformers"
) -> dict:
    """Teacher fine-tune → greedy pseudo-labels (on ``backend``) of the training split (10 % WER filter) and of the
    untranscribed audio (all kept), merged in ``work / model / labelled-all``; all on clip windows (the teacher's)."""
    from fedwhisper.asr.federated import AsrFederationOptions, client_train_config
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.asr.train import fine_tune
    from fedwhisper.distill import pseudo_label
    from fedwhisper.models.registry import load_whisper

    home, seconds = work / model, {}
    dataset = load_features(features)[0]
    started = time.perf_counter()
    options = AsrFederationOptions(features=features, model=model, mode="lora", window="clip")
    config = replace(
        client_train_config(options),
        max_steps=teacher_steps,
        eval_every=teacher_steps,
        save_every=teacher_steps,
        log_every=max(teacher_steps // 10, 1),
        eval_clips=60,
    )
    tuned = fine_tune(
        *load_whisper(model),
        dataset["train"],
        config,
        eval_set=dataset["validation"],
        run_dir=home / "teacher",
        resume=(home / "teacher" / "options.json").is_file(),
        progress=False,
    )  # scale-base reruns continue
    teacher = str(home / "teacher" / "best")
    seconds["teacher"] = time.perf_counter() - started

    started = time.perf_counter()
    report = pseudo_label(
        features, teacher, home / "labelled", wer_threshold=10.0, window="clip", progress=False, backend=backend
    )
    extra = pseudo_label(
        untranscribed,
        teacher,
        home / "labelled-untranscribed",
        wer_threshold=10.0,
        window="clip",
        progress=False,
        backend=backend,
    )
    _merged_labels(home / "labelled", [home / "labelled-untranscribed"], home / "labelled-all")
    seconds["pseudo_labels"] = time.perf_counter() - started
    kept = report["splits"]["train"]
    return {
        "teacher": teacher,
        "teacher_steps": teacher_steps,
        "teacher_validation_wer": round(tuned.best_wer, 4),
        "labels_backend": backend,
        "labels_kept": kept["kept"],
        "labels_dropped": kept["dropped"],
        "untranscribed_labels": sum(entry["kept"] for entry in extra["splits"].values()),
        "seconds": seconds,
    }


def _student_pipeline(work: Path, model: str, features: str, untranscribed: str, steps: dict) -> dict:
    """``_teacher_and_labels``, then a 2-decoder-layer student distilled on the labels, in ``work / model``."""
    from fedwhisper.asr.train import TrainConfig
    from fedwhisper.distill import distill_run, make_student

    home = work / model
    entry = _teacher_and_labels(work, model, features, untranscribed, steps["teacher_steps"])
    started = time.perf_counter()
    make_student(entry["teacher"], home / "student-init", decoder_layers=2)
    student_steps = steps["student_steps"]
    config = TrainConfig(
        **STUDENT_TRAINING,
        max_steps=student_steps,
        eval_every=student_steps // 6,
        save_every=student_steps,
        log_every=max(student_steps // 12, 1),
        eval_clips=None,
        window="clip",
    )
    distilled = distill_run(
        home / "student",
        labelled=home / "labelled-all",
        student=str(home / "student-init"),
        teacher=entry["teacher"],
        config=config,
        progress=False,
    )
    entry["seconds"]["student"] = time.perf_counter() - started
    return entry | {
        "student": str(home / "student" / "best"),
        "student_training": STUDENT_TRAINING,
        "student_steps": student_steps,
        "student_best_step": distilled.best_step,
        "student_validation_wer": round(distilled.best_wer, 4),
        "student_curve": [{k: r[k] for k in ("step", "eval_wer")} for r in distilled.metrics if r.get("eval_wer") is not None],
        "student_train_samples_per_second": round(distilled.samples_per_second, 2),
        "seconds": {k: round(v, 1) for k, v in entry["seconds"].items()},
    }


def decoder_macs_per_token(config, tokens: float, frames: float) -> float:
    """Multiply-adds a decoded token costs in a Whisper decoder: per layer the self-attention projections (4·d²), the
    cross-attention query/output (2·d²), the MLP (2·d·ffn) and the attention scores over the tokens so far and the
    encoder frames; the cross-attention keys/values (2·d² a frame a layer, once a clip) spread over the clip's tokens;
    and the vocabulary projection (V·d), the share a small decoder cannot shrink."""
    d, ffn, layers, vocab = config.d_model, config.decoder_ffn_dim, config.decoder_layers, config.vocab_size
    per_layer = 6 * d * d + 2 * d * ffn + 2 * d * (tokens / 2 + frames) + 2 * d * d * frames / tokens
    return layers * per_layer + vocab * d


def _latency(teacher: str, student: str, clips, max_clips: int) -> dict:
    """Per clip, batch 1, greedy: encoder seconds (clip window) and decoder seconds (generation from the encoder's
    output), teacher and student alternating clip by clip, on transformers and on CTranslate2; decoder seconds per token;
    the multiply-add bound."""
    from fedwhisper.asr.batches import AsrBatches, model_inputs
    from fedwhisper.models.registry import load_whisper
    from fedwhisper.transcribe import DecodingOptions, generate_tokens, token_cap

    models = {name: load_whisper(ref)[0].eval() for name, ref in (("teacher", teacher), ("student", student))}
    subset = clips.select(np.linspace(0, len(clips) - 1, min(max_clips, len(clips))).round().astype(int).tolist())
    batches = AsrBatches(subset, models["teacher"].config.decoder_start_token_id, window="clip")
    totals = {name: {"encoder": 0.0, "decoder": 0.0, "tokens": 0, "frames": 0} for name in models}
    with torch.inference_mode():
        for warm_up, (indices, batch) in enumerate([next(batches.in_order(1)), *batches.in_order(1)]):
            cap = token_cap(subset[indices[0]]["duration"], 128)
            for name, whisper in models.items():
                started = time.perf_counter()
                hidden = model_inputs(whisper, {"input_features": batch["input_features"]})["encoder_outputs"][0]
                encoded = time.perf_counter()
                tokens = generate_tokens(whisper, hidden, DecodingOptions(language="en", max_new_tokens=cap))[0]
                done = time.perf_counter()
                if warm_up:
                    entry = totals[name]
                    entry["encoder"] += encoded - started
                    entry["decoder"] += done - encoded
                    entry["tokens"] += int((tokens < whisper.generation_config.eos_token_id).sum()) + 1  # text, then the end
                    entry["frames"] += hidden.shape[1]
    configs = {name: whisper.config for name, whisper in models.items()}
    result = {
        "clips": len(subset),
        "audio_seconds_mean": round(float(np.mean(subset["duration"])), 2),
        "transformers": _latency_summary(totals, configs, len(subset)),
    }
    # the same clips on CTranslate2 (float32 exports; the serving path): encode, then generate from the encoded frames
    import ctranslate2

    from fedwhisper.models.export import export_ctranslate2

    totals = {name: {"encoder": 0.0, "decoder": 0.0, "tokens": 0, "frames": 0} for name in models}
    engines = {
        name: ctranslate2.models.Whisper(
            str(export_ctranslate2(ref, Path(ref).parent / f"{Path(ref).name}-ct2-float32", "float32")),
            device="cpu",
            compute_type="float32",
            intra_threads=torch.get_num_threads(),
        )
        for name, ref in (("teacher", teacher), ("student", student))
    }
    prompt = [models["teacher"].config.decoder_start_token_id, *_prompt_ids(teacher)]
    for warm_up, (indices, batch) in enumerate([next(batches.in_order(1)), *batches.in_order(1)]):
        cap = token_cap(subset[indices[0]]["duration"], 128)
        mel = ctranslate2.StorageView.from_array(np.ascontiguousarray(batch["input_features"].numpy(), dtype=np.float32))
        for name, engine in engines.items():
            started = time.perf_counter()
            encoded = engine.encode(mel, to_cpu=True)
            middle = time.perf_counter()
            ids = engine.generate(
                encoded, [prompt], beam_size=1, max_length=len(prompt) + cap, suppress_blank=True, suppress_tokens=[-1]
            )[0].sequences_ids[0]
            done = time.perf_counter()
            if warm_up:
                entry = totals[name]
                entry["encoder"] += middle - started
                entry["decoder"] += done - middle
                entry["tokens"] += len(ids) + 1  # text, then the end
                entry["frames"] += encoded.shape[1]
    result["ctranslate2"] = _latency_summary(totals, configs, len(subset))
    return result


def _prompt_ids(model: str) -> list[int]:
    """The decoder prompt after the start token, as the transformers path gives it (language, task, no timestamps)."""
    from fedwhisper.models.registry import load_processor

    tokenizer = load_processor(model).tokenizer
    tokens = ["<|notimestamps|>"] if len(tokenizer) < 51865 else ["<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    return tokenizer.convert_tokens_to_ids(tokens)


def _latency_summary(totals: dict, configs: dict, n: int) -> dict:
    """Per-clip encoder and decoder milliseconds, decoder milliseconds per token and multiply-adds per token, teacher vs
    student; the measured per-token speed-up beside the multiply-add bound, and the end-to-end per-clip speed-up."""
    result = {}
    for name, entry in totals.items():
        tokens, frames = entry["tokens"] / n, entry["frames"] / n
        result[name] = {
            "decoder_layers": configs[name].decoder_layers,
            "encoder_ms_per_clip": round(1000 * entry["encoder"] / n, 1),
            "decoder_ms_per_clip": round(1000 * entry["decoder"] / n, 1),
            "tokens_per_clip": round(tokens, 1),
            "decoder_ms_per_token": round(1000 * entry["decoder"] / entry["tokens"], 2),
            "decoder_mega_macs_per_token": round(decoder_macs_per_token(configs[name], tokens, frames) / 1e6, 2),
        }
    t, s = result["teacher"], result["student"]
    result["decoder_per_token_speedup"] = round(t["decoder_ms_per_token"] / s["decoder_ms_per_token"], 3)
    result["multiply_add_bound"] = round(t["decoder_mega_macs_per_token"] / s["decoder_mega_macs_per_token"], 3)
    result["speedup_over_bound"] = round(result["decoder_per_token_speedup"] / result["multiply_add_bound"], 3)
    result["end_to_end_per_clip_speedup"] = round(
        (t["encoder_ms_per_clip"] + t["decoder_ms_per_clip"]) / (s["encoder_ms_per_clip"] + s["decoder_ms_per_clip"]), 3
    )
    return result


def _speculative(teacher: str, student: str, clips, max_clips: int) -> dict:
    """The teacher greedy alone vs with its student drafting (transformers' assisted generation), batch 1, same clips
    and token caps: identical transcripts counted, decoding time compared (the encoder runs once either way)."""
    from fedwhisper.asr.batches import AsrBatches, model_inputs
    from fedwhisper.models.registry import load_whisper
    from fedwhisper.transcribe import DecodingOptions, decode_batch, load_assistant, token_cap

    whisper, processor = load_whisper(teacher)
    whisper.eval()
    assistant = load_assistant(student)
    subset = clips.select(np.linspace(0, len(clips) - 1, min(max_clips, len(clips))).round().astype(int).tolist())
    batches = AsrBatches(subset, whisper.config.decoder_start_token_id, window="clip")
    seconds, texts = {"alone": 0.0, "assisted": 0.0}, {"alone": [], "assisted": []}
    for warm_up, (indices, batch) in enumerate([next(batches.in_order(1)), *batches.in_order(1)]):
        options = DecodingOptions(language="en", batch_size=1, max_new_tokens=token_cap(subset[indices[0]]["duration"], 128))
        with torch.inference_mode():
            inputs = {"encoder_outputs": model_inputs(whisper, {"input_features": batch["input_features"]})["encoder_outputs"]}
        for name, helper in (("alone", None), ("assisted", assistant)):
            started = time.perf_counter()
            text = decode_batch(whisper, processor.tokenizer, inputs, options, helper)[0]
            if warm_up:
                seconds[name] += time.perf_counter() - started
                texts[name].append(text)
    same = sum(a == b for a, b in zip(texts["alone"], texts["assisted"]))
    return {
        "clips": len(subset),
        "identical_transcripts": same,
        "identical_fraction": round(same / len(subset), 4),
        "decode_seconds_alone": round(seconds["alone"], 2),
        "decode_seconds_assisted": round(seconds["assisted"], 2),
        "speedup": round(seconds["alone"] / seconds["assisted"], 3),
        "differing": [{"alone": a, "assisted": b} for a, b in zip(texts["alone"], texts["assisted"]) if a != b][:5],
    }


def _students_corpora(work: Path, small: bool) -> tuple[dict, Path]:
    """The English corpus prepared for tiny.en and for base ({model: (features, flite features)}) and the untranscribed
    audio of its training speakers."""
    import asr_bench
    from fedwhisper.asr.prepare import PrepareOptions, prepare_features

    features, flite, _ = asr_bench.english_features(work, small)
    prepare_features(
        work / "asr-en-espeak",
        "base",
        work / "features-en-base",
        PrepareOptions(num_proc=2, validation_speakers=2 if small else 4),
    )
    prepare_features(
        work / "asr-en-flite", "base", work / "features-en-flite-base", PrepareOptions(num_proc=2, validation_speakers=0)
    )
    sets = {"tiny.en": (features, flite), "base": (work / "features-en-base", work / "features-en-flite-base")}
    return sets, untranscribed_corpus(work, features, small)


def students(work: Path, small: bool) -> dict:
    """Distil-Whisper on the English corpus (the ASR suite's): for tiny.en and base, a teacher fine-tuned on the
    training speakers, its pseudo-labels of their transcribed and untranscribed audio, a 2-decoder-layer student; WER of
    both on held-out espeak-ng speakers and on flite voices (never trained on), clip windows; latency split and
    speculative decoding. The two pipelines run side by side on one thread each; the measurements after them on the
    quiet machine's 2 threads."""
    import asr_bench
    from fedwhisper.asr.prepare import load_features
    from fl_asr_bench import _in_parallel

    started = time.perf_counter()
    sets, untranscribed = _students_corpora(work, small)
    results = {"seconds": {"corpus_and_features": round(time.perf_counter() - started, 1)}}
    recipes = {m: ({"teacher_steps": 4, "student_steps": 6} if small else r) for m, r in STUDENT_RECIPES.items()}
    started = time.perf_counter()
    pipelines = _in_parallel(*((_student_pipeline, work, m, str(sets[m][0]), str(untranscribed), recipes[m]) for m in recipes))
    results["seconds"]["pipelines_wall"] = round(time.perf_counter() - started, 1)
    for model, (pipeline, _) in zip(recipes, pipelines):
        held_out = {
            "held_out_espeak": load_features(sets[model][0])[0]["test"],
            "flite": load_features(sets[model][1])[0]["test"],
        }
        entry = pipeline
        for role in ("teacher", "student"):
            entry[f"{role}_wer"] = {
                name: asr_bench.wer_of(pipeline[role], split, "en", "clip") for name, split in held_out.items()
            }
        entry["student_minus_teacher_points"] = {
            name: round(100 * (entry["student_wer"][name]["wer"] - entry["teacher_wer"][name]["wer"]), 2) for name in held_out
        }
        entry["latency"] = _latency(pipeline["teacher"], pipeline["student"], held_out["held_out_espeak"], 10 if small else 60)
        entry["speculative"] = _speculative(
            pipeline["teacher"], pipeline["student"], held_out["held_out_espeak"], 10 if small else 60
        )
        results[model] = entry
    results["evaluate_speed"] = _evaluate_speeds(results["tiny.en"]["teacher"], sets["tiny.en"][0], 16 if small else 64)
    return results


def _evaluate_speeds(model: str, features: Path, clips: int) -> dict:
    """`asr evaluate` of a clip-trained model on the same held-out clips, one run: as the command ran before this work
    (transformers; 30-s windows by default, or asked for clip windows) and now by default on the ctranslate2 backend
    (the model's clip windows, its int8 export made once outside the timing)."""
    _evaluate_speed(CLI_NOW, features, 2, "ctranslate2", False, model, None)
    factor = {
        "transformers_before_full": _evaluate_speed(CLI_BEFORE, features, clips, "transformers", False, model, "full"),
        "transformers_before_clip": _evaluate_speed(CLI_BEFORE, features, clips, "transformers", False, model, "clip"),
        "ctranslate2_now_default": _evaluate_speed(CLI_NOW, features, clips, "ctranslate2", False, model, None),
    }
    return {
        "model": "the tiny.en teacher",
        "clips": clips,
        "real_time_factor": factor,
        "ctranslate2_over_before": {
            w: round(factor["ctranslate2_now_default"] / factor[f"transformers_before_{w}"], 2) for w in ("full", "clip")
        },
    }


# `fedwhisper` exactly as installed, and the same command as it ran before its OpenMP default: torch loaded first, so
# OpenMP starts with its own wait policy (spin, then sleep) before the CLI's default is set
CLI_NOW = ["-c", "from fedwhisper.cli import app; app()"]
CLI_BEFORE = ["-c", "import torch; from fedwhisper.cli import app; app()"]


def _evaluate_speed(
    command: list[str], features: Path, clips: int, backend: str, busy: bool, model: str = "tiny.en", window: str | None = "full"
) -> float:
    """Real-time factor `asr evaluate` prints for ``clips`` test clips of ``model`` on ``window`` (None: the model's
    default, its training window), optionally while another process keeps one core busy."""
    import re

    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        done = subprocess.run(
            [
                sys.executable,
                *command,
                "asr",
                "evaluate",
                str(features),
                "--model",
                model,
                "--limit",
                str(clips),
                *(["--window", window] if window else []),
                "--backend",
                backend,
                "--csv",
                str(features.parent / "speed.csv"),
                "--overwrite",
            ],
            capture_output=True,
            text=True,
            check=False,
            env=os.environ | {"COLUMNS": "200"},
        )
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()
    if done.returncode:
        raise RuntimeError(f"asr evaluate failed:\n{done.stderr[-3000:]}")
    return float(re.search(r"([0-9.]+)x real time", done.stdout).group(1))


def threads(work: Path, small: bool) -> dict:
    """Why a busy core slows the transformers path, and the fix: `asr evaluate` (tiny.en, 30-s windows, batch 16) on
    held-out clips, quiet and with a competing process on one core, before the CLI's OpenMP default (torch's own wait
    policy: spin, then sleep) and now (sleeping waits), with the ctranslate2 backend beside them; each the median of
    ``repeats`` runs, interleaved so that drift hits every configuration alike."""
    import asr_bench

    features = asr_bench.english_features(work, True)[0]
    clips, repeats = (8, 1) if small else (24, 3)
    configs = {
        "transformers_before": (CLI_BEFORE, "transformers"),
        "transformers_now": (CLI_NOW, "transformers"),
        "ctranslate2_now": (CLI_NOW, "ctranslate2"),
    }
    _evaluate_speed(CLI_NOW, features, 2, "ctranslate2", False)  # the export, made once, outside the timings
    speeds = {f"{name}_{load}": [] for name in configs for load in ("quiet", "busy")}
    for _ in range(repeats):
        for name, (command, backend) in configs.items():
            for load in ("quiet", "busy"):
                speeds[f"{name}_{load}"].append(_evaluate_speed(command, features, clips, backend, load == "busy"))
    results = {
        "clips": clips,
        "repeats": repeats,
        "window": "full",
        "model": "tiny.en",
        "real_time_factor": {name: float(np.median(values)) for name, values in speeds.items()},
        "each": speeds,
    }
    factor = results["real_time_factor"]
    results["busy_slowdown"] = {name: round(factor[f"{name}_quiet"] / factor[f"{name}_busy"], 2) for name in configs}
    results["now_over_before"] = {
        load: round(factor[f"transformers_now_{load}"] / factor[f"transformers_before_{load}"], 3) for load in ("quiet", "busy")
    }
    return results


SCALE_STEPS = 3000


def _distilled(out: Path, labelled: Path, student: str, teacher: str, steps: int, learning_rate: float):
    """``distill_run`` into ``out`` with the students' recipe at ``learning_rate``, or its continuation when ``out``
    holds a run (checkpoints at least every 500 steps: a base run spans sessions)."""
    from fedwhisper.asr.train import TrainConfig
    from fedwhisper.distill import distill_run

    if (out / "options.json").is_file():
        return distill_run(out, resume=True, progress=False)
    config = TrainConfig(
        **STUDENT_TRAINING | {"learning_rate": learning_rate},
        max_steps=steps,
        eval_every=steps // 6,
        save_every=min(steps // 6, 500),
        log_every=max(steps // 30, 1),
        eval_clips=None,
        window="clip",
    )
    return distill_run(out, labelled=labelled, student=student, teacher=teacher, config=config, progress=False)


def _readings(work: Path, small: bool, students_work: Path) -> tuple[list[str], dict[str, Path]]:
    """Every built-in sentence no corpus of the students part (in ``students_work``) reads, read four times by its
    training speakers in four speaker pairings (readings a-d), as corpora in ``work`` without transcripts; the
    sentences and those corpora."""
    import asr_bench
    from fedwhisper.data.synth_asr import synthesize_audiofolder
    from fedwhisper.data.text import load_sentences

    used = set()
    for corpus in ("asr-en-espeak", "asr-en-flite", "asr-en-untranscribed"):
        for split in ("train", "test"):
            with open(students_work / corpus / split / "metadata.csv", newline="", encoding="utf-8") as stream:
                used |= {row["transcription"] for row in csv.DictReader(stream)}
    fresh = [s for s in load_sentences("en") if s not in used][: 40 if small else None]
    held = _validation_speakers(students_work / "features-en")
    readings = {"a": fresh, "b": fresh[::-1], "c": fresh[1::2] + fresh[::2], "d": fresh[::-1][1::2] + fresh[::-1][::2]}
    untranscribed = {}
    for name, order in readings.items():
        text = work / f"sentences-{name}.txt"
        text.write_text("\n".join(order) + "\n", encoding="utf-8")
        corpus = work / f"corpus-{name}"
        synthesize_audiofolder(
            corpus, replace(asr_bench.english_espeak_options(small), sentences=len(order), text=str(text)), workers=2
        )
        untranscribed[name] = _without_transcripts(corpus, held, work / f"untranscribed-{name}")
    return fresh, untranscribed


def _wordnet_reading(work: Path, small: bool, held: set[str]) -> tuple[int, Path]:
    """WordNet's example sentences (none in the built-in pool) read once by the training speakers (not ``held``): how
    many, and the corpus without transcripts."""
    import asr_bench
    from fedwhisper.data.synth_asr import synthesize_audiofolder
    from fedwhisper.data.text import wordnet_sentences

    sentences = wordnet_sentences()[: 40 if small else None]
    text = work / "sentences-wordnet.txt"
    text.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    corpus = work / "corpus-wordnet"
    synthesize_audiofolder(
        corpus, replace(asr_bench.english_espeak_options(small), sentences=len(sentences), text=str(text)), workers=2
    )
    return len(sentences), _without_transcripts(corpus, held, work / "untranscribed-wordnet")


def _scaled(work: Path, home: Path, untranscribed: dict[str, Path], backend: str = "transformers") -> tuple[Path, Path]:
    """Readings a+b, then a-d, labelled (on ``backend``) by the teacher in ``home`` (no transcripts: all labels kept)
    and added to its labels there: the two training sets."""
    from fedwhisper.distill import pseudo_label

    labelled = {}
    for name, source in untranscribed.items():
        labelled[name] = work / f"labelled-{name}"
        pseudo_label(
            source,
            str(home / "teacher" / "best"),
            labelled[name],
            wer_threshold=10.0,
            window="clip",
            progress=False,
            backend=backend,
        )
    first = _merged_labels(home / "labelled-all", [labelled["a"], labelled["b"]], work / "merged-ab")
    return first, _merged_labels(first, [labelled["c"], labelled["d"]], work / "merged-abcd")


def _stage_results(work: Path, teacher: str, held_out: dict, stages: tuple) -> dict:
    """Train each (stage, labels, its starting student, steps, learning rate) with ``teacher``; each stage's clips,
    best step and validation WER, and its best's test WER on each ``held_out`` split."""
    import asr_bench
    from fedwhisper.asr.prepare import load_features

    results = {}
    for stage, labels, start, stage_steps, learning_rate in stages:
        run = _distilled(work / stage, labels, start, teacher, stage_steps, learning_rate)
        best = str(work / stage / "best")
        logged = [
            row["samples_per_second"] for row in run.metrics if row.get("samples_per_second")
        ]  # all runs', as a rerun may resume
        results[stage] = {
            "train_clips": len(load_features(labels)[0]["train"]),
            "steps": stage_steps,
            "learning_rate": learning_rate,
            "best_step": run.best_step,
            "validation_wer": round(run.best_wer, 4),
            "train_samples_per_second": round(sum(logged) / len(logged), 2),
            "test_wer": {name: asr_bench.wer_of(best, split, "en", "clip")["wer"] for name, split in held_out.items()},
        }
    return results


def scale(work: Path, small: bool) -> dict:
    """Does more pseudo-labelled audio close the tiny.en student's gap? The readings a-d labelled by its tiny.en teacher;
    a student from its student-init trained on its labels + a + b, then continued from that student's best on
    everything (+ c + d), the same steps each, and again at a fifth of the learning rate for half the steps; and one run
    from student-init on everything for twice, then three times, the steps. Needs ``distill:students``' work;
    resumable: every output is kept (run.py leaves this part's directory in place)."""
    from fedwhisper.asr.prepare import load_features

    students_work = work.parent / "distill-students"
    home = students_work / "tiny.en"
    started = time.perf_counter()
    fresh, untranscribed = _readings(work, small, students_work)
    first, everything = _scaled(work, home, untranscribed)
    seconds = {"corpora_and_labels": round(time.perf_counter() - started, 1)}
    steps = 6 if small else SCALE_STEPS
    # the third continues stage 1's best on everything at a fifth of the learning rate, half the steps (the second's
    # restart at the full rate undid part of stage 1); the fourth trains once, from student-init, on everything for
    # twice the steps; the fifth for three times (the fourth's validation loss still fell at its last step)
    rate = STUDENT_TRAINING["learning_rate"]
    stages = (
        ("student", first, str(home / "student-init"), steps, rate),
        ("student-cd", everything, str(work / "student" / "best"), steps, rate),
        ("student-cd-low-lr", everything, str(work / "student" / "best"), steps // 2, rate / 5),
        ("student-abcd", everything, str(home / "student-init"), 2 * steps, rate),
        ("student-abcd-long", everything, str(home / "student-init"), 3 * steps, rate),
    )
    import asr_bench

    teacher, held_out = str(home / "teacher" / "best"), _held_out(students_work, "tiny.en")
    return {
        "fresh_sentences": len(fresh),
        "steps_per_stage": steps,
        "student_training": STUDENT_TRAINING,
        "teacher_wer": {name: asr_bench.wer_of(teacher, split, "en", "clip")["wer"] for name, split in held_out.items()},
        "stages": _stage_results(work, teacher, held_out, stages),
        "students_part_tiny_en_clips": len(load_features(home / "labelled-all")[0]["train"]),
        "seconds": seconds,
    }


def _held_out(students_work: Path, model: str) -> dict:
    """The held-out espeak-ng and flite test clips, prepared for ``model``."""
    from fedwhisper.asr.prepare import load_features

    suffix = "" if model == "tiny.en" else f"-{model}"
    return {
        "held_out_espeak": load_features(students_work / f"features-en{suffix}")[0]["test"],
        "flite": load_features(students_work / f"features-en-flite{suffix}")[0]["test"],
    }


def scale_base(work: Path, small: bool) -> dict:
    """The same for base, with the recipe that brought tiny.en's student within +2 points, self-contained so that it
    fits one session on a fresh 2-core machine: the students part's corpora, base teacher and labels made here, then
    the readings a-d, every label by the teacher's int8 CTranslate2 export (~1.6x faster than transformers; agreement
    with transformers' labels measured on 256 clips), and one run from student-init on everything for three times the
    tiny.en stages' steps, the shared encoder's outputs cached; then a 3-decoder-layer student on the same labels for
    twice the steps (the 2-layer student, a third of base's decoder, stayed +3.2 points behind and its validation WER
    was flat after 6,000 steps), and again for three times (tiny.en's student gained a point from 6,000 to 9,000 steps);
    the 3-layer student's latency beside its multiply-add bound; then, as the 3-layer students stayed +2.7-2.9 points
    behind with the errors of a weaker language model on sentences never heard, a 2-layer student on everything plus
    WordNet's ~33k example sentences read once (4x the distinct text), and its best continued at a fifth of
    the learning rate for half the steps, and that 2-layer student's latency. Teacher and students tested on the same clips.
    Resumable: every output is kept (labels 256 clips and training 500 steps at a time), so a rerun continues."""
    import asr_bench
    from fedwhisper.distill import make_student, pseudo_label

    seconds, started = {}, time.perf_counter()
    sets, untranscribed = _students_corpora(work, small)
    seconds["corpora"] = time.perf_counter() - started
    teacher_steps = 4 if small else STUDENT_RECIPES["base"]["teacher_steps"]
    entry = _teacher_and_labels(work, "base", str(sets["base"][0]), str(untranscribed), teacher_steps, backend="ctranslate2")
    seconds |= entry.pop("seconds")
    started = time.perf_counter()
    agreement = _label_agreement(work, entry["teacher"], 24 if small else 256)
    seconds["label_agreement"] = time.perf_counter() - started
    started = time.perf_counter()
    fresh, readings = _readings(work, small, work)
    seconds["readings"] = time.perf_counter() - started
    started = time.perf_counter()
    _, everything = _scaled(work, work / "base", readings, backend="ctranslate2")
    seconds["readings_labels"] = time.perf_counter() - started
    inits = {
        layers: make_student(entry["teacher"], work / "base" / name, decoder_layers=layers)
        for layers, name in ((2, "student-init"), (3, "student-init-3-layers"))
    }
    held_out = _held_out(work, "base")
    started = time.perf_counter()
    entry["teacher_wer"] = {
        name: asr_bench.wer_of(entry["teacher"], split, "en", "clip")["wer"] for name, split in held_out.items()
    }
    seconds["teacher_tests"] = time.perf_counter() - started
    steps = 3 * (6 if small else SCALE_STEPS)
    started = time.perf_counter()
    rate = STUDENT_TRAINING["learning_rate"]
    stages = _stage_results(
        work,
        entry["teacher"],
        held_out,
        (
            ("student-abcd-long", everything, str(inits[2]), steps, rate),
            ("student-3-layers", everything, str(inits[3]), 2 * steps // 3, rate),
            ("student-3-layers-long", everything, str(inits[3]), steps, rate),
        ),
    )
    seconds["students"] = time.perf_counter() - started
    started = time.perf_counter()
    latency = _latency(
        entry["teacher"], str(work / "student-3-layers-long" / "best"), held_out["held_out_espeak"], 10 if small else 60
    )
    seconds["latency_3_layers"] = time.perf_counter() - started
    started = time.perf_counter()
    wordnet_sentences, wordnet = _wordnet_reading(work, small, _validation_speakers(sets["tiny.en"][0]))
    pseudo_label(
        wordnet,
        entry["teacher"],
        work / "labelled-wordnet",
        wer_threshold=10.0,
        window="clip",
        progress=False,
        backend="ctranslate2",
    )
    with_wordnet = _merged_labels(everything, [work / "labelled-wordnet"], work / "merged-abcd-wordnet")
    seconds["wordnet_reading_and_labels"] = time.perf_counter() - started
    started = time.perf_counter()
    # then its best continued at a fifth of the rate for half the steps (its validation WER still fell at its last step)
    stages |= _stage_results(
        work,
        entry["teacher"],
        held_out,
        (
            ("student-wordnet", with_wordnet, str(inits[2]), steps, rate),
            ("student-wordnet-low-lr", with_wordnet, str(work / "student-wordnet" / "best"), steps // 2, rate / 5),
        ),
    )
    seconds["student_wordnet"] = time.perf_counter() - started
    started = time.perf_counter()
    latency_2_layers = _latency(
        entry["teacher"], str(work / "student-wordnet-low-lr" / "best"), held_out["held_out_espeak"], 10 if small else 60
    )
    seconds["latency_2_layers"] = time.perf_counter() - started
    for stage, layers in zip(stages.values(), (2, 3, 3, 2, 2)):
        stage["decoder_layers"] = layers
        stage["student_minus_teacher_points"] = {
            name: round(100 * (stage["test_wer"][name] - entry["teacher_wer"][name]), 2) for name in held_out
        }
    return entry | {
        "options": {
            "teacher_steps": teacher_steps,
            "steps": steps,
            "student_training": STUDENT_TRAINING,
            "label_backend": "ctranslate2",
        },
        "fresh_sentences": len(fresh),
        "wordnet_sentences": wordnet_sentences,
        "label_agreement": agreement,
        "student_training": STUDENT_TRAINING,
        "stages": stages,
        "latency_3_layers": latency,
        "latency_2_layers": latency_2_layers,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "seconds_of": "the run that finished this part: a stage an earlier run finished is read back in ~0 s",
    }


def _label_agreement(work: Path, teacher: str, clips: int) -> dict:
    """The teacher's labels of the first ``clips`` untranscribed clips on transformers and on the ctranslate2 backend:
    how many are the same text (normalised), and each backend's clips per second; kept in ``work / agreement``, as a
    resumed run's labelling would time reading finished labels back."""
    from fedwhisper.asr.prepare import MANIFEST, load_features
    from fedwhisper.distill import pseudo_label
    from fedwhisper.metrics import normalizer

    measured = work / "agreement" / "result.json"
    if measured.is_file():
        return json.loads(measured.read_text())
    prepared = work / "base" / "labelled-untranscribed" / ".labels" / "features"  # what pseudo_label prepared of the corpus
    subset = work / "agreement" / "features"
    if not (subset / MANIFEST).is_file():
        load_features(prepared)[0]["train"].select(range(clips)).save_to_disk(str(subset / "train"))
        (subset / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
        (subset / MANIFEST).write_text((prepared / MANIFEST).read_text())
    texts, speed = {}, {}
    for backend in ("transformers", "ctranslate2"):
        out = work / "agreement" / backend
        started = time.perf_counter()
        pseudo_label(subset, teacher, out, wer_threshold=None, window="clip", progress=False, backend=backend)
        speed[backend] = round(clips / (time.perf_counter() - started), 2)
        texts[backend] = load_features(out)[0]["train"]["transcription"]
    normalise = normalizer("en")
    same = sum(normalise(a) == normalise(b) for a, b in zip(texts["transformers"], texts["ctranslate2"]))
    result = {"clips": clips, "same_text": same, "clips_per_second": speed}
    measured.write_text(json.dumps(result))
    return result


def encoder_cache(work: Path, small: bool) -> dict:
    """A distillation step on clip windows, its frozen encoder run on every batch (mixed windows, as before the cache
    took clip windows) against its outputs computed once (batches of one window each): samples per second of each, in
    one run, and what computing the cache costs; the packaged tiny.en and base as teachers (speed does not depend on
    the weights), each with its 2-decoder-layer student, 2 threads."""
    from fedwhisper.asr.batches import AsrBatches
    from fedwhisper.asr.prepare import PrepareOptions, load_features, prepare_features
    from fedwhisper.asr.train import TrainConfig, apply_mode, batches_for, make_optimizer, train_on_batches
    from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
    from fedwhisper.distill import DistillLoss, make_student, teacher_loss_fn
    from fedwhisper.models.registry import load_whisper

    corpus = work / "asr-en"
    synthesize_audiofolder(corpus, AsrSynthesisOptions(sentences=60 if small else 240, speakers=12, test_speakers=2))
    steps, batch = (2, 8) if small else (12, 8)
    results = {"batch_size": batch, "steps": steps, "threads": torch.get_num_threads()}
    for model in ("tiny.en", "base"):
        features = work / f"features-{model}"
        prepare_features(corpus, model, features, PrepareOptions(validation_speakers=1))
        train = load_features(features)[0]["train"]
        clips = train.select(range(min(len(train), 24 if small else 160)))
        teacher, _ = load_whisper(model)
        teacher.requires_grad_(False)
        student = make_student(model, work / f"student-{model}", decoder_layers=2)
        loss_fn = teacher_loss_fn(teacher, DistillLoss())
        entry = {"clips": len(clips), "clip_seconds_mean": round(float(np.mean(clips["duration"])), 2)}
        for name in ("every_step", "cached"):
            config = TrainConfig(**STUDENT_TRAINING, max_steps=steps, window="clip")
            whisper = apply_mode(load_whisper(str(student))[0], config)
            started = time.perf_counter()
            batches = (
                AsrBatches(clips, whisper.config.decoder_start_token_id, window="clip")
                if name == "every_step"
                else batches_for(whisper, clips, config, work / "cache", progress=False)
            )
            prepared = time.perf_counter() - started
            optimizer, scheduler = make_optimizer(whisper, config, steps + 1)
            train_on_batches(
                whisper, batches.micro_batches(batch, 0, 0, 1), config, optimizer, scheduler, loss_fn=loss_fn
            )  # warm-up
            started = time.perf_counter()
            result = train_on_batches(
                whisper, batches.micro_batches(batch, 0, 1, steps), config, optimizer, scheduler, loss_fn=loss_fn
            )
            seconds = time.perf_counter() - started
            entry[name] = {"samples_per_second": round(result["samples"] / seconds, 3), "seconds": round(seconds, 1)}
            if name == "cached":
                entry[name]["cache_seconds_per_clip"] = round(prepared / len(clips), 4)
        entry["cached_over_every_step"] = round(
            entry["cached"]["samples_per_second"] / entry["every_step"]["samples_per_second"], 2
        )
        saved = 1 / entry["every_step"]["samples_per_second"] - 1 / entry["cached"]["samples_per_second"]  # seconds a sample
        entry["cache_pays_off_after_epochs"] = round(entry["cached"]["cache_seconds_per_clip"] / saved, 2) if saved > 0 else None
        results[model] = entry
    return results


def _student_on(cached: bool, home: Path, out: Path, held_out, steps: int) -> dict:
    """The students part's tiny.en student recipe from ``home``'s student-init, labels and teacher, with the shared
    encoder's clip-window outputs cached or (as before the cache took clip windows) run on every batch; the final
    model's validation and held-out WER."""
    import asr_bench
    from fedwhisper.asr import train
    from fedwhisper.asr.train import TrainConfig
    from fedwhisper.distill import distill_run

    if not cached:
        train.TrainConfig.cached_encoder_layers = property(lambda self: False)  # this worker process only
    config = TrainConfig(
        **STUDENT_TRAINING,
        max_steps=steps,
        eval_every=steps,
        save_every=steps,
        log_every=max(steps // 6, 1),
        eval_clips=None,
        window="clip",
    )
    run = distill_run(
        out,
        labelled=home / "labelled-all",
        student=str(home / "student-init"),
        teacher=str(home / "teacher" / "best"),
        config=config,
        progress=False,
    )
    return {
        "validation_wer": round(run.best_wer, 4),
        "test_wer": asr_bench.wer_of(str(out / "best"), held_out, "en", "clip")["wer"],
        "samples_per_second": round(run.samples_per_second, 2),
    }


def encoder_cache_accuracy(work: Path, small: bool) -> dict:
    """Does training on cached clip-window outputs (each clip at its own window, batches of one window) change the
    student? The students part's tiny.en student recipe twice from the same student-init, labels and teacher, cached
    and run-every-step, side by side on one thread each; both final models tested. Needs ``distill:students``' work."""
    from fl_asr_bench import _in_parallel

    students_work = work.parent / "distill-students"
    steps = 6 if small else STUDENT_RECIPES["tiny.en"]["student_steps"]
    held_out = _held_out(students_work, "tiny.en")["held_out_espeak"]
    arms = _in_parallel(
        *(
            (_student_on, cached, students_work / "tiny.en", work / name, held_out, steps)
            for name, cached in (("cached", True), ("every-step", False))
        )
    )
    return {"model": "tiny.en", "steps": steps, "cached": arms[0][0], "every_step": arms[1][0]}


PARTS = {
    "students": students,
    "serving": serving,
    "threads": threads,
    "encoder-cache": encoder_cache,
    "encoder-cache-accuracy": encoder_cache_accuracy,
    "scale": scale,
    "scale-base": scale_base,
}
DEFAULT_PARTS = ("students", "serving", "threads", "encoder-cache")  # the others run on demand, after students (scale: hours)
RESUMABLE = ("scale", "scale-base")
