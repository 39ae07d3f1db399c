"""The ``fedwhisper`` command line: one verb per job, grouped by subject."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="Adapt OpenAI Whisper to private speech without moving the audio.", no_args_is_help=True)
models_app = typer.Typer(help="Pretrained Whisper: list and import packaged checkpoints.", no_args_is_help=True)
data_app = typer.Typer(help="Speech corpora: synthesise, inspect and check.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
console = Console()


@app.callback()
def main() -> None:
    """Adapt OpenAI Whisper to private speech without moving the audio."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # generation-config notices drown the progress bars


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code=1)


def _engines(value: str | None) -> tuple[str, ...] | None:
    return tuple(e.strip() for e in value.split(",") if e.strip()) if value else None


@models_app.command("list")
def models_list() -> None:
    """Packaged models, whether their packages are installed, and where they are imported."""
    from fedwhisper.models.registry import IMPORT_MARKER, PACKAGED_MODELS, fedwhisper_home, is_installed

    table = Table("name", "install with", "packages", "imported at")
    for name, model in PACKAGED_MODELS.items():
        out = fedwhisper_home() / "models" / name
        table.add_row(
            name,
            escape(f"pip install 'fedwhisper[{model.extra}]'"),
            "installed" if is_installed(name) else "missing",
            str(out) if (out / IMPORT_MARKER).is_file() else "-",
        )
    console.print(table)


