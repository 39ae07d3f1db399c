import json
import re
import shutil

from typer.testing import CliRunner

from fedwhisper.audio import write_audio
from fedwhisper.cli import app
from tests.conftest import tone

runner = CliRunner(env={"COLUMNS": "250"})


def invoke(*args):
    """Run the CLI; output with rich's line wrapping undone."""
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_models_list_names_the_extras():
    code, output = invoke("models", "list")
    assert code == 0
    assert "tiny.en" in output and "fedwhisper[weights]" in output and "fedwhisper[small]" in output


def test_unknown_model_is_a_clean_error():
    code, output = invoke("models", "import", "huge")
    assert code == 1 and "unknown model" in output


def test_synth_info_and_check_on_a_corpus_with_a_broken_file(tmp_path):
    out = tmp_path / "kws"
    code, output = invoke("data", "synth-kws", str(out), "--speakers", "3", "--words", "yes,no", "--noise-seconds", "2")
    assert code == 0 and "6 clips written" in output, output

    code, output = invoke("data", "info", str(out))
    assert code == 0 and "speech_commands" in output

    broken = next(out.glob("yes/*.wav"))
    broken.write_bytes(broken.read_bytes()[:3000])
    write_audio(out / "no" / "ffffffff_nohash_0.wav", tone(0.5) * 0)
    report = tmp_path / "bad.json"
    code, output = invoke("data", "check", str(out), "--num-proc", "2", "--report", str(report))
    assert code == 1 and "5 of 7 clips usable, 2 bad" in output, output  # the check found bad clips: it says so in its exit code
    errors = " ".join(entry["error"] for entry in json.loads(report.read_text()))
    assert "truncated" in errors and "silent" in errors


def test_synth_asr_reports_a_missing_text_file(tmp_path):
    code, output = invoke("data", "synth-asr", str(tmp_path / "c"), "--text", str(tmp_path / "none.txt"))
    assert code == 1 and "not found" in output


def test_kws_train_evaluate_and_predict(tiny_whisper_dir, tiny_kws_corpus, tmp_path):
    run_dir = tmp_path / "central"
    code, output = invoke(
        "kws",
        "train",
        str(tiny_kws_corpus),
        "--run-dir",
        str(run_dir),
        "--epochs",
        "2",
        "--model",
        str(tiny_whisper_dir),
        "--keywords",
        "yes,no,up",
    )
    assert code == 0 and "round 2:" in output, output
    head = run_dir / "head.safetensors"

    code, output = invoke("kws", "evaluate", str(head), str(tiny_kws_corpus), "--split", "train")
    assert code == 0 and "accuracy" in output and "_unknown_" in output, output

    # real recordings of two of the keywords only (no other words, no background noise): those two are scored, the
    # others named as absent
    only = tmp_path / "yes-no"
    for word in ("yes", "no"):
        shutil.copytree(tiny_kws_corpus / word, only / word)
    code, output = invoke("kws", "evaluate", str(head), str(only), "--split", "train")
    assert code == 0, output
    scored = set(re.findall(r"│ (\S+) +│ \d+ +│", output))
    assert scored == {"yes", "no"}, output
    assert "not in this train split, so not scored: up, _silence_, _unknown_" in output, output

    clip = next(tiny_kws_corpus.glob("yes/*.wav"))
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    code, output = invoke("kws", "predict", str(head), str(clip), str(bad))
    assert code == 1, output  # one file failed: reported, and the exit code says so
    assert clip.name in output and "not readable as audio" in output


def test_piped_output_keeps_each_line_whole_and_datasets_bars_off():
    """With output going to a file (here: pytest's capture), a round line is one line however long, and datasets'
    per-shard progress frames are off."""
    import datasets
    from datasets.utils.tqdm import are_progress_bars_disabled

    from fedwhisper.cli.common import console
    from fedwhisper.cli.kws import print_round

    row = {"round": 7, "validation_accuracy": 0.9, "test_accuracy": 0.91, "clients_trained": 10, "clients_skipped": 0}
    row |= {"clients_failed": 2, "clients_rejected": 1, "dp_epsilon": 12.5, "clips_skipped": 3, "seconds": 14.2}
    with console.capture() as captured:
        print_round(row)
    lines = captured.get().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 80 and lines[0].endswith("14.2 s)"), lines
    datasets.enable_progress_bars()
    assert invoke("models", "list")[0] == 0
    assert are_progress_bars_disabled()
