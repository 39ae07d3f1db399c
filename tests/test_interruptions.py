"""Ctrl-C (SIGINT) and kill (SIGTERM) during the three long jobs: the process ends within 10 s with exit code 130 and
one line saying what was kept and how to continue, and continuing works: from the last saved round, checkpoint or
transcript block, falling back past a damaged checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedwhisper.asr.run import TrainingRun
from fedwhisper.asr.train import TrainConfig, apply_mode, make_optimizer
from fedwhisper.audio import SAMPLE_RATE, load_audio, write_audio
from fedwhisper.cli import app
from fedwhisper.models.registry import load_whisper

runner = CliRunner(env={"COLUMNS": "250"})
EXIT_WITHIN = 10.0


def run_until(args: list[str], ready, signum: int, session_home: Path) -> tuple[int, str, float]:
    """Start the CLI as a background shell job starts it (SIGINT ignored), send ``signum`` once ``ready()`` holds;
    (exit code, output, seconds from the signal to the exit)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fedwhisper", *args],
        env=os.environ | {"FEDWHISPER_HOME": str(session_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, f"ended before it could be interrupted:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "never became ready"
        time.sleep(0.05)
    process.send_signal(signum)
    sent = time.monotonic()
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the process did not end within 60 s of the signal; its output:\n{process.communicate()[0][-4000:]}")
    seconds = time.monotonic() - sent
    print(f"{args[0]} {args[1]}: exit code {process.returncode} {seconds:.2f} s after signal {signal.Signals(signum).name}")
    return process.returncode, output, seconds


def error_line(output: str) -> str:
    lines = [line[line.index("error:") :] for line in output.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.mark.flower
def test_kws_federate_stops_at_once_and_resumes_past_a_damaged_checkpoint(
    tiny_kws_corpus, tiny_whisper_dir, tmp_path, session_home
):
    run = tmp_path / "run"
    args = [
        "kws",
        "federate",
        str(tiny_kws_corpus),
        "--model",
        str(tiny_whisper_dir),
        "--num-clients",
        "3",
        "--clients-per-round",
        "2",
        "--rounds",
        "500",
        "--local-epochs",
        "5",
        "--run-dir",
        str(run),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    # SIGTERM: Ray replaces the process's handler when it starts; the federation must put the CLI's back
    code, output, seconds = run_until(args, lambda: (run / "head-round-002.safetensors").exists(), signal.SIGTERM, session_home)
    assert code == 130 and seconds < EXIT_WITHIN, (code, seconds, output)
    assert f"continue with `fedwhisper kws federate --resume {run}`" in error_line(output)
    before = json.loads((run / "metrics.json").read_text())
    saved = before[-1]["round"]
    assert 2 <= saved < 500

    (run / f"head-round-{saved:03d}.safetensors").write_bytes(b"damaged")  # e.g. a disk filled while it was written
    resumed = runner.invoke(app, ["kws", "federate", "--resume", str(run), "--rounds", str(saved + 1)])
    assert resumed.exit_code == 0, resumed.output
    assert f"head-round-{saved:03d}.safetensors: not a fedwhisper checkpoint" in resumed.output  # named, then passed over
    after = json.loads((run / "metrics.json").read_text())
    assert [row["round"] for row in after] == list(range(saved + 2))  # the damaged round ran again; every round once
    assert after[:saved] == before[:saved]  # the rounds before it are kept as they were


def test_asr_train_stops_at_once_and_resumes_past_a_damaged_checkpoint(tiny_asr_model, tiny_features, tmp_path, session_home):
    out = tmp_path / "run"
    args = [
        "asr",
        "train",
        str(tiny_features),
        "--model",
        str(tiny_asr_model),
        "--out",
        str(out),
        "--max-steps",
        "400",
        "--batch-size",
        "4",
        "--eval-every",
        "200",
        "--save-every",
        "2",
        "--log-every",
        "1",
        "--eval-clips",
        "4",
        "--mode",
        "full",
    ]
    code, output, seconds = run_until(args, lambda: (out / "checkpoints" / "step-000004").is_dir(), signal.SIGINT, session_home)
    assert code == 130 and seconds < EXIT_WITHIN, (code, seconds, output)
    assert f"continue with `fedwhisper asr train --resume {out}`" in error_line(output)

    checkpoints = sorted((out / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 2  # the two newest are kept
    (checkpoints[-1] / "trainable.safetensors").write_bytes(b"damaged")
    older = int(checkpoints[-2].name.split("-")[1])
    # Restoring is what a resume does first; the 400 steps after it are not needed to check that it picks the older one.
    config = TrainConfig.from_dict(json.loads((out / "options.json").read_text())["config"])
    model = apply_mode(load_whisper(str(tiny_asr_model))[0], config)
    optimizer, scheduler = make_optimizer(model, config, config.max_steps)
    state = TrainingRun(out).begin({"config": asdict(config)}, True, model, optimizer, scheduler)
    assert state["step"] == older
    assert max(row["step"] for row in json.loads((out / "metrics.json").read_text())) == older


@pytest.fixture(scope="module")
def long_talk(tiny_asr_model, tiny_asr_corpus, tmp_path_factory) -> tuple[list[str], Path, dict]:
    """40 s of speech (2 blocks of 20 s at --batch-size 1), the transcribe arguments, and its uninterrupted transcript."""
    folder = tmp_path_factory.mktemp("talk")
    speech = np.concatenate([load_audio(path) for path in sorted(tiny_asr_corpus.glob("train/**/*.wav"))[:20]])
    write_audio(folder / "talk.wav", speech[: 40 * SAMPLE_RATE])
    args = [
        "transcribe",
        str(folder / "talk.wav"),
        "--model",
        str(tiny_asr_model),
        "--batch-size",
        "1",
        "--no-temperature-fallback",
        "-f",
        "json",
    ]
    assert runner.invoke(app, [*args, "--out-dir", str(folder / "reference")]).exit_code == 0
    return args, folder, json.loads((folder / "reference" / "talk.json").read_text())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_transcribe_keeps_finished_blocks_and_continues(long_talk, tmp_path, session_home, signum):
    args, _, reference = long_talk
    out = tmp_path / "out"
    partial = out / ".talk.partial.json"
    code, output, seconds = run_until([*args, "--out-dir", str(out)], partial.exists, signum, session_home)
    assert code == 130 and seconds < EXIT_WITHIN, (code, seconds, output)
    assert f"the finished blocks are kept in {partial}" in error_line(output) and not (out / "talk.json").exists()
    assert json.loads(partial.read_text())["done_samples"] > 0

    again = runner.invoke(app, [*args, "--out-dir", str(out)])
    assert again.exit_code == 0, again.output
    assert "continuing after" in again.output and not partial.exists()
    assert (
        json.loads((out / "talk.json").read_text()) == reference
    )  # the blocks decoded before and after the stop join up exactly
