"""`make bench`: measured figures, written to benchmarks/results/*.json and the README's results table.

Run from the repository root. FEDWHISPER_BENCH_SCALE=small shrinks every size (for a quick check of the script).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import soundfile as sf

from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands
from fedwhisper.models.registry import ModelNotAvailableError, import_packaged_model

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SMALL = os.environ.get("FEDWHISPER_BENCH_SCALE") == "small"


def corpus_size(directory: Path) -> dict:
    clips = [p for p in directory.rglob("*.wav") if "_background_noise_" not in p.parts]
    seconds = sum(sf.info(p).duration for p in clips)
    megabytes = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6
    return {"clips": len(clips), "audio_hours": round(seconds / 3600, 3), "disk_mb": round(megabytes, 1)}


def bench_foundation(work: Path) -> dict:
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    imports = {}
    import transformers.models.whisper  # noqa: F401  (so the first timed import does not pay for loading transformers)

    for name in ("tiny.en", "base", "small"):
        started = time.perf_counter()
        try:
            import_packaged_model(name, work / "models" / name, force=True)
            imports[name] = {"seconds": round(time.perf_counter() - started, 2)}
        except ModelNotAvailableError as error:
            imports[name] = {"error": str(error)}
    results["model_import"] = imports

    kws_options = KwsSynthesisOptions(speakers=20 if SMALL else 200)
    kws = synthesize_speech_commands(work / "kws", kws_options)
    results["synth_kws"] = {"speakers": kws_options.speakers, **kws.as_dict(), **corpus_size(work / "kws")}
    results["synth_kws"].pop("failures")

    for language in ("en", "sv"):
        options = AsrSynthesisOptions(language=language, sentences=200 if SMALL else 2400)
        asr = synthesize_audiofolder(work / f"asr-{language}", options)
        entry = {"sentences": options.sentences, "speakers": options.speakers, **asr.as_dict(), **corpus_size(work / f"asr-{language}")}
        entry.pop("failures")
        results[f"synth_asr_{language}"] = entry
    return results


def update_readme(results: dict) -> None:
    rows = ["| measurement | result |", "| --- | --- |"]
    for name, entry in results["model_import"].items():
        outcome = f"{entry['seconds']} s" if "seconds" in entry else "not importable (see JSON)"
        rows.append(f"| import {name} (CTranslate2 → transformers) | {outcome} |")
    kws = results["synth_kws"]
    rows.append(f"| synth-kws, {kws['speakers']} speakers | {kws['clips']} clips, {kws['clips_per_second']} clips/s, {kws['disk_mb']} MB |")
    for language in ("en", "sv"):
        asr = results[f"synth_asr_{language}"]
        rows.append(
            f"| synth-asr --language {language}, {asr['sentences']} sentences | "
            f"{asr['audio_hours']} h audio, {asr['clips_per_second']} clips/s, {asr['disk_mb']} MB |"
        )
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    note = f"\n_Measured by `make bench` on {results['machine']['cpus']} CPU cores; JSON in `benchmarks/results/`._\n\n"
    readme.write_text(head + start + note + "\n".join(rows) + "\n" + end + tail)


def main() -> None:
    work = ROOT / "benchmarks" / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results = bench_foundation(work)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "foundation-small.json" if SMALL else "foundation.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2))
    if not SMALL:
        update_readme(results)
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
