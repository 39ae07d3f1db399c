"""The ``fedwhisper`` command line: one verb per job, grouped by subject."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="Adapt OpenAI Whisper to private speech without moving the audio.", no_args_is_help=True)
models_app = typer.Typer(help="Pretrained Whisper: list and import packaged checkpoints.", no_args_is_help=True)
data_app = typer.Typer(help="Speech corpora: synthesise, inspect and check.", no_args_is_help=True)
kws_app = typer.Typer(help="Keyword spotting: a frozen Whisper encoder plus a small head, federated with Flower.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
asr_app = typer.Typer(help="Speech recognition: prepare features, fine-tune, evaluate, tune hyper-parameters.", no_args_is_help=True)
app.add_typer(kws_app, name="kws")
app.add_typer(asr_app, name="asr")
console = Console()


@app.callback()
def main() -> None:
    """Adapt OpenAI Whisper to private speech without moving the audio."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # generation-config notices drown the progress bars
    transformers_logging.disable_progress_bar()  # "Loading weights" bars for every model load


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


def _print_round(row: dict) -> None:
    line = f"round {row['round']:>3}: validation {row.get('validation_accuracy', float('nan')):.2%}  test {row.get('test_accuracy', float('nan')):.2%}"
    if "clients_trained" in row:
        line += f"  ({row['clients_trained']} clients trained, {row.get('clients_skipped', 0)} too small, {row['seconds']:.1f} s)"
    console.print(line)


# Options of `kws federate` that a resumed run may override; None means "not given".
def _kws_overrides(**given) -> dict:
    return {key: value for key, value in given.items() if value is not None}


@kws_app.command("federate")
def kws_federate(
    corpus: Annotated[Path | None, typer.Argument(help="Speech Commands-layout corpus (not needed with --resume)")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="where metrics, plot and head checkpoints go")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run directory from its last saved round")] = None,
    model: Annotated[str | None, typer.Option(help="frozen encoder: tiny.en, base, a model directory or hub id [tiny.en]")] = None,
    window_seconds: Annotated[float | None, typer.Option(help="encoder window (30: an ablation with Whisper's padding) [1.0]")] = None,
    keywords: Annotated[str | None, typer.Option(help="comma-separated keywords [the 10 commands]")] = None,
    head: Annotated[str | None, typer.Option(help="pooled (ours) or anchor (the Flower example's Conv1d layout) [pooled]")] = None,
    num_clients: Annotated[int | None, typer.Option(help="speaker groups (offices) [100]")] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="clients sampled each round [10]")] = None,
    rounds: Annotated[int | None, typer.Option(help="federated rounds in all [10]")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="epochs each client trains per round [5]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[16]")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="[0.002]")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd [adam]")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="encoder-output caches [$FEDWHISPER_HOME/cache/kws]")] = None,
    seed: Annotated[int | None, typer.Option(help="[0]")] = None,
    recipe: Annotated[str | None, typer.Option(help="fedwhisper, or flower-example: Flower's Whisper example's client "
                                                    "(5-speaker clients, 5 % per round, 30-s window, Adam, batch 8, 1 epoch) [fedwhisper]")] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower's and Ray's logs")] = False,
) -> None:
    """Federated training of the head: FedAvg over speaker-grouped clients in Flower's simulation engine."""
    from fedwhisper.kws.runlog import RunLog
    from fedwhisper.kws.simulate import FederationFailed, simulate
    from fedwhisper.kws.task import KwsOptions
    from fedwhisper.models.registry import fedwhisper_home

    given = _kws_overrides(
        corpus=str(corpus.resolve()) if corpus else None, model=model, window_seconds=window_seconds, keywords=keywords, head=head,
        num_clients=num_clients, clients_per_round=clients_per_round, rounds=rounds, local_epochs=local_epochs,
        batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer, cache_dir=str(cache_dir) if cache_dir else None, seed=seed,
        recipe=recipe,
    )
    try:
        if resume:
            base = RunLog(resume).saved_options()
            run_dir = resume
        else:
            if corpus is None:
                raise ValueError("give a CORPUS (or --resume RUN_DIR)")
            base = {}
            run_dir = run_dir or fedwhisper_home() / "runs" / f"kws-{time.strftime('%Y%m%d-%H%M%S')}"
        options = KwsOptions.from_config({**base, **given})
        console.print(f"run directory: {run_dir}")
        runlog = simulate(options, run_dir, resume=bool(resume), on_round=_print_round, verbose=verbose)
    except (ValueError, FileNotFoundError, FileExistsError, FederationFailed) as error:
        raise _fail(str(error)) from None
    final = runlog.rounds[-1]
    console.print(f"final held-out accuracy after round {final['round']}: test {final['test_accuracy']:.2%}, "
                  f"validation {final['validation_accuracy']:.2%}; plot {run_dir / 'accuracy.png'}")


