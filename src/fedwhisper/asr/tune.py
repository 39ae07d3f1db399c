"""Hyper-parameter search with Optuna: each trial is a ``fine_tune`` run judged by validation WER, pruned on its
intermediate WER, the study kept in SQLite so a stopped search resumes where it was."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fedwhisper.errors import FedwhisperError
from fedwhisper.files import write_json

SAMPLERS = ("tpe", "random", "grid")
# The grid sampler's points; TPE and random search the ranges these span (learning rate on a log scale).
GRID = {"learning_rate": [3e-5, 1e-4, 3e-4], "warmup_steps": [0, 20], "dropout": [0.0, 0.1], "lora_rank": [8, 32]}


@dataclass(frozen=True)
class TuneOptions:
    trials: int = 10
    sampler: str = "tpe"
    min_steps: int = 50  # each trial trains between min_steps and max_steps (a searched parameter too)
    max_steps: int = 150
    seed: int = 0

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise FedwhisperError(f"--sampler must be one of {', '.join(SAMPLERS)} (got {self.sampler!r})")
        if not 0 < self.min_steps <= self.max_steps:
            raise FedwhisperError(f"--min-steps must be between 1 and --max-steps ({self.max_steps}) (got {self.min_steps})")


def _space(base, options: TuneOptions) -> dict[str, list]:
    grid = dict(GRID) | {"max_steps": sorted({options.min_steps, options.max_steps})}
    if base.mode != "lora":
        grid.pop("lora_rank")
    return grid


def suggest_config(trial, base, options: TuneOptions):
    """The trial's TrainConfig: ``base`` with the searched parameters drawn by the sampler."""
    space = _space(base, options)
    values = {
        "learning_rate": trial.suggest_float("learning_rate", min(space["learning_rate"]), max(space["learning_rate"]), log=True),
        "warmup_steps": trial.suggest_int("warmup_steps", min(space["warmup_steps"]), max(space["warmup_steps"])),
        "max_steps": trial.suggest_int("max_steps", options.min_steps, options.max_steps),
        "dropout": trial.suggest_float("dropout", min(space["dropout"]), max(space["dropout"])),
    }
    if "lora_rank" in space:
        values["lora_rank"] = trial.suggest_int("lora_rank", min(space["lora_rank"]), max(space["lora_rank"]), log=True)
        values["lora_alpha"] = 2 * values["lora_rank"]
    return replace(base, **values, epochs=None)


def _sampler(options: TuneOptions, base):
    import optuna

    if options.sampler == "grid":
        return optuna.samplers.GridSampler(_space(base, options), seed=options.seed)
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=options.seed)
    return optuna.samplers.TPESampler(seed=options.seed)


def tune(model_ref: str, features: Path, out: Path, base, options: TuneOptions = TuneOptions(), progress: bool = True) -> dict:
    """Run (or continue) the study in ``out/study.db`` until it holds ``options.trials`` finished trials; returns the report."""
    import optuna

    from fedwhisper.asr.prepare import load_features
    from fedwhisper.asr.train import StopTraining, fine_tune
    from fedwhisper.models.registry import load_whisper

    dataset, manifest = load_features(features)
    eval_split = "validation" if "validation" in dataset else "test"
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(
        study_name="fedwhisper-asr",
        storage=storage,
        load_if_exists=True,
        direction="minimize",
        sampler=_sampler(options, base),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)  # left running by a stopped search
    write_json(
        out / "search.json", {"model": model_ref, "features": str(features), "base": asdict(base), "options": asdict(options)}
    )

    def objective(trial) -> float:
        config = suggest_config(trial, base, options)
        model, processor = load_whisper(model_ref, dropout=config.dropout)
        run_dir = out / f"trial-{trial.number:03d}"
        shutil.rmtree(run_dir, ignore_errors=True)

        def report(step: int, row: dict) -> None:
            trial.report(row["eval_wer"], step)
            if trial.should_prune():
                raise StopTraining

        try:
            result = fine_tune(
                model,
                processor,
                dataset["train"],
                replace(config, save_every=config.max_steps),
                eval_set=dataset[eval_split],
                run_dir=run_dir,
                on_evaluate=report,
                progress=progress,
            )
        except StopTraining:
            raise optuna.TrialPruned() from None
        return result.best_wer

    remaining = options.trials - len(
        [t for t in study.trials if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL]
    )
    if remaining > 0:
        study.optimize(objective, n_trials=remaining)
    return _report(study, out, eval_split, manifest)


def _report(study, out: Path, eval_split: str, manifest: dict) -> dict:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    report = {
        "metric": f"WER on {eval_split}",
        "model": manifest.get("model"),
        "best": {
            "trial": best.number,
            "wer": best.value,
            "params": best.params,
            "model_dir": str(out / f"trial-{best.number:03d}" / "best"),
        }
        if best
        else None,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "wer": t.value,
                "params": t.params,
                "last_step": max(t.intermediate_values, default=None),
            }
            for t in study.trials
        ],
    }
    if best:  # keep the best trial's model; the others' would only fill the disk
        for trial in study.trials:
            if trial.number != best.number:
                shutil.rmtree(out / f"trial-{trial.number:03d}" / "best", ignore_errors=True)
    write_json(out / "report.json", report)
    return report
