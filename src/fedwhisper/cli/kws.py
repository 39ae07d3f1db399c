"""`fedwhisper kws`: federated keyword spotting."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedwhisper.cli.common import console, given_options, resumable_run
from fedwhisper.errors import FedwhisperError

app = typer.Typer(
    help="Keyword spotting: a frozen Whisper encoder plus a small head, federated with Flower.", no_args_is_help=True
)


def print_round(row: dict) -> None:
    validation, test = row.get("validation_accuracy", float("nan")), row.get("test_accuracy", float("nan"))
    line = f"round {row['round']:>3}: validation {validation:.2%}  test {test:.2%}"
    if "clients_trained" in row:
        line += f"  ({row['clients_trained']} clients trained, {row.get('clients_skipped', 0)} too small"
        if row.get("clients_failed"):
            line += f", [red]{row['clients_failed']} failed[/red]"
        if row.get("clients_rejected"):
            line += f", [red]{row['clients_rejected']} updates rejected[/red]"
        if "dp_epsilon" in row:
            line += f", DP epsilon {row['dp_epsilon']:.2f}"
        if row.get("clips_skipped"):
            line += f", {row['clips_skipped']} clips skipped (do not decode)"
        line += f", {row['seconds']:.1f} s)"
    console.print(line)


def _flower_line(verbose: bool):
    """What a deployed run's streamed log shows: every line with --verbose, else rounds, warnings and errors."""

    def show(line: str) -> None:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # Flower colours its log levels
        if verbose or "[ROUND" in line or "ERROR" in line:
            console.print(escape(line), highlight=False)

    return show


@app.command("federate")
def kws_federate(
    corpus: Annotated[Path | None, typer.Argument(help="Speech Commands-layout corpus (not needed with --resume)")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="where metrics, plot and head checkpoints go")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run directory from its last saved round")] = None,
    model: Annotated[
        str | None, typer.Option(help="frozen encoder: tiny.en, base, a model directory or hub id [tiny.en]")
    ] = None,
    window_seconds: Annotated[
        float | None, typer.Option(help="encoder window (30: an ablation with Whisper's padding) [1.0]")
    ] = None,
    keywords: Annotated[str | None, typer.Option(help="comma-separated keywords [the 10 commands]")] = None,
    head: Annotated[
        str | None, typer.Option(help="pooled (ours) or anchor (the Flower example's Conv1d layout) [pooled]")
    ] = None,
    num_clients: Annotated[int | None, typer.Option(help="speaker groups (offices) [100]")] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="clients sampled each round [10]")] = None,
    rounds: Annotated[int | None, typer.Option(help="federated rounds in all [10]")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="epochs each client trains per round [5]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[16]")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="[0.002]")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd [adam]")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="encoder-output caches [$FEDWHISPER_HOME/cache/kws]")] = None,
    seed: Annotated[int | None, typer.Option(help="[0]")] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="fedwhisper, or flower-example: Flower's Whisper example's client "
            "(5-speaker clients, 5 % per round, 30-s window, Adam, batch 8, 1 epoch) [fedwhisper]"
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="aggregation: fedavg, or robust to malicious clients: median, trimmed-mean, krum, multikrum, bulyan [fedavg]"
        ),
    ] = None,
    assumed_malicious: Annotated[int | None, typer.Option(help="attackers per round the robust rules are set for [2]")] = None,
    norm_limit: Annotated[
        float | None, typer.Option(help="reject updates longer than this many times the round's median (0: off) [10]")
    ] = None,
    dp_noise_multiplier: Annotated[
        float | None,
        typer.Option(
            help="central differential privacy: Gaussian noise on the mean, as a multiple of the clipping norm (0: off) [0]"
        ),
    ] = None,
    dp_clip: Annotated[float | None, typer.Option(help="clients clip their update to this L2 norm (with DP) [1.0]")] = None,
    attack: Annotated[str | None, typer.Option(help="simulate attackers: sign-flip, scale, random, label-flip [none]")] = None,
    attackers: Annotated[int | None, typer.Option(help="clients partition-00000 .. N-1 attack [0]")] = None,
    min_clients: Annotated[
        int | None, typer.Option(help="a round goes on with the clients still connected if at least this many [1]")
    ] = None,
    round_timeout: Annotated[float | None, typer.Option(help="seconds a round waits for its replies [3600]")] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower's and Ray's logs")] = False,
    secagg: Annotated[
        bool,
        typer.Option(
            help="secure aggregation (Flower's SecAgg+): the server sees only masked updates; "
            "every client takes part in every round; FedAvg only"
        ),
    ] = False,
    deploy: Annotated[
        bool,
        typer.Option(
            help="run on a Flower deployment on this machine: a SuperLink and one SuperNode per "
            "client as processes, TLS and SuperNode authentication, each node holding only "
            "its client's clips (RUN_DIR/deployment)"
        ),
    ] = False,
) -> None:
    """Federated training of the head: FedAvg over speaker-grouped clients in Flower's simulation engine (or --deploy)."""
    from fedwhisper.fl.kws_app import deploy as deploy_run
    from fedwhisper.fl.kws_app import simulate
    from fedwhisper.kws.task import KwsOptions

    run_dir, config = resumable_run(
        "kws",
        resume,
        run_dir,
        "corpus",
        "a CORPUS",
        corpus=str(corpus.resolve()) if corpus else None,
        model=model,
        window_seconds=window_seconds,
        keywords=keywords,
        head=head,
        num_clients=num_clients,
        clients_per_round=clients_per_round,
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=optimizer,
        cache_dir=str(cache_dir) if cache_dir else None,
        seed=seed,
        recipe=recipe,
        strategy=strategy,
        assumed_malicious=assumed_malicious,
        norm_limit=norm_limit,
        dp_noise_multiplier=dp_noise_multiplier,
        dp_clip=dp_clip,
        attack=attack,
        attackers=attackers,
        min_clients=min_clients,
        round_timeout=round_timeout,
    )
    options = KwsOptions.from_config(config)
    if secagg:
        from fedwhisper.fl.secure import simulate_secure

        if options.strategy != "fedavg" or options.dp_noise_multiplier or deploy or resume:
            raise FedwhisperError(
                "--secagg runs FedAvg in the simulation engine, without --strategy, --dp-noise-multiplier, --deploy or --resume"
            )
        run = simulate_secure(options, run_dir)
        for row in run.rows:
            print_round(row)
    elif deploy:
        run = deploy_run(options, run_dir, resume=bool(resume), on_line=_flower_line(verbose))
        for row in run.rows:
            print_round(row)
    else:
        run = simulate(options, run_dir, resume=bool(resume), on_round=print_round, verbose=verbose)
    final = run.rows[-1]
    console.print(
        f"final held-out accuracy after round {final['round']}: test {final['test_accuracy']:.2%}, "
        f"validation {final['validation_accuracy']:.2%}; plot {run_dir / 'accuracy.png'}"
    )


