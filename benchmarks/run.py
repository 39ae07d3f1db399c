"""`make bench`: measured figures, written to benchmarks/results/<suite>.json and the README's results table.

Usage: python benchmarks/run.py [foundation] [kws] [kws:flower_example] [asr] [asr:english] … [--data DIR] [--ljspeech DIR]
[--digits DIR] (default: every suite; `real` only with --data, the speechocean762 corpus root whose train/ it reads, and
the out-of-domain clips of its forgetting checks: see benchmarks/real_bench.py)
A part (`suite:part`) runs alone and replaces only its own entry in the suite's JSON.
FEDWHISPER_BENCH_SCALE=small shrinks every size, to check the script quickly (results go to *-small.json).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asr_bench  # noqa: E402  (benchmarks/asr_bench.py)
import distill_bench  # noqa: E402  (benchmarks/distill_bench.py)
import fl_asr_bench  # noqa: E402  (benchmarks/fl_asr_bench.py)
import fl_hetero_bench  # noqa: E402  (benchmarks/fl_hetero_bench.py)
import kws_bench  # noqa: E402  (benchmarks/kws_bench.py)
import real_bench  # noqa: E402  (benchmarks/real_bench.py)
import reliability_bench  # noqa: E402  (benchmarks/reliability_bench.py)
from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder  # noqa: E402
from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands  # noqa: E402
from fedwhisper.models.registry import ModelNotAvailableError, import_packaged_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SMALL = os.environ.get("FEDWHISPER_BENCH_SCALE") == "small"


def corpus_size(directory: Path) -> dict:
    clips = [p for p in directory.rglob("*.wav") if "_background_noise_" not in p.parts]
    seconds = sum(sf.info(p).duration for p in clips)
    megabytes = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6
    return {"clips": len(clips), "audio_hours": round(seconds / 3600, 3), "disk_mb": round(megabytes, 1)}


def bench_foundation(work: Path) -> dict:
    results: dict = {}
    imports = {}
    import transformers.models.whisper  # noqa: F401  (so the first timed import does not pay for loading transformers)

    for name in ("tiny.en", "base", "small"):
        started = time.perf_counter()
        try:
            import_packaged_model(name, work / "models" / name, force=True)
            imports[name] = {"seconds": round(time.perf_counter() - started, 2)}
        except ModelNotAvailableError as error:
            imports[name] = {"error": str(error)}
    results["model_import"] = {"options": {"models": list(imports), "force": True}, "models": imports}

    kws_options = KwsSynthesisOptions(speakers=20 if SMALL else 200)
    kws = synthesize_speech_commands(work / "kws", kws_options)
    results["synth_kws"] = {"options": asdict(kws_options), "speakers": kws_options.speakers}
    results["synth_kws"] |= {**kws.as_dict(), **corpus_size(work / "kws")}
    results["synth_kws"].pop("failures")

    for language in ("en", "sv"):
        options = AsrSynthesisOptions(language=language, sentences=200 if SMALL else 2400)
        asr = synthesize_audiofolder(work / f"asr-{language}", options)
        entry = {
            "options": asdict(options),
            "sentences": options.sentences,
            "speakers": options.speakers,
            **asr.as_dict(),
            **corpus_size(work / f"asr-{language}"),
        }
        entry.pop("failures")
        results[f"synth_asr_{language}"] = entry
    return results


def foundation_rows(results: dict) -> list[str]:
    rows = []
    for name, entry in results["model_import"]["models"].items():
        outcome = f"{entry['seconds']} s" if "seconds" in entry else "not importable (see JSON)"
        rows.append(f"| import {name} (CTranslate2 → transformers) | {outcome} |")
    kws = results["synth_kws"]
    rows.append(
        f"| synth-kws, {kws['speakers']} speakers | {kws['clips']} clips, {kws['clips_per_second']} clips/s, {kws['disk_mb']} "
        "MB |"
    )
    for language in ("en", "sv"):
        asr = results[f"synth_asr_{language}"]
        rows.append(
            f"| synth-asr --language {language}, {asr['sentences']} sentences | "
            f"{asr['audio_hours']} h audio, {asr['clips_per_second']} clips/s, {asr['disk_mb']} MB |"
        )
    return rows


def _accuracy_curve(per_round: list[float]) -> str:
    return " → ".join(f"{a:.1%}" for a in per_round[1:])


def kws_rows(results: dict) -> list[str]:
    rows = []
    cost, accuracy, example, full = (results.get(k) for k in ("encoder_cost", "window_accuracy", "flower_example", "full_scale"))
    if cost:
        rows.append(
            f"| KWS encoder per 1-s clip: 1-s window vs 30-s padding (tiny.en, 2 threads) | {cost['ms_per_clip_1s_window']} ms "
            "vs "
            f"{cost['ms_per_clip_30s_padding']} ms: **{cost['ratio']}x** cheaper (median of {cost['repeats']}; range "
            f"{cost['ratio_range'][0]}–{cost['ratio_range'][1]}x; the multiply-add ratio is {cost['multiply_adds']['ratio']}x) |"
        )
    if accuracy:
        rows.append(
            f"| KWS ablation of our recipe: same pooled head trained centrally, 1-s vs 30-s window, test accuracy "
            f"({accuracy['test_speakers']} test speakers, mean of last 3 epochs) | {accuracy['1s']['mean_last_3']:.2%} vs "
            f"{accuracy['30s']['mean_last_3']:.2%} ({accuracy['difference_points_mean_last_3']:+.2f} points) |"
        )
    if example:
        theirs, ours = example["flower-example"], example["fedwhisper"]
        s_theirs, s_ours = theirs["settings"], ours["settings"]
        rounds = len(theirs["test_accuracy_per_round"]) - 1
        rows += [
            f"| KWS anchor: Flower's Whisper example's client reproduced (`--recipe flower-example`: {s_theirs['num_clients']} "
            "clients of 5 "
            f"speakers, {s_theirs['clients_per_round']} per round, 30-s window, {theirs['head_parameters']:,}-parameter head, "
            "Adam 1e-3, "
            f"batch 8, 1 epoch; tiny.en for whisper-tiny), test accuracy per round, rounds 1–{rounds} | "
            f"{_accuracy_curve(theirs['test_accuracy_per_round'])} |",
            f"| KWS ours in the same run (default recipe: {s_ours['num_clients']} clients, {s_ours['clients_per_round']} per "
            "round, 1-s window, "
            f"{ours['head_parameters']:,}-parameter head, {s_ours['local_epochs']} epochs), same held-out speakers | "
            f"{_accuracy_curve(ours['test_accuracy_per_round'])} |",
            "| KWS client round on 1 core, mean over sampled clients: example (loads and log-mels its data, runs the 30-s "
            "encoder on "
            "every batch) vs ours (first round encodes once; later rounds train from the cache) | "
            f"{theirs['client_round_seconds_mean']} s "
            f"({theirs['client_examples_mean']:.0f} clips; loading {theirs['load_seconds_mean']} s) vs "
            f"{ours['first_round_seconds_mean']} s "
            f"first, {ours['cached_round_seconds_mean']} s cached ({ours['client_examples_mean']:.0f} clips) |",
            f"| KWS encoder seconds per clip inside a client round (1 core): example's 30-s window vs ours 1-s | "
            f"{theirs['encoder_seconds_per_clip']} s vs {ours['encoder_seconds_per_clip']} s |",
            f"| KWS federation wall time, {rounds} rounds (server evaluation on validation + test included) | example "
            f"{theirs['wall_seconds']} s, "
            f"ours {ours['wall_seconds']} s |",
        ]
    if full:
        federated = full["federated"]["per_round"]
        rows += [
            f"| Full scale: {full['speakers']} speakers, 100 clients × 10/round, {len(federated) - 1} rounds | test "
            f"{federated[-1]['test_accuracy']:.2%} (validation {federated[-1]['validation_accuracy']:.2%}) in "
            f"{full['federated']['wall_seconds']} s |",
            f"| Full scale, centralized ({full['centralized']['epochs']} epochs) | test "
            f"{full['centralized']['test_accuracy']:.2%} in "
            f"{full['centralized']['wall_seconds']} s |",
        ]
    return rows


def _run_label(training: dict) -> str:
    return f"{training['config']['mode']}, {training['config']['max_steps']} steps, {training['train_clips']} clips"


def _throughput(training: dict) -> str:
    return f"{training['wall_seconds']:.0f} s, {training['train_samples_per_second']} samples/s"


def asr_rows(results: dict) -> list[str]:
    rows = []
    en, sv = results.get("english"), results.get("swedish")
    if en:
        training = en["training"]
        rows += [
            f"| ASR en: tiny.en WER on held-out espeak-ng speakers, before → after fine-tuning ({_run_label(training)}) | "
            f"{en['before']['held_out_espeak']['wer']:.1%} → "
            f"**{en['after']['held_out_espeak']['wer']:.1%}** (×{en['wer_ratio_held_out']}) |",
            f"| ASR en: WER on flite voices (never trained on), before → after | {en['before']['flite']['wer']:.1%} → "
            f"{en['after']['flite']['wer']:.1%} |",
            f"| ASR en: training run (encode once + train + evaluations) | {_throughput(training)} |",
            "| ASR en: long-form transcription speed, tiny.en (before / after) | "
            f"{en['transcription_speed']['before']['audio_seconds_per_second']} / "
            f"{en['transcription_speed']['after']['audio_seconds_per_second']} audio s per compute s |",
        ]
    if sv:
        rows += [
            f"| ASR sv: base WER on held-out speakers, before → after ({_run_label(sv['training'])}) | "
            f"{sv['before']['wer']:.1%} → **{sv['after']['wer']:.1%}** |",
            f"| ASR sv: training run (train + evaluations) | {_throughput(sv['training'])} |",
            "| ASR sv: the app in headless Chromium on a held-out Swedish clip, fine-tuned base: transcript / English "
            "translation "
            "([screenshot](benchmarks/results/asr-sv-app-fine_tuned.png)) | "
            f'"{sv["app_translation"]["fine_tuned"]["transcript"]}" / '
            f'"{sv["app_translation"]["fine_tuned"]["translation"]}" (reference: "{sv["app_translation"]["reference"]}") |',
        ]
    return rows


def fl_asr_rows(results: dict) -> list[str]:
    rows = []
    if cost := results.get("window_cost"):
        rows.append(
            f"| federated ASR client, tiny.en LoRA training, encoder on the clip's length (mean {cost['clip_seconds_mean']} s) "
            "vs 30 s | "
            f"{cost['clip']['samples_per_second']} vs {cost['full']['samples_per_second']} samples/s: {cost['clip_over_full']}x |"
        )
    if english := results.get("english"):
        o, fed, central, local = english["options"], english["federated"], english["centralized"], english["local_only"]
        before = english["pretrained"]
        runs = (
            f"tiny.en LoRA, {o['num_clients']} speaker clients, {o['clients_per_round']} per round, {o['rounds']} rounds, "
            "clip windows"
        )
        subset = f"30 s on {english['full_window_subset_clips']} spread clips"
        rows.append(
            f"| federated ASR en ({runs}): held-out espeak-ng WER, pretrained (30 s) → federated (clip / {subset}) | "
            f"{before['held_out_espeak']['full']['wer']:.1%} → **{fed['after']['held_out_espeak']['clip']['wer']:.1%}** / "
            f"{fed['after']['held_out_espeak']['full']['wer']:.1%} |"
        )
        rows.append(
            f"| … same {english['client_steps_total']} client steps: centralized (clip / {subset}); local-only, mean of "
            f"{len(local['clients'])} clients on {local['subset_clips']} held-out clips (federated there) | "
            f"{central['after']['held_out_espeak']['clip']['wer']:.1%} / "
            f"{central['after']['held_out_espeak']['full']['wer']:.1%}; "
            f"{local['mean_wer']:.1%} ({local['federated_wer_same_clips']:.1%}) |"
        )
        rows.append(
            f"| … flite voices (never trained on): pretrained (30 s) → federated (clip / {subset}) | "
            f"{before['flite']['full']['wer']:.1%} → "
            f"{fed['after']['flite']['clip']['wer']:.1%} / {fed['after']['flite']['full']['wer']:.1%} |"
        )
        rows.append(
            f"| … bytes per client per round (down = up) vs the full model; wall time of the benchmark (federation) | "
            f"{fed['bytes_up_per_client_per_round'] / 1e6:.2f} MB = {fed['upload_fraction_of_full_model']:.1%} of "
            f"{fed['full_model_bytes'] / 1e6:.0f} MB; {english['seconds']['total'] / 60:.1f} min "
            f"({english['seconds']['federation'] / 60:.1f}) |"
        )
    if strategies := results.get("english_strategies"):
        for name, entry in ((n, e) for n, e in strategies.items() if isinstance(e, dict) and "best" in e):
            settings = ", ".join(f"{key} {value}" for key, value in entry["options"].items())
            full = f" / {entry['best_full_window_subset']['wer']:.1%}" if "best_full_window_subset" in entry else ""
            rows.append(
                f"| … the same federation, {name} ({settings}): held-out espeak-ng WER "
                f"(clip{' / 30 s on the subset' if full else ''}) | "
                f"{entry['best']['wer']:.1%}{full} |"
            )
    if accuracy := results.get("window_accuracy"):
        full, clip = accuracy["trained_full"]["held_out"], accuracy["trained_clip"]["held_out"]
        rows.append(
            f"| tiny.en LoRA, {accuracy['steps']} steps on 30-s vs clip windows "
            f"({accuracy['clip_over_full_samples_per_second']}x "
            f"samples/s): held-out WER tested on 30-s / clip windows | trained on 30 s: {full['full']['wer']:.1%} / "
            f"{full['clip']['wer']:.1%}; trained on clips: {clip['full']['wer']:.1%} / {clip['clip']['wer']:.1%} |"
        )
    if swedish := results.get("swedish"):
        o, fed, central = swedish["options"], swedish["federated"], swedish["centralized"]
        rows.append(
            f"| federated ASR sv (base LoRA, {o['num_clients']} speaker clients, {o['clients_per_round']} per round, "
            f"{o['rounds']} "
            f"rounds, clip windows): held-out WER pretrained → federated (clip / 30 s on {swedish['full_window_subset_clips']} "
            "clips); "
            f"centralized, same steps (clip) | "
            f"{swedish['pretrained']['held_out']['full']['wer']:.1%} → **{fed['after']['held_out']['clip']['wer']:.1%}** / "
            f"{fed['after']['held_out']['full']['wer']:.1%}; {central['after']['held_out']['clip']['wer']:.1%} |"
        )
    return rows


def _latency_rows(latency: dict, student: str) -> list[str]:
    return [
        f"| … decoder time per token on {backend}, teacher / {student} ({latency['clips']} clips, batch 1); multiply-add bound | "
        f"{timed['teacher']['decoder_ms_per_token']} / {timed['student']['decoder_ms_per_token']} ms = "
        f"**{timed['decoder_per_token_speedup']}x**; bound {timed['multiply_add_bound']}x "
        f"({timed['speedup_over_bound']:.1%} of it); end to end per clip {timed['end_to_end_per_clip_speedup']}x |"
        for backend, timed in ((b, latency[b]) for b in ("transformers", "ctranslate2"))
    ]


def distill_rows(results: dict) -> list[str]:
    rows = []
    for model in ("tiny.en", "base"):
        entry = (results.get("students") or {}).get(model)
        if not entry:
            continue
        t, s, latency, spec = entry["teacher_wer"], entry["student_wer"], entry["latency"], entry["speculative"]
        rows.append(
            f"| Distil-Whisper {model}: teacher (LoRA, {entry['teacher_steps']} steps, clip windows) → 2-decoder-layer student "
            f"({entry['student_steps']} steps, {entry['student_training']['mode']}, on {entry['labels_kept']} pseudo-labels of "
            "transcribed "
            f"clips ({entry['labels_dropped']} dropped by the 10 % filter) + {entry['untranscribed_labels']} of untranscribed "
            "ones): "
            f"WER held-out espeak-ng / flite | {t['held_out_espeak']['wer']:.1%} → **{s['held_out_espeak']['wer']:.1%}** / "
            f"{t['flite']['wer']:.1%} → {s['flite']['wer']:.1%} |"
        )
        rows += _latency_rows(latency, "student")
        rows.append(
            f"| … speculative decoding (teacher + student assistant, {spec['clips']} clips, batch 1): same transcripts; speed | "
            f"{spec['identical_transcripts']}/{spec['clips']}; {spec['speedup']}x |"
        )
    if speed := (results.get("students") or {}).get("evaluate_speed"):
        factor, ratio = speed["real_time_factor"], speed["ctranslate2_over_before"]
        rows.append(
            f"| `asr evaluate` of {speed['model']} (clip-trained) on {speed['clips']} held-out clips, one run: real time factor "
            "before this "
            f"work (transformers, 30-s default / --window clip) vs now (--backend ctranslate2, its clip windows) | "
            f"{factor['transformers_before_full']:.1f}x / {factor['transformers_before_clip']:.1f}x vs "
            f"{factor['ctranslate2_now_default']:.1f}x "
            f"(**{ratio['full']}x** / {ratio['clip']}x faster) |"
        )
    if cache := results.get("encoder-cache"):
        cells = "; ".join(
            f"{model} {cache[model]['every_step']['samples_per_second']:.1f} → "
            f"{cache[model]['cached']['samples_per_second']:.1f} "
            f"(**{cache[model]['cached_over_every_step']}x**; the cache costs "
            f"{cache[model]['cached']['cache_seconds_per_clip']} s a clip, "
            f"repaid within {cache[model]['cache_pays_off_after_epochs']} epochs)"
            for model in ("tiny.en", "base")
        )
        rows.append(
            f"| distillation step on clip windows ({cache['base']['clips']} clips of {cache['base']['clip_seconds_mean']} s "
            "mean, batch "
            f"{cache['batch_size']}, {cache['threads']} threads): samples/s with the frozen encoder run every step → its outputs "
            f"cached (batches of one window) | {cells} |"
        )
    if accuracy := results.get("encoder-cache-accuracy"):
        cached, every = accuracy["cached"], accuracy["every_step"]
        rows.append(
            f"| … the students part's {accuracy['model']} student ({accuracy['steps']} steps, same start, labels and teacher) "
            "trained on "
            f"cached outputs vs the encoder run every step: final model's held-out WER (validation); samples/s on 1 thread | "
            f"{cached['test_wer']:.1%} ({cached['validation_wer']:.1%}) vs {every['test_wer']:.1%} "
            f"({every['validation_wer']:.1%}); "
            f"{cached['samples_per_second']} vs {every['samples_per_second']} |"
        )
    if scale := results.get("scale"):
        teacher = scale["teacher_wer"]  # the students part's teacher of that run
        cells = "; ".join(
            f"{name} ({stage['train_clips']:,} clips, {stage['steps']} steps at lr {stage['learning_rate']:g}): "
            f"{stage['test_wer']['held_out_espeak']:.1%} / {stage['test_wer']['flite']:.1%}"
            for name, stage in scale["stages"].items()
        )
        rows.append(
            f"| … tiny.en student with more pseudo-labelled audio (the {scale['fresh_sentences']:,} unused sentences read 4 "
            "times; "
            f"student-cd* continue student's best on all, student-abcd* start afresh on all): WER held-out espeak-ng / flite "
            f"(teacher {teacher['held_out_espeak']:.1%} / {teacher['flite']:.1%}) | {cells} |"
        )
    if scale := results.get("scale-base"):
        teacher, agreement = scale["teacher_wer"], scale["label_agreement"]
        speed = agreement["clips_per_second"]
        wordnet = (
            "; student-wordnet* add WordNet's example sentences, read once, student-wordnet-low-lr continuing student-wordnet's "
            "best"
            if "student-wordnet" in scale["stages"]
            else ""
        )
        cells = "; ".join(
            f"{name} ({stage['decoder_layers']} decoder layers, {stage['train_clips']:,} clips, {stage['steps']} steps at lr "
            f"{stage['learning_rate']:g}, "
            f"best step {stage['best_step']}): "
            f"**{stage['test_wer']['held_out_espeak']:.1%}** / {stage['test_wer']['flite']:.1%}"
            for name, stage in scale["stages"].items()
        )
        rows.append(
            f"| … base the same way, self-contained (its own teacher, {scale['teacher_steps']} LoRA steps; every label by the "
            "teacher's "
            f"int8 CTranslate2 export: {agreement['same_text']}/{agreement['clips']} the same text as transformers', "
            f"{speed['ctranslate2']} vs {speed['transformers']} clips/s; students from student-init, encoder outputs "
            f"cached{wordnet}): WER held-out espeak-ng / flite "
            f"(teacher {teacher['held_out_espeak']:.1%} / {teacher['flite']:.1%}) | {cells} |"
        )
        for key, student in (
            ("latency_3_layers", "base 3-layer student"),
            ("latency_2_layers", "base 2-layer student-wordnet-low-lr"),
        ):
            if latency := scale.get(key):
                rows += _latency_rows(latency, student)
    if threads := results.get("threads"):
        factor, slowdown = threads["real_time_factor"], threads["busy_slowdown"]
        rows.append(
            f"| `asr evaluate` speed with another process on one core ({threads['model']}, {threads['clips']} clips, 30-s "
            "windows, "
            f"median of {threads['repeats']}): real time factor quiet / busy | transformers before (OpenMP spin-waits) "
            f"{factor['transformers_before_quiet']:.2f}x / {factor['transformers_before_busy']:.2f}x "
            f"({slowdown['transformers_before']}x slower); "
            f"now (sleeping waits) {factor['transformers_now_quiet']:.2f}x / **{factor['transformers_now_busy']:.2f}x** "
            f"({slowdown['transformers_now']}x); ctranslate2 {factor['ctranslate2_now_quiet']:.2f}x / "
            f"{factor['ctranslate2_now_busy']:.2f}x |"
        )
    if serving := results.get("serving"):
        setup = (
            f"tiny.en, {serving['audio_seconds']:.0f}-s recording, {serving['threads']} threads, batch {serving['batch_size']}"
        )
        for name, label in (
            ("transformers", "`transcribe` (transformers)"),
            ("ours_ctranslate2_float32", "`transcribe --backend ctranslate2`, float32 export"),
            ("ours_ctranslate2_int8", "`transcribe --backend ctranslate2`, int8 export"),
            ("faster_whisper_our_int8_export", "faster-whisper alone, the same int8 export"),
            ("faster_whisper_packaged_float32", "faster-whisper, packaged checkpoint, float32"),
            ("faster_whisper_packaged_int8", "faster-whisper, packaged checkpoint, int8 at load"),
        ):
            entry = serving[name]
            rows.append(
                f"| serving ({setup}): {label} | {entry['audio_seconds_per_second']} audio s per compute s, WER "
                f"{entry['wer']:.1%}, "
                f"peak RSS {entry['peak_rss_mb']:.0f} MB ({entry['rss_before_model_mb']:.0f} before the model) |"
            )
        same = {True: "same", False: "different"}
        rows.append(
            f"| … `--backend ctranslate2` (int8) over faster-whisper alone on the same export: speed; transcript | "
            f"{serving['int8_speed_over_faster_whisper_same_export']}x; "
            f"{same[serving['int8_same_transcript_as_faster_whisper_same_export']]} "
            f"({serving['int8_speed_over_transformers']}x the transformers path) |"
        )
        rows.append(
            f"| … our exports vs the packaged checkpoint: float32 / int8 transcripts | "
            f"{same[serving['float32_export_same_transcript_as_packaged_float32']]} / "
            f"{same[serving['int8_export_same_transcript_as_packaged_int8']]} |"
        )
    return rows


def _hetero_setting(o: dict) -> str:
    return (
        f"tiny.en, tiers {o['tiers']}, {o['num_clients']} speaker clients, {o['clients_per_round']} a round, "
        f"{o['rounds']} rounds of {o['local_steps']} local steps"
    )


def fl_hetero_rows(results: dict) -> list[str]:
    compare = results.get("compare")
    if not compare:
        return []
    setting = _hetero_setting(compare["options"])
    target = compare[fl_hetero_bench.TARGET]["validation_wer_curve"][-1]
    rows = []
    for algorithm in fl_hetero_bench.ALGORITHMS:
        r = compare[algorithm]
        tiers = ", ".join(f"{tier} {wer:.1%}" for tier, wer in r["test_wer_by_tier"].items())
        share = f" ({compare['fedkad_upload_over_full_size_fedavg']:.2f} of full-size FedAvg)" if algorithm == "fedkad" else ""
        start = r["validation_wer_curve"][0]
        seconds = fl_hetero_bench.seconds_to_target(compare, algorithm)
        rows.append(
            f"| heterogeneous clients, {algorithm} ({setting}): validation WER at round 0; held-out WER by tier; upload in "
            f"all; device time to {fl_hetero_bench.TARGET}'s final validation WER ({target:.1%}) | "
            f"{'no server model' if start is None else f'{start:.1%}'}; {tiers}; {r['upload_bytes_total'] / 1e6:.1f} MB{share}; "
            f"{'never reached' if seconds is None else f'{seconds:.0f} s'} |"
        )
    gaps = []
    for algorithm in fl_hetero_bench.ALGORITHMS:
        group = list(compare[algorithm]["test_wer_by_speaker_group"].values())[-1]  # the global or shared model (fedmd: laptops')
        pi, other = group["pi_microphone_speakers"], group["other_speakers"]
        gaps.append(f"{algorithm} {pi:.1%} vs {other:.1%} ({100 * (pi - other):+.1f})")
    rows.append(
        "| … held-out speakers heard through the Pi-class microphone vs the others (global / shared model; fedmd: a "
        f"laptop's own) | {'; '.join(gaps)} |"
    )
    if weakest := results.get("weakest-tier"):
        cells = "; ".join(
            f"{name} {r['test_wer']:.1%}"
            + (
                f" (+{r['extra_upload_bytes_per_other_client'] / 1e6:.2f} MB up per other client)"
                if r["extra_upload_bytes_per_other_client"]
                else ""
            )
            for name, r in weakest["replays"].items()
        )
        rows.append(
            f"| … FedKAD's weakest tier replayed against the run's global model, one change at a time: held-out WER "
            f"(fedkad as run {weakest['fedkad_test_wer']:.1%}, fedavg-uniform {weakest['fedavg_uniform_test_wer']:.1%}) | "
            f"{cells} |"
        )
    return rows


REPLAYS = {  # fl-hetero:weakest-tier's variants, as docs/FEDKAD.md's table describes them
    "as-run": "as run: Pi clients' blocks and the phone/laptop clients' nested top blocks averaged",
    "as-run-plus-server-kd": "… and the server's KD steps from the global model",
    "weak-clients-only-server-kd": "Pi clients only, the server's KD steps (FedKAD before sharing)",
    "weak-clients-only": "Pi clients only",
    "others-top-blocks-without-nesting": "phone/laptop clients' top blocks trained without the nested loss, averaged in",
    "others-full-block": "phone/laptop clients train the Pi model's whole block (fedavg-uniform's update)",
}


def fedkad_doc_tables(results: dict) -> list[str]:
    """docs/FEDKAD.md's measured tables, from fl-hetero.json."""
    compare = results.get("compare")
    if not compare:
        return []
    algorithms = fl_hetero_bench.ALGORITHMS
    lines = [
        f"Held-out test WER ({_hetero_setting(compare['options'])}); first row: the server model's validation WER before "
        "round 1 (fedmd has none):",
        "",
        f"| tier | {' | '.join(algorithms)} |",
        f"| --- | {' | '.join('---' for _ in algorithms)} |",
    ]
    starts = [compare[a]["validation_wer_curve"][0] for a in algorithms]
    lines.append(f"| validation, round 0 | {' | '.join('—' if s is None else f'{s:.1%}' for s in starts)} |")
    for tier in ("pi", "phone", "laptop"):
        cells = [compare[a]["test_wer_by_tier"].get(tier) for a in algorithms]
        lines.append(f"| {tier} | {' | '.join('not eligible' if c is None else f'{c:.1%}' for c in cells)} |")
    if weakest := results.get("weakest-tier"):
        lines += [
            "",
            f"The Pi tier's model replayed (fedkad as run {weakest['fedkad_test_wer']:.1%}, fedavg-uniform "
            f"{weakest['fedavg_uniform_test_wer']:.1%}):",
            "",
            "| how the Pi model is updated each round | test WER | extra upload per phone/laptop client |",
            "| --- | --- | --- |",
        ]
        for name, r in weakest["replays"].items():
            extra = r["extra_upload_bytes_per_other_client"]
            lines.append(f"| {REPLAYS.get(name, name)} | {r['test_wer']:.1%} | {f'{extra / 1e6:.2f} MB' if extra else '—'} |")
    return lines


