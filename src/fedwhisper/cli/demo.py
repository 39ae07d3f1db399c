"""`fedwhisper demo`."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from fedwhisper.cli.common import console, fail
from fedwhisper.cli.kws import print_round


def demo(
    job: Annotated[str, typer.Argument(help="kws: federated keyword spotting; asr: transcribe held-out speakers")] = "kws",
    model: Annotated[str, typer.Option(help="packaged name, model directory or hub id")] = "tiny.en",
) -> None:
    """The job `make demo` runs: synthesise (or reuse) a corpus, then federate a keyword spotter over 100 clients."""
    if job == "kws":
        from fedwhisper.demo import DEMO_KWS_CORPUS, run_kws_demo

        console.print(
            f"Federated keyword spotting: {DEMO_KWS_CORPUS.speakers} synthetic speakers, training speakers grouped into "
            f"100 clients, 10 sampled per round, 10 rounds of FedAvg; frozen {model} encoder on a 1-s window, "
            f"only the small head is trained and shared. Accuracy is on speakers no client holds."
        )
        started = time.perf_counter()
        run = run_kws_demo(model, on_round=print_round)
        final = run.rows[-1]
        console.print(
            f"held-out speakers after {final['round']} rounds: test accuracy {final['test_accuracy']:.2%} "
            f"(validation {final['validation_accuracy']:.2%}); {time.perf_counter() - started:.0f} s in all; "
            f"metrics, plot and head in {run.path}"
        )
        return
    if job != "asr":
        raise fail(f"unknown demo {job!r}: kws or asr")
    from fedwhisper.demo import run_asr_demo

    result = run_asr_demo(model)
    table = Table("speaker", "reference", "hypothesis", title=f"{model} on held-out synthetic speakers")
    for speaker, ref, hyp in zip(result.speakers, result.references, result.hypotheses):
        table.add_row(speaker, ref, hyp)
    console.print(table)
    console.print(
        f"WER {result.wer:.1%} over {len(result.references)} clips; {result.audio_seconds:.1f} s of audio "
        f"transcribed in {result.transcribe_seconds:.1f} s ({result.audio_seconds / result.transcribe_seconds:.1f}x real time)"
    )