@models_app.command("import")
def models_import(
    name: Annotated[str, typer.Argument(help="tiny.en, base or small")],
    out: Annotated[Path | None, typer.Option(help="output directory (default: $FEDWHISPER_HOME/models/NAME)")] = None,
    force: Annotated[bool, typer.Option(help="convert again even if a finished import exists")] = False,
) -> None:
    """Convert a packaged CTranslate2 checkpoint into a Hugging Face transformers model directory."""
    import time

    from fedwhisper.models.ctranslate2_format import CheckpointFormatError
    from fedwhisper.models.registry import ModelNotAvailableError, import_packaged_model

    started = time.perf_counter()
    try:
        with console.status(f"importing {name}"):
            path = import_packaged_model(name, out, force=force)
    except (ModelNotAvailableError, CheckpointFormatError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    console.print(f"{name} -> {path} ({time.perf_counter() - started:.1f} s)")


@data_app.command("synth-kws")
def data_synth_kws(
    out: Annotated[Path, typer.Argument(help="corpus directory to write (resumed if it exists)")],
    speakers: Annotated[int, typer.Option(help="number of synthetic speakers (the original has ~2,100 in train+val+test)")] = 200,
    repeats: Annotated[int, typer.Option(help="clips of each word per speaker")] = 1,
    words: Annotated[str | None, typer.Option(help="comma-separated words (default: the 35 of Speech Commands v0.02)")] = None,
    noise_seconds: Annotated[float, typer.Option(help="length of each background-noise file")] = 60.0,
    engines: Annotated[str | None, typer.Option(help="comma-separated: espeak-ng,flite (default: all installed)")] = None,
    seed: Annotated[int, typer.Option(help="same seed, same corpus")] = 0,
    workers: Annotated[int | None, typer.Option(help="parallel synthesis threads (default: CPU count)")] = None,
) -> None:
    """Write a Google Speech Commands v0.02-style keyword corpus of synthetic speakers."""
    from fedwhisper.data.speech_commands import WORDS
    from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands
    from fedwhisper.data.synthesis import SynthesisOptionsMismatch
    from fedwhisper.data.tts import SynthesisError

    word_list = tuple(w.strip() for w in words.split(",") if w.strip()) if words else WORDS
    options = KwsSynthesisOptions(speakers=speakers, words=word_list, repeats=repeats, seed=seed, noise_seconds=noise_seconds, engines=_engines(engines))
    try:
        report = synthesize_speech_commands(out, options, workers)
    except (SynthesisOptionsMismatch, SynthesisError) as error:
        raise _fail(str(error)) from None
    _print_report(out, report)


@data_app.command("synth-asr")
def data_synth_asr(
    out: Annotated[Path, typer.Argument(help="corpus directory to write (resumed if it exists)")],
    language: Annotated[str, typer.Option(help="en or sv")] = "en",
    sentences: Annotated[int, typer.Option(help="distinct sentences, each spoken once")] = 2400,
    speakers: Annotated[int, typer.Option(help="synthetic speakers in all")] = 48,
    test_speakers: Annotated[int, typer.Option(help="speakers held out for the test split")] = 8,
    text: Annotated[Path | None, typer.Option(help="text file, one sentence a line (replaces the built-in source)")] = None,
    engines: Annotated[str | None, typer.Option(help="comma-separated: espeak-ng,flite (default: all installed)")] = None,
    seed: Annotated[int, typer.Option(help="same seed, same corpus")] = 0,
    workers: Annotated[int | None, typer.Option(help="parallel synthesis threads (default: CPU count)")] = None,
) -> None:
    """Write a Hugging Face audiofolder ASR corpus (train/ and test/ with metadata.csv)."""
    from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
    from fedwhisper.data.synthesis import SynthesisOptionsMismatch
    from fedwhisper.data.text import TextSourceError
    from fedwhisper.data.tts import SynthesisError

    options = AsrSynthesisOptions(
        language=language, sentences=sentences, speakers=speakers, test_speakers=test_speakers,
        seed=seed, text=str(text) if text else None, engines=_engines(engines),
    )
    try:
        report = synthesize_audiofolder(out, options, workers)
    except (SynthesisOptionsMismatch, SynthesisError, TextSourceError, ValueError) as error:
        raise _fail(str(error)) from None
    _print_report(out, report)


def _print_report(out: Path, report) -> None:
    summary = report.as_dict()
    console.print(
        f"{out}: {summary['written']} clips written, {summary['reused']} reused, {summary['failed']} failed "
        f"in {summary['seconds']} s ({summary['clips_per_second']} clips/s)"
    )
    for failure in summary["failures"][:10]:
        console.print(f"  [yellow]skipped[/yellow] {failure['file']}: {failure['error']}")
    if summary["failed"]:
        console.print(f"  full list: {out / 'synthesis_report.json'}")


@data_app.command("info")
def data_info(source: Annotated[str, typer.Argument(help="corpus directory (Speech Commands, Common Voice, audiofolder) or hub id")]) -> None:
    """Which layout a corpus follows, and its splits, sizes and speakers."""
    from fedwhisper.data.corpus import corpus_kind, load_corpus

    try:
        kind = corpus_kind(source)
        corpus = load_corpus(source)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    table = Table("split", "clips", "speakers", title=f"{source} ({kind})")
    for split, dataset in corpus.items():
        table.add_row(split, str(len(dataset)), str(len(set(dataset["speaker_id"]))))
    console.print(table)
    skipped = getattr(corpus, "skipped_files", [])
    if skipped:
        console.print(f"[yellow]{len(skipped)} listed or found files left out[/yellow], e.g. {skipped[0]}")


@data_app.command("check")
def data_check(
    source: Annotated[str, typer.Argument(help="corpus directory or hub id")],
    max_seconds: Annotated[float, typer.Option(help="longest acceptable clip")] = 30.0,
    num_proc: Annotated[int | None, typer.Option(help="decoding processes (default: CPU count)")] = None,
    report: Annotated[Path | None, typer.Option(help="write the bad files as JSON here")] = None,
) -> None:
    """Decode every clip; list files that are missing, unreadable, truncated, empty, non-finite, silent or too long."""
    from fedwhisper.data.check import check_corpus

    try:
        bad, total = check_corpus(source, max_seconds=max_seconds, num_proc=num_proc)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    console.print(f"{total - len(bad)} of {total} clips usable, {len(bad)} bad")
    for entry in bad[:20]:
        console.print(f"  [yellow]bad[/yellow] {entry['error']}")
    if report:
        report.write_text(json.dumps(bad, indent=2))
        console.print(f"list written to {report}")


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="packaged name, model directory or hub id")] = "tiny.en",
    clips: Annotated[int, typer.Option(help="held-out clips to transcribe")] = 10,
) -> None:
    """Import a model, synthesise a small English corpus and transcribe held-out speakers (prints WER)."""
    from fedwhisper.demo import run_demo

    result = run_demo(model, clips=clips)
    table = Table("speaker", "reference", "hypothesis", title=f"{model} on held-out synthetic speakers")
    for speaker, ref, hyp in zip(result.speakers, result.references, result.hypotheses):
        table.add_row(speaker, ref, hyp)
    console.print(table)
    console.print(
        f"WER {result.wer:.1%} over {len(result.references)} clips; {result.audio_seconds:.1f} s of audio "
        f"transcribed in {result.transcribe_seconds:.1f} s ({result.audio_seconds / result.transcribe_seconds:.1f}x real time)"
    )
