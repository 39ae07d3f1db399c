"""`fedwhisper data`: synthesise, inspect and check speech corpora."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedwhisper.cli.common import console, writable_new_file
from fedwhisper.errors import FedwhisperError
from fedwhisper.files import write_json

app = typer.Typer(help="Speech corpora: synthesise, inspect and check.", no_args_is_help=True)


def _engines(value: str | None) -> tuple[str, ...] | None:
    return tuple(e.strip() for e in value.split(",") if e.strip()) if value else None


@app.command("synth-kws")
def data_synth_kws(
    out: Annotated[Path, typer.Argument(help="corpus directory to write (resumed if it exists)")],
    speakers: Annotated[
        int, typer.Option(min=1, help="number of synthetic speakers (the original has ~2,100 in train+val+test)")
    ] = 200,
    repeats: Annotated[int, typer.Option(min=1, help="clips of each word per speaker")] = 1,
    words: Annotated[str | None, typer.Option(help="comma-separated words (default: the 35 of Speech Commands v0.02)")] = None,
    noise_seconds: Annotated[float, typer.Option(min=0.0, help="length of each background-noise file")] = 60.0,
    engines: Annotated[str | None, typer.Option(help="comma-separated: espeak-ng,flite (default: all installed)")] = None,
    seed: Annotated[int, typer.Option(help="same seed, same corpus")] = 0,
    workers: Annotated[int | None, typer.Option(min=1, help="parallel synthesis threads (default: CPU count)")] = None,
) -> None:
    """Write a Google Speech Commands v0.02-style keyword corpus of synthetic speakers."""
    from fedwhisper.data.speech_commands import WORDS
    from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands

    word_list = tuple(w.strip() for w in words.split(",") if w.strip()) if words else WORDS
    options = KwsSynthesisOptions(
        speakers=speakers, words=word_list, repeats=repeats, seed=seed, noise_seconds=noise_seconds, engines=_engines(engines)
    )
    report = synthesize_speech_commands(out, options, workers)
    _print_report(out, report)


@app.command("synth-asr")
def data_synth_asr(
    out: Annotated[Path, typer.Argument(help="corpus directory to write (resumed if it exists)")],
    language: Annotated[str, typer.Option(help="en or sv")] = "en",
    sentences: Annotated[int, typer.Option(min=1, help="distinct sentences, each spoken once")] = 2400,
    speakers: Annotated[int, typer.Option(min=1, help="synthetic speakers in all")] = 48,
    test_speakers: Annotated[int, typer.Option(min=0, help="speakers held out for the test split")] = 8,
    text: Annotated[Path | None, typer.Option(help="text file, one sentence a line (replaces the built-in source)")] = None,
    engines: Annotated[str | None, typer.Option(help="comma-separated: espeak-ng,flite (default: all installed)")] = None,
    seed: Annotated[int, typer.Option(help="same seed, same corpus")] = 0,
    workers: Annotated[int | None, typer.Option(min=1, help="parallel synthesis threads (default: CPU count)")] = None,
) -> None:
    """Write a Hugging Face audiofolder ASR corpus (train/ and test/ with metadata.csv)."""
    from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder

    options = AsrSynthesisOptions(
        language=language,
        sentences=sentences,
        speakers=speakers,
        test_speakers=test_speakers,
        seed=seed,
        text=str(text) if text else None,
        engines=_engines(engines),
    )
    report = synthesize_audiofolder(out, options, workers)
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


@app.command("info")
def data_info(
    source: Annotated[
        str, typer.Argument(help="corpus directory (Speech Commands, Common Voice, Kaldi data directory, audiofolder) or hub id")
    ],
) -> None:
    """Which layout a corpus follows, its splits, sizes and speakers, the speakers' groups (age, gender) where the
    corpus gives them, and what the reader left out."""
    from collections import Counter

    from fedwhisper.data.corpus import GROUP_COLUMNS, corpus_kind, load_corpus, speaker_values

    kind = corpus_kind(source)
    corpus = load_corpus(source)
    table = Table("split", "clips", "speakers", title=f"{source} ({kind})")
    groups = []
    for split, dataset in corpus.items():
        table.add_row(split, str(len(dataset)), str(len(set(dataset["speaker_id"]))))
        for column in GROUP_COLUMNS:
            speakers = Counter(speaker_values(dataset, column).values())
            if any(speakers):
                groups.append(
                    f"{split} {column}: " + ", ".join(f"{v or '?'} {n}" for v, n in sorted(speakers.items())) + " speakers"
                )
    console.print(table)
    for line in groups:
        console.print(line)
    skipped = getattr(corpus, "skipped", {})
    if skipped:
        console.print(f"[yellow]{len(skipped)} left out[/yellow]:")
        for name, why in list(skipped.items())[:10]:
            console.print(f"  {name} ({why})")
        if len(skipped) > 10:
            console.print(f"  and {len(skipped) - 10} more (`fedwhisper data check` lists them all)")


@app.command("check")
def data_check(
    source: Annotated[str, typer.Argument(help="corpus directory or hub id")],
    max_seconds: Annotated[float, typer.Option(min=0.0, help="longest acceptable clip")] = 30.0,
    num_proc: Annotated[int | None, typer.Option(min=1, help="decoding processes (default: CPU count)")] = None,
    report: Annotated[Path | None, typer.Option(help="write the bad files as JSON here")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing report")] = False,
) -> None:
    """Decode every clip; list files that are missing, unreadable, truncated, empty, non-finite, silent or too long.
    Exits with code 1 when any clip is bad."""
    from fedwhisper.data.check import check_corpus

    if report:
        writable_new_file(report, overwrite)
    bad, total = check_corpus(source, max_seconds=max_seconds, num_proc=num_proc)
    console.print(f"{total - len(bad)} of {total} clips usable, {len(bad)} bad")
    for entry in bad[:20]:
        console.print(f"  [yellow]bad[/yellow] {entry['error']}")
    if report:
        write_json(report, bad)
        console.print(f"list written to {report}")
    if bad:
        raise FedwhisperError(
            f"{len(bad)} of {total} clips are bad ({'listed in ' + str(report) if report else 'see above'}); "
            "training and federation skip them"
        )
