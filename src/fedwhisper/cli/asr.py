"""`fedwhisper asr`: prepare features, fine-tune, evaluate, tune."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedwhisper.cli.common import console, resumable_run, writable_new_file

app = typer.Typer(help="Speech recognition: prepare features, fine-tune, evaluate, tune hyper-parameters.", no_args_is_help=True)


@app.command("prepare")
def asr_prepare(
    data: Annotated[str, typer.Argument(help="corpus directory (audiofolder, Common Voice) or hub dataset id")],
    out: Annotated[Path, typer.Option(help="where the prepared features go (datasets Arrow)")],
    model: Annotated[
        str, typer.Option(help="whose feature extractor and tokenizer: packaged name, model directory or hub id")
    ] = "tiny.en",
    language: Annotated[str, typer.Option(help="the corpus language (label prompt of multilingual models)")] = "en",
    task: Annotated[str, typer.Option(help="transcribe, or translate (labels are English translations)")] = "transcribe",
    num_proc: Annotated[int, typer.Option(min=1, help="parallel worker processes")] = 2,
    shard_size: Annotated[int, typer.Option(min=1, help="clips per resumable shard")] = 256,
    validation_speakers: Annotated[
        int | None, typer.Option(min=0, help="training speakers held out as validation when the corpus has none [10 %]")
    ] = None,
    test_speakers: Annotated[
        int | None,
        typer.Option(min=1, help="training speakers held out as a test split when the corpus has none (age groups kept) [none]"),
    ] = None,
    keep_untranscribed: Annotated[
        bool, typer.Option(help="keep clips without a transcript (a federation's clients pseudo-label them)")
    ] = False,
    recase: Annotated[bool, typer.Option(help="train all-capital transcripts in sentence case, Whisper's style")] = True,
) -> None:
    """CPU feature pipeline: log-mel features and tokenised labels, saved once; resumable; bad clips dropped and reported."""
    from fedwhisper.asr.prepare import REPORT, PrepareOptions, prepare_features

    options = PrepareOptions(
        language=language,
        task=task,
        num_proc=num_proc,
        shard_size=shard_size,
        validation_speakers=validation_speakers,
        test_speakers=test_speakers,
        keep_untranscribed=keep_untranscribed,
        recase=recase,
    )
    report = prepare_features(data, model, out, options)
    table = Table("split", "kept", "hours", "speakers", "dropped", "why")
    for split, row in report["splits"].items():
        why = ", ".join(f"{count} {reason}" for reason, count in row["dropped_by_reason"].items())
        table.add_row(
            split, str(row["kept"]), f"{row['hours']:.2f}", str(row["speakers"] or "-"), str(row["dropped"]), escape(why or "-")
        )
    console.print(table)
    console.print(f"features in {out}; dropped clips listed in {out / REPORT}")


@app.command("train")
def asr_train(
    features: Annotated[Path | None, typer.Argument(help="prepared features (`asr prepare`); not needed with --resume")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory: checkpoints, metrics.csv, curves.png, best/")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run directory exactly where it stopped")] = None,
    model: Annotated[str, typer.Option(help="starting model: packaged name, model directory or hub id")] = "tiny.en",
    mode: Annotated[str, typer.Option(help="full, encoder-only, frozen-encoder, decoder-only or lora")] = "decoder-only",
    learning_rate: Annotated[float, typer.Option()] = 1e-4,
    warmup_steps: Annotated[int, typer.Option(min=0)] = 20,
    max_steps: Annotated[int, typer.Option(min=1, help="optimizer steps")] = 300,
    epochs: Annotated[float | None, typer.Option(min=0.0, help="passes over the training split (instead of --max-steps)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    gradient_accumulation: Annotated[int, typer.Option(min=1)] = 1,
    spec_augment: Annotated[bool, typer.Option(help="SpecAugment masks on the log-mel (runs the encoder every step)")] = False,
    window: Annotated[
        str, typer.Option(help="encoder window: full (Whisper's 30 s) or clip (the clip's length, 2-s buckets)")
    ] = "full",
    frozen_encoder_layers: Annotated[
        int, typer.Option(min=0, help="full mode: bottom encoder blocks kept fixed, their outputs computed once")
    ] = 0,
    dropout: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    lora_rank: Annotated[int, typer.Option(min=1)] = 32,
    eval_every: Annotated[int, typer.Option(min=1, help="steps between evaluations (WER, CER)")] = 100,
    save_every: Annotated[int, typer.Option(min=1, help="steps between checkpoints")] = 100,
    log_every: Annotated[int, typer.Option(min=1, help="steps between training-loss rows")] = 10,
    eval_clips: Annotated[int, typer.Option(min=0, help="evaluation clips (0: the whole split)")] = 200,
    language: Annotated[str | None, typer.Option(help="[the language the features were prepared for]")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fine-tune Whisper on prepared features; evaluates, checkpoints, keeps the best model by WER, resumes exactly."""
    from fedwhisper.asr.train import TrainConfig, train_run
    from fedwhisper.runs import runs_root

    config = (
        None
        if resume
        else TrainConfig(
            mode=mode,
            learning_rate=learning_rate,
            warmup_steps=warmup_steps,
            max_steps=max_steps,
            epochs=epochs,
            batch_size=batch_size,
            gradient_accumulation=gradient_accumulation,
            spec_augment=spec_augment,
            frozen_encoder_layers=frozen_encoder_layers,
            dropout=dropout,
            window=window,
            lora_rank=lora_rank,
            lora_alpha=2 * lora_rank,
            eval_every=eval_every,
            save_every=save_every,
            log_every=log_every,
            eval_clips=eval_clips or None,
            language=language,
            seed=seed,
        )
    )
    out = resume or out or runs_root() / f"asr-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"run directory: {out}")
    result = train_run(out, features=features, model=model, config=config, resume=bool(resume))
    best = f"best WER {result.best_wer:.2%} at step {result.best_step}" if result.best_wer is not None else "no evaluation"
    console.print(f"finished at step {result.step}: {best}; {result.samples_per_second:.1f} samples/s; model in {out / 'best'}")