@kws_app.command("train")
def kws_train(
    corpus: Annotated[Path, typer.Argument(help="Speech Commands-layout corpus")],
    run_dir: Annotated[Path | None, typer.Option(help="output directory")] = None,
    epochs: Annotated[int, typer.Option(help="passes over all training clips")] = 10,
    model: Annotated[str, typer.Option(help="frozen encoder")] = "tiny.en",
    window_seconds: Annotated[float, typer.Option(help="encoder window")] = 1.0,
    keywords: Annotated[str | None, typer.Option(help="comma-separated keywords [the 10 commands]")] = None,
    head: Annotated[str, typer.Option(help="pooled or anchor")] = "pooled",
    batch_size: Annotated[int, typer.Option()] = 16,
    learning_rate: Annotated[float, typer.Option()] = 2e-3,
    optimizer: Annotated[str, typer.Option(help="adam or sgd")] = "adam",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Centralized baseline: the same head trained on all training speakers at once."""
    from fedwhisper.kws.task import KwsOptions, train_centralized
    from fedwhisper.models.registry import fedwhisper_home

    options = KwsOptions.from_config(_kws_overrides(
        corpus=str(corpus.resolve()), model=model, window_seconds=window_seconds, keywords=keywords, head=head,
        batch_size=batch_size, learning_rate=learning_rate, optimizer=optimizer, seed=seed, local_epochs=1))
    run_dir = run_dir or fedwhisper_home() / "runs" / f"kws-central-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        train_centralized(options, run_dir, epochs, on_epoch=_print_round)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        raise _fail(str(error)) from None
    console.print(f"head and metrics in {run_dir}")


@kws_app.command("evaluate")
def kws_evaluate(
    head_path: Annotated[Path, typer.Argument(metavar="HEAD", help="a head checkpoint (head.safetensors of a run)")],
    corpus: Annotated[Path, typer.Argument(help="Speech Commands-layout corpus")],
    split: Annotated[str, typer.Option(help="train, validation or test")] = "test",
) -> None:
    """Accuracy of a saved head on a corpus split, overall and per class."""
    import numpy as np

    from fedwhisper.kws.model import load_head
    from fedwhisper.kws.task import head_encoder_and_corpus
    from fedwhisper.kws.train import predict_proba

    try:
        head, meta = load_head(head_path)
        encoder, kws = head_encoder_and_corpus(meta, corpus)
        if split not in kws.splits or len(kws.splits[split]) == 0:
            raise ValueError(f"{corpus} has no {split} clips")
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    examples = kws.examples(kws.splits[split], seed=1)
    features = encoder(examples.waveforms(list(range(len(examples)))), progress=True)
    predicted = predict_proba(head, features).argmax(-1)
    table = Table("class", "clips", "accuracy", title=f"{head_path} on {corpus} ({split})")
    for index, name in enumerate(meta["classes"]):
        mask = examples.labels == index
        if mask.any():
            table.add_row(escape(name), str(int(mask.sum())), f"{np.mean(predicted[mask] == index):.2%}")
    console.print(table)
    console.print(f"accuracy {np.mean(predicted == examples.labels):.2%} over {len(examples)} clips")


@kws_app.command("predict")
def kws_predict(
    head_path: Annotated[Path, typer.Argument(metavar="HEAD", help="a head checkpoint")],
    files: Annotated[list[Path], typer.Argument(help="audio files (any format, rate and channels)")],
    top: Annotated[int, typer.Option(help="classes shown per file")] = 3,
) -> None:
    """Label and class probabilities for each audio file; unreadable files are reported and skipped."""
    from fedwhisper.audio import AudioError, load_audio
    from fedwhisper.kws.model import load_head
    from fedwhisper.kws.task import head_encoder_and_corpus
    from fedwhisper.kws.train import predict_proba

    try:
        head, meta = load_head(head_path)
    except FileNotFoundError as error:
        raise _fail(str(error)) from None
    encoder, _ = head_encoder_and_corpus(meta)
    table = Table("file", "label", "probabilities")
    failed = 0
    for file in files:
        try:
            clip = load_audio(file, allow_silent=True)
        except AudioError as error:
            table.add_row(escape(str(file)), "[red]error[/red]", escape(str(error)))
            failed += 1
            continue
        probabilities = predict_proba(head, encoder([clip]))[0]
        order = probabilities.argsort()[::-1][:top]
        table.add_row(escape(str(file)), escape(meta["classes"][order[0]]),
                      escape(", ".join(f"{meta['classes'][i]} {probabilities[i]:.3f}" for i in order)))
    console.print(table)
    if failed:
        raise typer.Exit(code=1)


@app.command()
def demo(
    job: Annotated[str, typer.Argument(help="kws: federated keyword spotting; asr: transcribe held-out speakers")] = "kws",
    model: Annotated[str, typer.Option(help="packaged name, model directory or hub id")] = "tiny.en",
) -> None:
    """The job `make demo` runs: synthesise (or reuse) a corpus, then federate a keyword spotter over 100 clients."""
    if job == "kws":
        from fedwhisper.demo import DEMO_KWS_CORPUS, run_kws_demo

        console.print(f"Federated keyword spotting: {DEMO_KWS_CORPUS.speakers} synthetic speakers, training speakers grouped into "
                      f"100 clients, 10 sampled per round, 10 rounds of FedAvg; frozen {model} encoder on a 1-s window, "
                      f"only the small head is trained and shared. Accuracy is on speakers no client holds.")
        started = time.perf_counter()
        runlog, run_dir = run_kws_demo(model, on_round=_print_round)
        final = runlog.rounds[-1]
        console.print(f"held-out speakers after {final['round']} rounds: test accuracy {final['test_accuracy']:.2%} "
                      f"(validation {final['validation_accuracy']:.2%}); {time.perf_counter() - started:.0f} s in all; "
                      f"metrics, plot and head in {run_dir}")
        return
    if job != "asr":
        raise _fail(f"unknown demo {job!r}: kws or asr")
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


@asr_app.command("prepare")
def asr_prepare(
    data: Annotated[str, typer.Argument(help="corpus directory (audiofolder, Common Voice) or hub dataset id")],
    out: Annotated[Path, typer.Option(help="where the prepared features go (datasets Arrow)")],
    model: Annotated[str, typer.Option(help="whose feature extractor and tokenizer: packaged name, model directory or hub id")] = "tiny.en",
    language: Annotated[str, typer.Option(help="the corpus language (label prompt of multilingual models)")] = "en",
    task: Annotated[str, typer.Option(help="transcribe, or translate (labels are English translations)")] = "transcribe",
    num_proc: Annotated[int, typer.Option(help="parallel worker processes")] = 2,
    shard_size: Annotated[int, typer.Option(help="clips per resumable shard")] = 256,
    validation_speakers: Annotated[int | None, typer.Option(help="training speakers held out as validation when the corpus has none [10 %]")] = None,
) -> None:
    """CPU feature pipeline: log-mel features and tokenised labels, saved once; resumable; bad clips dropped and reported."""
    from fedwhisper.asr.prepare import REPORT, PrepareOptions, prepare_features
    from fedwhisper.models.registry import ModelNotAvailableError

    options = PrepareOptions(language=language, task=task, num_proc=num_proc, shard_size=shard_size, validation_speakers=validation_speakers)
    try:
        report = prepare_features(data, model, out, options)
    except (ValueError, FileNotFoundError, FileExistsError, ModelNotAvailableError) as error:
        raise _fail(str(error)) from None
    table = Table("split", "kept", "hours", "speakers", "dropped", "why")
    for split, row in report["splits"].items():
        why = ", ".join(f"{count} {reason}" for reason, count in row["dropped_by_reason"].items())
        table.add_row(split, str(row["kept"]), f"{row['hours']:.2f}", str(row["speakers"] or "-"), str(row["dropped"]), escape(why or "-"))
    console.print(table)
    console.print(f"features in {out}; dropped clips listed in {out / REPORT}")


def _train_config(values: dict):
    from fedwhisper.asr.train import TrainConfig

    return TrainConfig.from_dict(values)


@asr_app.command("train")
def asr_train(
    features: Annotated[Path | None, typer.Argument(help="prepared features (`asr prepare`); not needed with --resume")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory: checkpoints, metrics.csv, curves.png, best/")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run directory exactly where it stopped")] = None,
    model: Annotated[str, typer.Option(help="starting model: packaged name, model directory or hub id")] = "tiny.en",
    mode: Annotated[str, typer.Option(help="full, encoder-only, frozen-encoder, decoder-only or lora")] = "decoder-only",
    learning_rate: Annotated[float, typer.Option()] = 1e-4,
    warmup_steps: Annotated[int, typer.Option()] = 20,
    max_steps: Annotated[int, typer.Option(help="optimizer steps")] = 300,
    epochs: Annotated[float | None, typer.Option(help="passes over the training split (instead of --max-steps)")] = None,
    batch_size: Annotated[int, typer.Option()] = 16,
    gradient_accumulation: Annotated[int, typer.Option()] = 1,
    spec_augment: Annotated[bool, typer.Option(help="SpecAugment masks on the log-mel (runs the encoder every step)")] = False,
    frozen_encoder_layers: Annotated[int, typer.Option(help="full mode: bottom encoder blocks kept fixed, their outputs computed once")] = 0,
    dropout: Annotated[float, typer.Option()] = 0.0,
    lora_rank: Annotated[int, typer.Option()] = 32,
    eval_every: Annotated[int, typer.Option(help="steps between evaluations (WER, CER)")] = 100,
    save_every: Annotated[int, typer.Option(help="steps between checkpoints")] = 100,
    log_every: Annotated[int, typer.Option(help="steps between training-loss rows")] = 10,
    eval_clips: Annotated[int, typer.Option(help="evaluation clips (0: the whole split)")] = 200,
    language: Annotated[str | None, typer.Option(help="[the language the features were prepared for]")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fine-tune Whisper on prepared features; evaluates, checkpoints, keeps the best model by WER, resumes exactly."""
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.asr.train import fine_tune
    from fedwhisper.models.registry import ModelNotAvailableError, fedwhisper_home, load_whisper

    try:
        if resume:
            saved = json.loads((resume / "run.json").read_text()) if (resume / "run.json").is_file() else None
            if saved is None:
                raise FileNotFoundError(f"{resume}: not a run directory (no run.json)")
            out, features, model = resume, Path(saved["features"]), saved["model"]
            config = _train_config(json.loads((resume / "config.json").read_text()))
        else:
            if features is None:
                raise ValueError("give FEATURES (or --resume RUN)")
            out = out or fedwhisper_home() / "runs" / f"asr-{time.strftime('%Y%m%d-%H%M%S')}"
            config = _train_config(dict(
                mode=mode, learning_rate=learning_rate, warmup_steps=warmup_steps, max_steps=max_steps, epochs=epochs, batch_size=batch_size,
                gradient_accumulation=gradient_accumulation, spec_augment=spec_augment, frozen_encoder_layers=frozen_encoder_layers, dropout=dropout, lora_rank=lora_rank,
                lora_alpha=2 * lora_rank, eval_every=eval_every, save_every=save_every, log_every=log_every, eval_clips=eval_clips or None,
                language=language, seed=seed))
        dataset, manifest = load_features(features)
        if config.language is None:
            config = dataclasses.replace(config, language=manifest["options"]["language"])
        eval_split = "validation" if "validation" in dataset else "test"
        model_obj, processor = load_whisper(model, dropout=config.dropout)
        if len(processor.tokenizer) != manifest["vocab_size"]:
            raise ValueError(f"{features} was prepared with another tokenizer ({manifest['model']}); prepare it again for {model}")
        if not resume:
            out.mkdir(parents=True, exist_ok=True)
            if (out / "run.json").is_file():
                raise FileExistsError(f"{out} already holds a run; pass --resume {out} to continue it")
            (out / "run.json").write_text(json.dumps({"features": str(features.resolve()), "model": model, "eval_split": eval_split}, indent=2))
        console.print(f"run directory: {out} ({config.mode}, {config.total_steps(len(dataset['train']))} steps, evaluating on {eval_split})")
        result = fine_tune(model_obj, processor, dataset["train"], config, eval_set=dataset[eval_split], run_dir=out, resume=bool(resume))
    except (ValueError, FileNotFoundError, FileExistsError, ModelNotAvailableError, KeyError) as error:
        raise _fail(str(error)) from None
    best = f"best WER {result.best_wer:.2%} at step {result.best_step}" if result.best_wer is not None else "no evaluation"
    console.print(f"finished at step {result.step}: {best}; {result.samples_per_second:.1f} samples/s; model in {out / 'best'}")


@asr_app.command("evaluate")
def asr_evaluate(
    data: Annotated[Path, typer.Argument(help="prepared features (`asr prepare`) or a corpus directory")],
    model: Annotated[str, typer.Option(help="packaged name, model directory (e.g. RUN/best) or hub id")] = "tiny.en",
    split: Annotated[str, typer.Option(help="which split")] = "test",
    language: Annotated[str | None, typer.Option(help="multilingual models: the spoken language [from the features, or detected]")] = None,
    task: Annotated[str, typer.Option(help="transcribe or translate")] = "transcribe",
    batch_size: Annotated[int, typer.Option()] = 16,
    num_beams: Annotated[int, typer.Option()] = 1,
    limit: Annotated[int, typer.Option(help="first N clips only (0: all)")] = 0,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="per-utterance CSV [DATA-SPLIT-wer.csv in the current directory]")] = None,
) -> None:
    """WER and CER (after Whisper's normalisers) with batched generation; a per-utterance CSV."""
    import tempfile

    from fedwhisper.asr.batches import AsrBatches
    from fedwhisper.asr.evaluate import evaluate_batches, speaker_wer, write_rows
    from fedwhisper.asr.prepare import MANIFEST, PrepareOptions, load_features, prepare_features
    from fedwhisper.models.registry import ModelNotAvailableError, load_whisper
    from fedwhisper.transcribe import DecodingOptions

    try:
        with tempfile.TemporaryDirectory(prefix="fedwhisper-eval-") as scratch:
            if not (data / MANIFEST).is_file():  # a corpus: prepare its features for this model first
                prepare_features(data, model, Path(scratch) / "features", PrepareOptions(language=language or "en", task=task, validation_speakers=0))
                features_dir = Path(scratch) / "features"
            else:
                features_dir = data
            dataset, manifest = load_features(features_dir)
            if split not in dataset:
                raise ValueError(f"{data} has no {split} split (it has {', '.join(dataset)})")
            rows = dataset[split].select(range(min(limit, len(dataset[split])))) if limit else dataset[split]
            model_obj, processor = load_whisper(model)
            options = DecodingOptions(language=language or manifest["options"]["language"], task=task, batch_size=batch_size, num_beams=num_beams)
            started = time.perf_counter()
            result = evaluate_batches(model_obj, processor.tokenizer, AsrBatches(rows, model_obj.config.decoder_start_token_id), options, progress=True)
            seconds = time.perf_counter() - started
    except (ValueError, FileNotFoundError, ModelNotAvailableError) as error:
        raise _fail(str(error)) from None
    csv_out = csv_out or Path(f"{data.name}-{split}-wer.csv")
    write_rows(result["rows"], csv_out)
    audio_seconds = float(sum(rows["duration"]))
    table = Table("speaker", "WER", title=f"{model} on {data} ({split})")
    for speaker, wer in speaker_wer(result["rows"], options.language).items():
        table.add_row(escape(speaker or "-"), f"{wer:.2%}")
    console.print(table)
    console.print(f"WER {result['wer']:.2%}  CER {result['cer']:.2%} over {len(rows)} clips; {audio_seconds:.0f} s of audio in "
                  f"{seconds:.1f} s ({audio_seconds / seconds:.1f}x real time); per-utterance CSV {csv_out}")