def _fill(path: Path, name: str, lines: list[str]) -> None:
    """Replace what stands between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in ``path``."""
    text = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    path.write_text(head + start + "\n" + "\n".join(lines) + ("\n" if lines else "") + end + tail)


def part_timings() -> list[str]:
    """Seconds each suite or part took when last measured, from the JSON's machine records."""
    cells = []
    for name in SUITES:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            continue
        machine = json.loads(path.read_text()).get("machine", {})
        if "seconds" in machine:
            cells.append(f"`{name}` {machine['seconds'] / 60:.0f} min")
        cells += [f"`{name}:{part}` {seconds / 60:.0f} min" for part, seconds in machine.get("parts_seconds", {}).items()]
    return [f"_Time each took when last measured (2 CPU cores): {'; '.join(cells)}._"] if cells else []


def reliability_rows(results: dict) -> list[str]:
    rows = []
    if byzantine := results.get("byzantine"):
        clean = byzantine["clean"]["fedavg"]["test_accuracy"]
        for name, row in byzantine["attacked"].items():
            cells = ", ".join(f"{rule} {r['test_accuracy']:.1%}" for rule, r in row.items())
            rows.append(
                f"| KWS, {name} of {byzantine['clients']} clients attacking every round ({byzantine['rounds']} rounds): test "
                f"accuracy by rule (clean FedAvg {clean:.1%}) | {cells} |"
            )
    if faults := results.get("faults"):
        killed, resumed = faults["three_killed"], faults["server_killed"]
        rows.append(
            f"| KWS deployed (SuperLink + {faults['clients']} SuperNodes, TLS, node auth), 3 SuperNodes killed as round 3 "
            "starts: "
            f"rounds finished, test accuracy vs the same federation uninterrupted | {killed['rounds_recorded']} of "
            f"{faults['rounds']}, "
            f"{killed['test_accuracy']:.2%} vs {faults['clean']['test_accuracy']:.2%} (7 clients a round after the kill) |"
        )
        rows.append(
            f"| … SuperLink killed as round {resumed['rounds_recorded_before_kill'] + 1} starts, deployment restarted with "
            "--resume: "
            f"final head vs uninterrupted | max abs diff {resumed['final_head_max_abs_diff_vs_uninterrupted']:g}, "
            f"{resumed['resumed_rounds']} rounds, test {resumed['test_accuracy']:.2%} |"
        )
    if dp := results.get("dp"):
        cells = ", ".join(
            f"noise {noise}: {r['test_accuracy']:.1%}" + (f" (epsilon {r['epsilon']})" if r["epsilon"] else " (no DP)")
            for noise, r in dp["by_noise_multiplier"].items()
        )
        rows.append(
            f"| KWS with central DP (clip {dp['clip']}, delta {dp['delta']:g}, {dp['rounds']} rounds, {dp.get('per_round', 10)} "
            f"of {dp.get('clients', 10)} clients a round): "
            f"test accuracy | {cells} |"
        )
        if crowd := dp.get("all_clients"):
            rows.append(
                f"| … all {crowd['clients']} clients (3 speakers each) every round, noise {crowd['noise_multiplier']}: test "
                "accuracy, epsilon | "
                f"**{crowd['test_accuracy']:.1%}**, epsilon {crowd['epsilon']} |"
            )
    return rows


