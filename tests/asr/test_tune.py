import json

import optuna
from typer.testing import CliRunner

from fedwhisper.asr.train import TrainConfig
from fedwhisper.asr.tune import TuneOptions, tune
from fedwhisper.cli import app


def test_a_study_runs_trials_reports_the_best_and_resumes(tiny_asr_model, tiny_features, tmp_path):
    base = TrainConfig(mode="lora", batch_size=4, eval_every=2, log_every=2, eval_clips=4, max_new_tokens=8)
    options = TuneOptions(trials=2, sampler="random", min_steps=2, max_steps=4)
    report = tune(str(tiny_asr_model), tiny_features, tmp_path / "study", base, options, progress=False)
    assert len(report["trials"]) == 2 and report["best"] is not None
    assert set(report["best"]["params"]) == {"learning_rate", "warmup_steps", "max_steps", "dropout", "lora_rank"}
    assert (tmp_path / "study" / f"trial-{report['best']['trial']:03d}" / "best" / "config.json").is_file()
    # asking for one more trial continues the stored study instead of starting again
    again = tune(
        str(tiny_asr_model),
        tiny_features,
        tmp_path / "study",
        base,
        TuneOptions(trials=3, sampler="random", min_steps=2, max_steps=4),
        progress=False,
    )
    assert [t["number"] for t in again["trials"]] == [0, 1, 2]
    study = optuna.load_study(study_name="fedwhisper-asr", storage=f"sqlite:///{tmp_path / 'study' / 'study.db'}")
    assert len(study.trials) == 3


def test_grid_search_from_the_command_line(tiny_asr_model, tiny_features, tmp_path):
    out = tmp_path / "grid"
    result = CliRunner().invoke(
        app,
        [
            "asr",
            "tune",
            str(tiny_features),
            "--out",
            str(out),
            "--model",
            str(tiny_asr_model),
            "--mode",
            "decoder-only",
            "--trials",
            "2",
            "--sampler",
            "grid",
            "--min-steps",
            "2",
            "--max-steps",
            "2",
            "--eval-every",
            "2",
            "--batch-size",
            "4",
            "--eval-clips",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    grid_rates = {3e-5, 1e-4, 3e-4}
    assert all(t["params"]["learning_rate"] in grid_rates for t in report["trials"])
    assert "best: trial" in result.output