def _print_federated_round(row: dict) -> None:
    if "simulated_round_seconds" in row or "wer" not in row:  # device tiers
        tiers = "  ".join(f"{key[4:]} {value:.2%}" for key, value in row.items() if key.startswith("wer/"))
        line = f"round {row['round']:>3}: WER {tiers or 'n/a'}" + (f"  (global {row['wer']:.2%})" if "wer" in row else "")
        if "clients_trained" in row:
            late = len(row["stragglers"])
            line += (
                f"  ({row['clients_trained']} clients trained{f', {late} stragglers dropped' if late else ''}; "
                f"{sum(row['bytes_up']) / 1e6:.2f} MB up in all; {row['simulated_round_seconds']:.0f} s on the devices)"
            )
        console.print(line)
        return
    line = f"round {row['round']:>3}: WER {row['wer']:.2%}  CER {row['cer']:.2%}"
    if "clients_trained" in row:
        up = sum(row["bytes_up"]) / max(len(row["bytes_up"]), 1)
        line += (
            f"  ({row['clients_trained']} clients trained, {row['clients_skipped']} could not"
            f"{', ' + str(row['clients_failed']) + ' failed' if row['clients_failed'] else ''}; "
            f"{row['bytes_down_per_client'] / 1e6:.2f} MB down, {up / 1e6:.2f} MB up per client; {row['seconds']:.1f} s)"
        )
    console.print(line)


