"""`fedwhisper distill`: Distil-Whisper students (create, pseudo-label, train)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedwhisper.cli.common import console
from fedwhisper.errors import FedwhisperError

app = typer.Typer(help="Distil-Whisper: small-decoder students of a (fine-tuned) teacher.", no_args_is_help=True)


@app.command("student")
def distill_student(
    out: Annotated[Path, typer.Option(help="the student's model directory")],
    teacher: Annotated[str, typer.Option(help="packaged name, model directory (e.g. RUN/best) or hub id")] = "tiny.en",
    decoder_layers: Annotated[int, typer.Option(min=1, help="decoder layers kept: evenly spaced, first and last included")] = 2,
    encoder_layers: Annotated[
        int | None, typer.Option(min=1, help="encoder layers kept [all: the encoder stays the teacher's]")
    ] = None,
) -> None:
    """A student initialised from its teacher: its encoder, and decoder layers linspace(0, L-1, n)."""
    from fedwhisper.distill import make_student

    path = make_student(teacher, out, decoder_layers, encoder_layers)
    console.print(f"student of {escape(teacher)} with {decoder_layers} decoder layers -> {path}")


@app.command("label")
def distill_label(
    source: Annotated[
        Path,
        typer.Argument(
            help="prepared features (`asr prepare` with the teacher's tokenizer), or a corpus (an "
            "audiofolder: transcripts optional)"
        ),
    ],
    out: Annotated[Path, typer.Option(help="the pseudo-labelled features (same layout)")],
    teacher: Annotated[str, typer.Option(help="packaged name, model directory (e.g. RUN/best) or hub id")] = "tiny.en",
    wer_threshold: Annotated[
        float | None, typer.Option(min=0.0, help="drop a clip whose label's WER against its reference exceeds this (%%)")
    ] = 10.0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    window: Annotated[
        str, typer.Option(help="encoder window: full (Whisper's 30 s) or clip (for a teacher trained on clip windows)")
    ] = "full",
    language: Annotated[str, typer.Option(help="a corpus's language (features carry their own)")] = "en",
    backend: Annotated[
        str, typer.Option(help="transformers, or ctranslate2: faster-whisper on the teacher's int8 export (faster on a CPU)")
    ] = "transformers",
) -> None:
    """Greedy pseudo-labels from the teacher for every training clip; labels far from their reference dropped and
    reported, clips without a reference all kept. Validation and test keep their references (a split with none takes
    the teacher's labels too). Saved chunk by chunk: run the same command again after an interruption and it continues."""
    from fedwhisper.distill import LABELS_REPORT, pseudo_label

    report = pseudo_label(source, teacher, out, wer_threshold, batch_size, window=window, language=language, backend=backend)
    for split, row in report["splits"].items():
        console.print(f"{split}: {row['kept']} kept, {row['dropped']} dropped ({row['without_reference']} without a reference)")
    console.print(f"labelled features in {out}; dropped clips listed in {out / LABELS_REPORT}")


@app.command("train")
def distill_train(
    labelled: Annotated[
        Path | None, typer.Argument(help="pseudo-labelled features (`distill label`); not needed with --resume")
    ] = None,
    student: Annotated[str | None, typer.Option(help="the student's model directory (`distill student`)")] = None,
    teacher: Annotated[str | None, typer.Option(help="the teacher that labelled the features")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory: checkpoints, metrics.csv, curves.png, best/")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run directory exactly where it stopped")] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="decoder-only: the decoder blocks train, the token embeddings (tied to the output "
            "projection) stay the teacher's; frozen-encoder: the whole decoder trains. A student with "
            "fewer encoder layers than its teacher trains whole"
        ),
    ] = "decoder-only",
    learning_rate: Annotated[float, typer.Option()] = 5e-4,
    warmup_steps: Annotated[int, typer.Option(min=0)] = 20,
    max_steps: Annotated[int, typer.Option(min=1, help="optimizer steps")] = 300,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    ce_weight: Annotated[float, typer.Option(min=0.0, help="weight of the cross-entropy on the pseudo-labels")] = 0.8,
    kl_weight: Annotated[float, typer.Option(min=0.0, help="weight of KL(teacher ‖ student) at the temperature")] = 1.0,
    temperature: Annotated[float, typer.Option(min=0.01, help="softmax temperature of the KL term (scaled back by T²)")] = 2.0,
    eval_every: Annotated[int, typer.Option(min=1, help="steps between evaluations (WER, CER)")] = 100,
    save_every: Annotated[int, typer.Option(min=1, help="steps between checkpoints")] = 100,
    eval_clips: Annotated[int, typer.Option(min=0, help="evaluation clips (0: the whole split)")] = 200,
    seed: Annotated[int, typer.Option()] = 0,
    window: Annotated[
        str, typer.Option(help="encoder window: full (Whisper's 30 s, outputs cached once) or clip (the clip's length)")
    ] = "full",
) -> None:
    """Distil the teacher into the student: 0.8·CE + 1.0·KL·T² (T = 2), encoder outputs computed once and shared."""
    from fedwhisper.asr.train import TrainConfig
    from fedwhisper.distill import DistillLoss, distill_run
    from fedwhisper.runs import runs_root

    if mode not in ("decoder-only", "frozen-encoder"):
        raise FedwhisperError(f"--mode must be one of decoder-only, frozen-encoder (got {mode!r})")
    config = (
        None
        if resume
        else TrainConfig(
            mode=mode,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            max_steps=max_steps,
            batch_size=batch_size,
            eval_every=eval_every,
            save_every=save_every,
            log_every=min(10, eval_every),
            eval_clips=eval_clips or None,
            seed=seed,
            window=window,
        )
    )
    loss = DistillLoss(ce_weight=ce_weight, kl_weight=kl_weight, temperature=temperature)
    out = resume or out or runs_root() / f"distill-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"run directory: {out}")
    result = distill_run(out, labelled=labelled, student=student, teacher=teacher, config=config, loss=loss, resume=bool(resume))
    best = f"best WER {result.best_wer:.2%} at step {result.best_step}" if result.best_wer is not None else "no evaluation"
    console.print(f"finished at step {result.step}: {best}; {result.samples_per_second:.1f} samples/s; student in {out / 'best'}")