@asr_app.command("tune")
def asr_tune(
    features: Annotated[Path, typer.Argument(help="prepared features; trials are judged on the validation split")],
    out: Annotated[Path, typer.Option(help="study directory (study.db, trial runs, report.json); run again to resume")],
    model: Annotated[str, typer.Option(help="starting model")] = "tiny.en",
    mode: Annotated[str, typer.Option(help="full, encoder-only, frozen-encoder, decoder-only or lora")] = "lora",
    trials: Annotated[int, typer.Option(help="finished trials the study should hold")] = 10,
    sampler: Annotated[str, typer.Option(help="tpe, random or grid")] = "tpe",
    min_steps: Annotated[int, typer.Option(help="shortest trial")] = 50,
    max_steps: Annotated[int, typer.Option(help="longest trial")] = 150,
    eval_every: Annotated[int, typer.Option(help="steps between the WER reports that pruning judges")] = 25,
    batch_size: Annotated[int, typer.Option()] = 16,
    eval_clips: Annotated[int, typer.Option(help="validation clips per evaluation")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Optuna search over learning rate, warmup, steps, dropout (and LoRA rank), pruned on intermediate WER."""
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.asr.tune import TuneOptions, tune

    try:
        _, manifest = load_features(features)
        base = _train_config(dict(mode=mode, batch_size=batch_size, eval_every=eval_every, log_every=eval_every, eval_clips=eval_clips,
                                  language=manifest["options"]["language"], seed=seed))
        report = tune(model, features, out, base, TuneOptions(trials=trials, sampler=sampler, min_steps=min_steps, max_steps=max_steps, seed=seed))
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    table = Table("trial", "state", "WER", "parameters", "last step", title=report["metric"])
    for trial in report["trials"]:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items())
        table.add_row(str(trial["number"]), trial["state"], f"{trial['wer']:.2%}" if trial["wer"] is not None else "-", escape(params), str(trial["last_step"] or "-"))
    console.print(table)
    if report["best"]:
        console.print(f"best: trial {report['best']['trial']}, WER {report['best']['wer']:.2%}, model {report['best']['model_dir']}")
    console.print(f"report in {out / 'report.json'}")


@app.command()
def transcribe(
    files: Annotated[list[Path], typer.Argument(help="audio files of any length (wav, flac, ogg, mp3)")],
    model: Annotated[str, typer.Option(help="packaged name, model directory (e.g. RUN/best) or hub id")] = "tiny.en",
    language: Annotated[str | None, typer.Option(help="spoken language [detected]")] = None,
    task: Annotated[str, typer.Option(help="transcribe, or translate into English (multilingual models)")] = "transcribe",
    output_format: Annotated[list[str], typer.Option("--format", "-f", help="txt, srt, vtt, json (repeat for several)")] = ["txt"],  # noqa: B006
    out_dir: Annotated[Path, typer.Option(help="where the transcripts go")] = Path("."),
    batch_size: Annotated[int, typer.Option(help="30-s chunks decoded together")] = 8,
    num_beams: Annotated[int, typer.Option()] = 1,
    temperature_fallback: Annotated[bool, typer.Option(help="Whisper's fallback: decode a repetitive or improbable chunk again at "
                                                            "temperatures 0.2 … 1.0")] = True,
) -> None:
    """Transcribe (or translate) audio of any length: 30-s chunks with overlap, segment timestamps, txt/srt/vtt/json."""
    from tqdm.auto import tqdm

    from fedwhisper.audio import AudioError
    from fedwhisper.models.registry import ModelNotAvailableError, load_whisper
    from fedwhisper.transcribe import (OUTPUT_FORMATS, WHISPER_TEMPERATURES, DecodingOptions, LongFormTranscriber, generation_kwargs,
                                      transcribe_file, write_transcript)

    unknown = [f for f in output_format if f not in OUTPUT_FORMATS]
    if unknown:
        raise _fail(f"unknown format {', '.join(unknown)}; choose from {', '.join(OUTPUT_FORMATS)}")
    try:
        model_obj, processor = load_whisper(model)
        options = DecodingOptions(language=language, task=task, batch_size=batch_size, num_beams=num_beams,
                                  temperatures=WHISPER_TEMPERATURES if temperature_fallback else (0.0,))
        generation_kwargs(model_obj, options)  # refuse an impossible language/task before any audio is read
    except (ValueError, ModelNotAvailableError) as error:
        raise _fail(str(error)) from None
    transcriber = LongFormTranscriber(model_obj, processor, batch_size=batch_size)
    failed, audio_seconds, started = 0, 0.0, time.perf_counter()
    for file in tqdm(files, desc="transcribe", unit="file", disable=len(files) < 2):
        try:
            transcript = transcribe_file(transcriber, file, options)
        except AudioError as error:
            console.print(f"[red]skipped[/red] {escape(str(error))}")
            failed += 1
            continue
        audio_seconds += transcript.duration
        written = write_transcript(transcript, out_dir, output_format)
        console.print(f"[bold]{escape(str(file))}[/bold] ({transcript.language}, {transcript.duration:.1f} s): {escape(transcript.text)}")
        console.print(f"  -> {', '.join(str(p) for p in written)}")
    seconds = time.perf_counter() - started
    if audio_seconds:
        console.print(f"{audio_seconds:.1f} s of audio in {seconds:.1f} s ({audio_seconds / seconds:.1f} audio seconds per second)")
    if failed:
        raise typer.Exit(code=1)


@app.command("app")
def web_app(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 7860,
    model: Annotated[list[str] | None, typer.Option(help="models offered (repeat); default: imported models and fine-tuned runs")] = None,
) -> None:
    """A Gradio web app: upload or record audio, pick a model, get the transcript and an English translation."""
    from fedwhisper.serve.app import build_app, discover_models

    choices = model or discover_models()
    if not choices:
        raise _fail("no models found: import one (`fedwhisper models import tiny.en`) or pass --model")
    console.print(f"models: {', '.join(choices)}")
    build_app(choices).launch(server_name=host, server_port=port)