@app.command("federate")
def asr_federate(
    features: Annotated[
        Path | None, typer.Argument(help="prepared features (`asr prepare`); clients are groups of training speakers")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="metrics, checkpoints of the trained tensors, best/ (a plain model)")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="continue this run directory from its last saved round")] = None,
    model: Annotated[str | None, typer.Option(help="starting model: packaged name, model directory or hub id [tiny.en]")] = None,
    mode: Annotated[str | None, typer.Option(help="what trains and travels: lora, encoder-top or full [lora]")] = None,
    lora_rank: Annotated[int | None, typer.Option(min=1, help="[32]")] = None,
    lora_alpha: Annotated[int | None, typer.Option(min=1, help="[64]")] = None,
    lora_modules: Annotated[
        str | None, typer.Option(help="adapted projections in every encoder and decoder block [q_proj,v_proj,fc1,fc2]")
    ] = None,
    lora_stacks: Annotated[
        str | None, typer.Option(help="stacks with adapters: encoder (acoustics), decoder (language) or both [encoder,decoder]")
    ] = None,
    lora_freeze_a: Annotated[
        bool | None, typer.Option(help="lora: train and send B only, A frozen at its seeded start (FFA-LoRA) [no]")
    ] = None,
    top_blocks: Annotated[int | None, typer.Option(min=1, help="encoder-top: trainable top encoder blocks [2]")] = None,
    window: Annotated[str | None, typer.Option(help="encoder window in training and evaluation: clip or full [clip]")] = None,
    num_clients: Annotated[int | None, typer.Option(min=1, help="speaker groups [20]")] = None,
    clients_per_round: Annotated[int | None, typer.Option(min=1, help="[5]")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="federated rounds in all [10]")] = None,
    local_steps: Annotated[int | None, typer.Option(min=1, help="optimizer steps per client per round [10]")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="[8]")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="[0.002]")] = None,
    optimizer: Annotated[str | None, typer.Option(help="a client's optimizer: adamw or sgd [adamw]")] = None,
    lr_schedule: Annotated[
        str | None, typer.Option(help="clients' learning rate over the rounds: constant or cosine (to a tenth) [cosine]")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="server strategy (Flower's): fedavg, fedavgm, fedadam or fedprox [fedavg]")
    ] = None,
    server_learning_rate: Annotated[float | None, typer.Option(help="fedavgm: server step [1.0]")] = None,
    server_momentum: Annotated[float | None, typer.Option(help="fedavgm: server momentum [0.9]")] = None,
    fedadam_eta: Annotated[float | None, typer.Option(help="fedadam: server Adam step size [0.01]")] = None,
    proximal_mu: Annotated[float | None, typer.Option(help="fedprox: proximal term weight [0.01]")] = None,
    eval_clips: Annotated[int | None, typer.Option(min=0, help="validation clips decoded every round (0: all) [100]")] = None,
    interpolation: Annotated[
        float | None,
        typer.Option(help="served model: pretrained + this x the federated update (WiSE-FT; 1: as trained) [0.5]"),
    ] = None,
    pseudo_labels: Annotated[
        str | None,
        typer.Option(help="clips without a transcript: on (labelled on the device by the received model) or off [on]"),
    ] = None,
    pseudo_min_log_prob: Annotated[
        float | None, typer.Option(help="a pseudo-label is kept if its mean token log-prob is at least this [-0.3]")
    ] = None,
    own_test_share: Annotated[
        float | None,
        typer.Option(help="share of each client speaker's clips kept on the device to test a personal model [0.0]"),
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="encoder-output caches [$FEDWHISPER_HOME/cache/asr-federated]")] = None,
    seed: Annotated[int | None, typer.Option(help="[0]")] = None,
    algorithm: Annotated[
        str | None,
        typer.Option(
            help="fedavg (one model for all: --mode, --strategy), or with device tiers: "
            "fedkad, fedmd, fedavg-uniform (the weakest tier's model for all), "
            "fedavg-large (full-size model; devices that cannot train it are left out) [fedavg]"
        ),
    ] = None,
    tiers: Annotated[
        str | None, typer.Option(help="device tier:share of the clients (pi, phone, laptop) [pi:0.4,phone:0.4,laptop:0.2]")
    ] = None,
    tier_costs: Annotated[
        str | None, typer.Option(help="seconds per training sample by decoder layers, e.g. 1:0.1,4:0.2 [measured]")
    ] = None,
    proxy: Annotated[
        Path | None,
        typer.Option(help="fedkad/fedmd: prepared features of the server's public corpus (voices and sentences no client has)"),
    ] = None,
    upper_blocks: Annotated[
        int | None, typer.Option(min=1, help="fedkad: top decoder blocks a client trains and sends [1]")
    ] = None,
    server_steps: Annotated[
        int | None, typer.Option(min=1, help="fedkad: server distillation steps a round, per model [10]")
    ] = None,
    init_steps: Annotated[
        int | None, typer.Option(min=0, help="with --proxy: the smaller tiers' models distilled from the teacher first [200]")
    ] = None,
    kd_learning_rate: Annotated[
        float | None, typer.Option(help="fedkad distillation / fedmd digest learning rate [0.0005]")
    ] = None,
    public_clips: Annotated[int | None, typer.Option(min=1, help="fedmd: public clips a round [32]")] = None,
    top_k: Annotated[int | None, typer.Option(min=1, help="fedmd: logits sent per token [10]")] = None,
    verbose: Annotated[bool, typer.Option(help="show Flower's and Ray's logs")] = False,
) -> None:
    """Federated fine-tuning on Flower's simulation engine: FedAvg of LoRA adapters (or top encoder blocks, or the model)
    over speaker-grouped clients, WER on held-out speakers every round, the best global model in RUN/best. With
    --algorithm fedkad, fedmd, fedavg-uniform or fedavg-large, clients are devices of different tiers (docs/FEDKAD.md)."""
    from fedwhisper.asr.federated import AsrFederationOptions
    from fedwhisper.fl.asr_app import simulate

    run_dir, config = resumable_run(
        "asr-fed",
        resume,
        run_dir,
        "features",
        "FEATURES",
        features=str(features.resolve()) if features else None,
        model=model,
        mode=mode,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_modules=lora_modules,
        lora_stacks=lora_stacks,
        lora_freeze_a=lora_freeze_a,
        top_blocks=top_blocks,
        window=window,
        num_clients=num_clients,
        clients_per_round=clients_per_round,
        rounds=rounds,
        local_steps=local_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        strategy=strategy,
        server_learning_rate=server_learning_rate,
        server_momentum=server_momentum,
        fedadam_eta=fedadam_eta,
        proximal_mu=proximal_mu,
        eval_clips=eval_clips,
        interpolation=interpolation,
        pseudo_labels=pseudo_labels,
        pseudo_min_log_prob=pseudo_min_log_prob,
        own_test_share=own_test_share,
        cache_dir=str(cache_dir) if cache_dir else None,
        seed=seed,
        algorithm=algorithm,
        tiers=tiers,
        tier_costs=tier_costs,
        proxy=str(proxy.resolve()) if proxy else None,
        upper_blocks=upper_blocks,
        init_steps=init_steps,
        server_steps=server_steps,
        kd_learning_rate=kd_learning_rate,
        public_clips=public_clips,
        top_k=top_k,
    )
    options = AsrFederationOptions.from_config(config)
    run = simulate(options, run_dir, resume=bool(resume), on_round=_print_federated_round, verbose=verbose)
    if options.algorithm != "fedavg":
        tested = json.loads((run.path / "test.json").read_text()) if (run.path / "test.json").is_file() else {}
        for group, result in tested.items():
            console.print(
                f"{group} model ({', '.join(result['tiers'])}): test WER {result['wer']:.2%} over {result['clips']} held-out "
                "clips"
            )
        console.print(
            f"models in {run.path / 'models'}" if tested else f"fedmd: each client keeps its own model; metrics in {run.path}"
        )
        return
    test = json.loads((run.path / "test.json").read_text())
    tested = f"; test WER {test['wer']:.2%} over {test['clips']} held-out clips" if "wer" in test else ""
    console.print(
        f"best validation WER {test['validation_wer']:.2%} at round {test['round']}{tested}; model in {run_dir / 'best'}"
    )