def real_rows(results: dict) -> list[str]:
    rows = []
    if pretrained := results.get("pretrained"):
        test = pretrained["speakers"]["test"]
        held = f"{sum(test.values())} held-out train/ speakers ({test.get('child', 0)} children)"
        for model in real_bench.MODELS:
            cells = []
            for backend, windows in pretrained[model].items():
                for window, r in windows.items():
                    cells.append(
                        f"{backend} {'30-s' if window == 'full' else 'clip'}: {r['wer']:.1%} "
                        f"({r['children']:.1%} / {r['adults']:.1%}, {r['audio_seconds_per_second']:g}x)"
                    )
            rows.append(
                f"| Real speech, speechocean762 ({held}, {pretrained[model]['transformers']['full']['clips']} utterances): "
                f"pretrained {model} WER (children / adults, x real time) | {'; '.join(cells)} |"
            )
    for part in ("federated", "federated_base"):
        if run := results.get(part):
            rows += _real_federation_rows(run, pretrained)
    if serving := results.get("serving"):
        cells = [
            f"faster-whisper alone, pretrained: {serving['faster_whisper_pretrained']['wer']:.1%}, "
            f"{serving['faster_whisper_pretrained']['audio_seconds_per_second']:g}x"
        ]
        for name in ("ctranslate2_pretrained", "ctranslate2_federated", "transformers_federated"):
            r = serving[name]
            cells.append(
                f"{name.replace('_', ' ')}: {r['wer']:.1%}, {r['audio_seconds_per_second']:g}x "
                f"({r['with_log_mels_audio_seconds_per_second']:g}x with log-mels)"
            )
        rows.append(
            f"| … serving on {serving['options']['clips']} held-out clips, 30-s windows, one run: WER, x real time | "
            f"{'; '.join(cells)}; ctranslate2 over faster-whisper {serving['ctranslate2_over_faster_whisper']}x, over "
            f"transformers (federated) {serving['ctranslate2_over_transformers_federated']}x |"
        )
    if shares := results.get("interpolation"):
        cells = [
            f"{key.removeprefix('interpolation_')}: {r['validation']:.1%} / {r['flite']:.1%} / {r['ljspeech']:.1%}"
            for key, r in shares.items()
            if key.startswith("interpolation_")
        ]
        before = shares["pretrained"]
        rows.append(
            "| … the served share of the federated update (`--interpolation`; real:federated's best round): WER validation "
            f"speakers / flite / LJSpeech, 30-s windows | pretrained {before['validation']:.1%} / {before['flite']:.1%} / "
            f"{before['ljspeech']:.1%}; {'; '.join(cells)} |"
        )
    if personal := results.get("personal"):
        rounds = personal["options"]["rounds"]
        rows.append(
            f"| … personal models ({personal['options']['personal']['steps']} steps on a device's own clips from the "
            f"served global model, {rounds}-round federation with a quarter of each speaker's clips kept on the device): "
            f"WER on each device's kept clips, global → personal (mean of {len(personal['clients'])} devices), share of "
            f"devices improved | {personal['mean_global_wer']:.1%} → **{personal['mean_personal_wer']:.1%}**, "
            f"{personal['share_improved']:.0%} improved |"
        )
    if recipe := results.get("recipe"):
        before = recipe["pretrained"]
        cells = [f"pretrained {before['validation']:.1%} / {before['flite']:.1%} / {before['ljspeech']:.1%}"]
        for name in real_bench.RECIPE_RUNS:
            for key, scores in recipe.get(name, {}).items():
                if key.startswith("interpolation_"):
                    cells.append(
                        f"{name} at {key.removeprefix('interpolation_')}: {scores['validation']:.1%} / {scores['flite']:.1%} / "
                        f"{scores['ljspeech']:.1%}"
                    )
        rows.append(
            "| … the recipe's ablations (tiny.en federations): WER validation speakers / flite / LJSpeech, 30-s "
            f"windows | {'; '.join(cells)} |"
        )
    if confidence := results.get("confidence"):
        cells = [
            f"{floor}: {f['kept']} kept at {f['kept_wer']:.1%}" + (f", dropped at {f['dropped_wer']:.1%}" if f["dropped"] else "")
            for floor, f in confidence["floors"].items()
        ]
        rows.append(
            f"| … pseudo-labels of the served federated model on {confidence['clips']} validation clips by mean token "
            f"log-prob floor: clips kept and their labels' WER | {'; '.join(cells)} |"
        )
    if unlabelled := results.get("unlabelled"):
        names = ("all_labelled", "left_out", "pseudo_labelled")
        cells = [f"{name.replace('_', ' ')} {unlabelled[name]['held_out']['wer']:.1%}" for name in names]
        gap = unlabelled["gap_closed"]
        rows.append(
            f"| … half the clients without transcripts ({unlabelled['options']['rounds']}-round federations): held-out "
            f"WER (clip windows) | {'; '.join(cells)}; gap closed by pseudo-labels: "
            f"{'n/a' if gap is None else f'{gap:.0%}'} |"
        )
    return rows