@app.command("train")
def kws_train(
    corpus: Annotated[Path, typer.Argument(help="Speech Commands-layout corpus")],
    run_dir: Annotated[Path | None, typer.Option(help="output directory")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="passes over all training clips")] = 10,
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
    from fedwhisper.runs import runs_root

    options = KwsOptions.from_config(
        given_options(
            corpus=str(corpus.resolve()),
            model=model,
            window_seconds=window_seconds,
            keywords=keywords,
            head=head,
            batch_size=batch_size,
            learning_rate=learning_rate,
            optimizer=optimizer,
            seed=seed,
            local_epochs=1,
        )
    )
    run_dir = run_dir or runs_root() / f"kws-central-{time.strftime('%Y%m%d-%H%M%S')}"
    train_centralized(options, run_dir, epochs, on_epoch=print_round)
    console.print(f"head and metrics in {run_dir}")


@app.command("evaluate")
def kws_evaluate(
    head_path: Annotated[Path, typer.Argument(metavar="HEAD", help="a head checkpoint (head.safetensors of a run)")],
    corpus: Annotated[Path, typer.Argument(help="Speech Commands-layout corpus")],
    split: Annotated[str, typer.Option(help="train, validation or test")] = "test",
) -> None:
    """Accuracy of a saved head on a corpus split, overall and per class."""
    from fedwhisper.kws.task import evaluate_saved_head

    result = evaluate_saved_head(head_path, corpus, split)
    table = Table("class", "clips", "accuracy", title=f"{head_path} on {corpus} ({split})")
    for row in result["per_class"]:
        table.add_row(escape(row["class"]), str(row["clips"]), f"{row['accuracy']:.2%}")
    console.print(table)
    console.print(f"accuracy {result['accuracy']:.2%} over {result['clips']} clips")
    if result["absent_classes"]:
        console.print(f"not in this {split} split, so not scored: {', '.join(result['absent_classes'])}")
    if result["unscored_clips"]:
        words = ", ".join(result["unscored_words"])
        console.print(f"{result['unscored_clips']} clips of words the head has no class for (no _unknown_): {words}")
    if result["skipped"]:
        raise FedwhisperError(
            f"{result['skipped']} clips skipped because they do not decode (named above); "
            f"the accuracy is over the other {result['clips']}"
        )


@app.command("predict")
def kws_predict(
    head_path: Annotated[Path, typer.Argument(metavar="HEAD", help="a head checkpoint")],
    files: Annotated[list[Path], typer.Argument(help="audio files (any format, rate and channels)")],
    top: Annotated[int, typer.Option(min=1, help="classes shown per file")] = 3,
) -> None:
    """Label and class probabilities for each audio file; unreadable files are reported and skipped."""
    from fedwhisper.audio import AudioError, load_audio
    from fedwhisper.kws.model import load_head
    from fedwhisper.kws.task import head_encoder_and_corpus
    from fedwhisper.kws.train import predict_proba

    head, meta = load_head(head_path)
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
        table.add_row(
            escape(str(file)),
            escape(meta["classes"][order[0]]),
            escape(", ".join(f"{meta['classes'][i]} {probabilities[i]:.3f}" for i in order)),
        )
    console.print(table)
    if failed:
        raise typer.Exit(code=1)