@app.command("personalise")
def asr_personalise(
    run_dir: Annotated[Path, typer.Argument(help="a finished `asr federate --own-test-share S` run")],
    client: Annotated[int, typer.Option(min=0, help="the client (partition) whose device personalises")],
    steps: Annotated[int, typer.Option(min=1, help="optimizer steps on the device's own clips")] = 20,
    learning_rate: Annotated[float, typer.Option(help="from the global adapters")] = 5e-5,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
) -> None:
    """A device's personal model: the best round's global adapters fine-tuned on its own clips, kept (RUN/personal/)
    only if it beats the global model on the clips the device kept for testing."""
    from fedwhisper.asr.personal import PersonalOptions, personalise_run

    metrics = personalise_run(run_dir, client, PersonalOptions(steps=steps, learning_rate=learning_rate, batch_size=batch_size))
    kept = run_dir / "personal" / f"client-{client:03d}"
    verdict = f"kept in {kept}" if metrics["kept"] else "not better: the device keeps the global model"
    console.print(
        f"client {client}: WER on its own {metrics['own_test_clips']} test clips: global {metrics['global_wer']:.2%}, "
        f"personal {metrics['personal_wer']:.2%} ({verdict})"
    )


@app.command("evaluate")
def asr_evaluate(
    data: Annotated[Path, typer.Argument(help="prepared features (`asr prepare`) or a corpus directory")],
    model: Annotated[str, typer.Option(help="packaged name, model directory (e.g. RUN/best) or hub id")] = "tiny.en",
    split: Annotated[str, typer.Option(help="which split")] = "test",
    language: Annotated[
        str | None, typer.Option(help="multilingual models: the spoken language [from the features, or detected]")
    ] = None,
    task: Annotated[str, typer.Option(help="transcribe or translate")] = "transcribe",
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    num_beams: Annotated[int, typer.Option(min=1)] = 1,
    limit: Annotated[int, typer.Option(min=0, help="first N clips only (0: all)")] = 0,
    window: Annotated[
        str | None,
        typer.Option(
            help="encoder window: full (Whisper's 30 s) or clip (the clip's length) [the one "
            "the model was fine-tuned on; full for others]"
        ),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="transformers, or ctranslate2 (faster-whisper on the model's CTranslate2 export)")
    ] = "transformers",
    assistant: Annotated[
        str | None,
        typer.Option(
            help="a student of --model drafting tokens that --model checks (speculative "
            "decoding: same transcripts, one clip at a time)"
        ),
    ] = None,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="per-utterance CSV [DATA-SPLIT-wer.csv in the current directory]")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing CSV")] = False,
) -> None:
    """WER and CER (after Whisper's normalisers) with batched generation; a per-utterance CSV."""
    from fedwhisper.asr.evaluate import evaluate_data, speaker_wer, write_rows
    from fedwhisper.transcribe import DecodingOptions

    options = DecodingOptions(language=language, task=task, batch_size=batch_size, num_beams=num_beams)
    csv_out = csv_out or Path(f"{data.name}-{split}-wer.csv")
    writable_new_file(csv_out, overwrite)  # before the evaluation, not after it
    result = evaluate_data(data, model, split, options, limit, window=window, backend=backend, assistant=assistant)
    write_rows(result["rows"], csv_out)
    table = Table("speaker", "WER", title=f"{model} on {data} ({split})")
    for speaker, wer in speaker_wer(result["rows"], result["language"]).items():
        table.add_row(escape(speaker or "-"), f"{wer:.2%}")
    console.print(table)
    for column, values in result["groups"].items():
        console.print(f"WER by {column}: " + ", ".join(f"{value or '?'} {wer:.2%}" for value, wer in values.items()))
    console.print(
        f"WER {result['wer']:.2%}  CER {result['cer']:.2%} over {result['clips']} clips; {result['audio_seconds']:.0f} s of "
        "audio "
        f"in {result['seconds']:.1f} s ({result['audio_seconds'] / result['seconds']:.1f}x real time, {result['window']} "
        "windows, "
        f"{backend}); per-utterance CSV {csv_out}"
    )