def _real_federation_rows(run: dict, pretrained: dict | None) -> list[str]:
    """A federated part of the real suite: the served model against the pretrained one (CTranslate2, 30-s windows),
    centralized and local-only on the same client steps, and forgetting."""
    options, fed = run["options"], run["federated"]
    model = options["model"]

    def scored(r: dict) -> str:
        return f"{r['wer']:.1%} ({r['children']:.1%} / {r['adults']:.1%}, {r['audio_seconds_per_second']:g}x)"

    before = (pretrained or {}).get(model, {}).get("ctranslate2", {}).get("full")
    first = "held_out_speakers"
    cut = f", {1 - fed['ctranslate2_full']['wer'] / before['wer']:.0%} below pretrained" if before else ""
    rows = [
        f"| … federated {model} (`asr federate` defaults: {options['num_clients']} clients, {options['clients_per_round']} "
        f"a round, {options['rounds']} rounds, LoRA on clip windows, served at interpolation {options['interpolation']}): "
        "held-out WER (children / adults, x real time) | "
        f"CTranslate2 int8 30-s: **{scored(fed['ctranslate2_full'])}**{cut}; transformers 30-s: "
        f"{scored(fed['transformers_full'])}; clip: {scored(fed['transformers_clip'])} |",
        f"| … {model}: federated / centralized (same {run['client_steps_total']} client steps) / local-only (mean of "
        f"{len(run['local_only']['wer_per_client'])} clients), held-out WER on clip windows | "
        f"{fed['after'][first]['clip']['wer']:.1%} / {run['centralized']['after'][first]['clip']['wer']:.1%} / "
        f"{run['local_only']['mean_wer']:.1%} (local-only's {run['local_only']['subset_clips']} clips: federated "
        f"{run['local_only']['federated_wer_same_clips']:.1%}); federated over centralized {fed['over_centralized']}x |",
    ]
    if forgetting := run.get("forgetting"):
        cells = [f"{name} ({f['clips']} clips) {f['pretrained']:.1%} → {f['federated']:.1%}" for name, f in forgetting.items()]
        rows.append(f"| … {model} forgetting: WER pretrained → federated, 30-s windows | {'; '.join(cells)} |")
    return rows


MODULES = {
    "kws": kws_bench,
    "asr": asr_bench,
    "fl-asr": fl_asr_bench,
    "distill": distill_bench,
    "fl-hetero": fl_hetero_bench,
    "reliability": reliability_bench,
    "real": real_bench,
}  # suites whose parts may run alone


def _parts(module):
    """A suite that runs its module's parts; a module may name the ``DEFAULT_PARTS`` a whole-suite run takes (the others
    run on demand) and the ``RESUMABLE`` parts whose work directory is kept."""
    return lambda work: {
        name: run(work, SMALL) for name, run in module.PARTS.items() if name in getattr(module, "DEFAULT_PARTS", module.PARTS)
    }


SUITES = {
    "foundation": (bench_foundation, foundation_rows),
    "kws": (_parts(kws_bench), kws_rows),
    "asr": (_parts(asr_bench), asr_rows),
    "fl-asr": (_parts(fl_asr_bench), fl_asr_rows),
    "distill": (_parts(distill_bench), distill_rows),
    "fl-hetero": (_parts(fl_hetero_bench), fl_hetero_rows),
    "reliability": (_parts(reliability_bench), reliability_rows),
    "real": (_parts(real_bench), real_rows),
}
PARTS = {suite: module.PARTS for suite, module in MODULES.items()}