@app.command("tune")
def asr_tune(
    features: Annotated[Path, typer.Argument(help="prepared features; trials are judged on the validation split")],
    out: Annotated[Path, typer.Option(help="study directory (study.db, trial runs, report.json); run again to resume")],
    model: Annotated[str, typer.Option(help="starting model")] = "tiny.en",
    mode: Annotated[str, typer.Option(help="full, encoder-only, frozen-encoder, decoder-only or lora")] = "lora",
    trials: Annotated[int, typer.Option(min=1, help="finished trials the study should hold")] = 10,
    sampler: Annotated[str, typer.Option(help="tpe, random or grid")] = "tpe",
    min_steps: Annotated[int, typer.Option(min=1, help="shortest trial")] = 50,
    max_steps: Annotated[int, typer.Option(min=1, help="longest trial")] = 150,
    eval_every: Annotated[int, typer.Option(min=1, help="steps between the WER reports that pruning judges")] = 25,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    eval_clips: Annotated[int, typer.Option(min=0, help="validation clips per evaluation")] = 100,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Optuna search over learning rate, warmup, steps, dropout (and LoRA rank), pruned on intermediate WER."""
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.asr.train import TrainConfig
    from fedwhisper.asr.tune import TuneOptions, tune

    _, manifest = load_features(features)
    base = TrainConfig.from_dict(
        dict(
            mode=mode,
            batch_size=batch_size,
            eval_every=eval_every,
            log_every=eval_every,
            eval_clips=eval_clips,
            language=manifest["options"]["language"],
            seed=seed,
        )
    )
    report = tune(
        model,
        features,
        out,
        base,
        TuneOptions(trials=trials, sampler=sampler, min_steps=min_steps, max_steps=max_steps, seed=seed),
    )
    table = Table("trial", "state", "WER", "parameters", "last step", title=report["metric"])
    for trial in report["trials"]:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items())
        table.add_row(
            str(trial["number"]),
            trial["state"],
            f"{trial['wer']:.2%}" if trial["wer"] is not None else "-",
            escape(params),
            str(trial["last_step"] or "-"),
        )
    console.print(table)
    if report["best"]:
        console.print(
            f"best: trial {report['best']['trial']}, WER {report['best']['wer']:.2%}, model {report['best']['model_dir']}"
        )
    console.print(f"report in {out / 'report.json'}")