def update_readme() -> None:
    rows = ["| measurement | result |", "| --- | --- |"]
    for name, (_, to_rows) in SUITES.items():
        path = RESULTS / f"{name}.json"
        if path.is_file():
            rows += to_rows(json.loads(path.read_text()))
    note = f"_Measured by `make bench` on {os.cpu_count()} CPU cores (JSON with every figure in `benchmarks/results/`)._"
    _fill(ROOT / "README.md", "results", ["", note, "", *rows, "", *part_timings()])
    hetero = RESULTS / "fl-hetero.json"
    _fill(ROOT / "docs" / "FEDKAD.md", "fl-hetero", fedkad_doc_tables(json.loads(hetero.read_text())) if hetero.is_file() else [])


def _code_version() -> str:
    """The commit whose code ran, marked when src/ or benchmarks/ held uncommitted changes."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "benchmarks/*.py"], cwd=ROOT, capture_output=True, text=True
    )
    return head + ("+uncommitted" if changed.stdout.strip() else "")


def recorded(entry: dict, name: str, code: str) -> dict:
    """``entry`` with the exact command line that produced it and the ``code`` it ran; refused without its options."""
    if not isinstance(entry, dict) or not isinstance(entry.get("options"), dict) or not entry["options"]:
        raise SystemExit(f"{name}: its results carry no options; every entry records what it ran with (return an 'options' dict)")
    scale = ["FEDWHISPER_BENCH_SCALE=small"] if SMALL else []
    return entry | {"command": shlex.join([*scale, "python", *sys.argv]), "code": code}


def main(names: list[str]) -> None:
    for flag in ("--data", "--ljspeech", "--digits"):  # the real suite's corpora, given by the user
        if flag in names:
            at = names.index(flag)
            setattr(real_bench, flag.strip("-").upper(), Path(names[at + 1]).expanduser().resolve())
            names = names[:at] + names[at + 2 :]
    unknown = {n for n in names if n not in SUITES and n.partition(":")[2] not in PARTS.get(n.partition(":")[0], {})}
    if unknown:
        choices = [*SUITES, *(f"{suite}:{part}" for suite, parts in PARTS.items() for part in parts)]
        raise SystemExit(f"unknown suite(s) {', '.join(sorted(unknown))}; choose from {', '.join(choices)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    code = _code_version()  # read before the work: the code that runs, whatever is edited meanwhile
    for name in names or [suite for suite in SUITES if suite != "real" or real_bench.DATA]:
        suite, _, part = name.partition(":")
        work = ROOT / "benchmarks" / "work" / name.replace(":", "-")
        resumable = part in getattr(MODULES.get(suite), "RESUMABLE", ())
        resumed = resumable and work.is_dir() and any(work.iterdir())
        if not resumable:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{suite}{'-small' if SMALL else ''}.json"
        started = time.perf_counter()
        if part:
            result = recorded(PARTS[suite][part](work, SMALL), name, code)
            # keep the other parts' results (dropping entries no part writes any more) and their timings, read only
            # now so that a part of the suite that finished meanwhile in another process is kept too
            previous = json.loads(path.read_text()) if path.is_file() else {}
            results = {name: previous.get(name) for name in PARTS[suite]} | {part: result}
            seconds = previous.get("machine", {}).get("parts_seconds", {})
            spent = time.perf_counter() - started + (seconds.get(part, 0) if resumed else 0)  # a resumed part's runs add up
            results["machine"] = {"parts_seconds": seconds | {part: round(spent, 1)}}
        else:
            results = {key: recorded(entry, f"{suite}:{key}", code) for key, entry in SUITES[suite][0](work).items()}
            results["machine"] = {"seconds": round(time.perf_counter() - started, 1)}
        results["machine"] |= {"cpus": os.cpu_count(), "python": platform.python_version()}
        path.write_text(json.dumps(results, indent=2))
        print(json.dumps(results, indent=2))
    if not SMALL:
        update_readme()


if __name__ == "__main__":
    main(sys.argv[1:])
