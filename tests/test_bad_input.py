"""Bad input, bad options and unusual cases against the CLI: each gives one ``error:`` line naming the option, file or
field (no traceback) and a non-zero exit code when the job did not do what was asked. Issue #14's cases, plus the
audio cases that already worked. Interruptions and long jobs that must keep their work are the tests after the table."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedwhisper.audio import write_audio
from fedwhisper.cli import app
from tests.conftest import tone

runner = CliRunner(env={"COLUMNS": "250"})


def kws_federate(*extra):
    """A valid small federation, made bad by ``extra`` (the last value of an option wins)."""
    return [
        "kws",
        "federate",
        "{corpus}",
        "--model",
        "{model}",
        "--run-dir",
        "{tmp}/run",
        "--cache-dir",
        "{tmp}/cache",
        "--num-clients",
        "3",
        "--clients-per-round",
        "2",
        "--rounds",
        "1",
        *extra,
    ]


# Setups: each makes the bad input in the test's tmp directory.
def broken_json_model(tmp: Path, model: Path) -> None:
    shutil.copytree(model, tmp / "m")
    (tmp / "m" / "config.json").write_text('{"model_type": "whisper", ')


def a_file(tmp: Path) -> None:
    (tmp / "f.bin").write_bytes(b"\0" * 16)


def a_directory(tmp: Path) -> None:
    (tmp / "recordings").mkdir()
    write_audio(tmp / "recordings" / "a.wav", tone(1.0))


def bert_model(tmp: Path, model: Path) -> None:
    (tmp / "m").mkdir()
    (tmp / "m" / "config.json").write_text('{"model_type": "bert"}')


def one_keyword_corpus(tmp: Path, corpus: Path) -> None:
    (tmp / "one" / "yes").mkdir(parents=True)
    for wav in sorted(corpus.glob("yes/*.wav")):
        shutil.copy(wav, tmp / "one" / "yes" / wav.name)


def bad_audio_files(tmp: Path) -> None:
    (tmp / "empty.wav").write_bytes(b"")
    (tmp / "text.wav").write_text("not audio")
    write_audio(tmp / "full.wav", tone(1.0))
    (tmp / "truncated.wav").write_bytes((tmp / "full.wav").read_bytes()[:30])


def existing_run(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "metrics.json").write_text('[{"round": 0}]')


def damaged_run(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "options.json").write_text("{}")
    (tmp / "run" / "metrics.json").write_text('[{"round": 0}, {"rou')


def head_files(tmp: Path) -> None:
    (tmp / "empty.safetensors").write_bytes(b"")
    (tmp / "fake.safetensors").write_text("this is not a checkpoint")


def existing_transcript(tmp: Path) -> None:
    write_audio(tmp / "clip.wav", tone(1.0))
    (tmp / "out").mkdir()
    (tmp / "out" / "clip.txt").write_text("an earlier transcript\n")


def same_stems(tmp: Path) -> None:
    for folder in ("a", "b"):
        (tmp / folder).mkdir()
        write_audio(tmp / folder / "clip.wav", tone(1.0))


def blocked_out_dir(tmp: Path) -> None:
    write_audio(tmp / "clip.wav", tone(1.0))
    (tmp / "file").write_text("a file where a directory is asked for")


def existing_csv(tmp: Path) -> None:
    (tmp / "wer.csv").write_text("earlier results\n")


def corpus_with_bad_clips(tmp: Path, corpus: Path) -> None:
    """A truncated training clip and a silent one (bad for `data check`, a valid `_silence_`-like clip for keyword spotting)."""
    shutil.copytree(corpus, tmp / "c")
    held_out = {
        line.strip()
        for name in ("testing_list.txt", "validation_list.txt")
        if (tmp / "c" / name).is_file()
        for line in (tmp / "c" / name).read_text().splitlines()
    }
    broken = next(path for path in sorted((tmp / "c").glob("yes/*.wav")) if f"yes/{path.name}" not in held_out)
    broken.write_bytes(broken.read_bytes()[:3000])
    write_audio(tmp / "c" / "no" / "ffffffff_nohash_0.wav", tone(0.5) * 0)


def keyword_only_in_test(tmp: Path, corpus: Path) -> None:
    """Every clip of "up" listed as a test clip: no training clip says it."""
    shutil.copytree(corpus, tmp / "k")
    listed = (tmp / "k" / "testing_list.txt").read_text().splitlines() if (tmp / "k" / "testing_list.txt").is_file() else []
    ups = [f"up/{path.name}" for path in sorted((tmp / "k" / "up").glob("*.wav"))]
    (tmp / "k" / "testing_list.txt").write_text("\n".join(sorted(set(listed) | set(ups))) + "\n")


def untranscribed_audiofolder(tmp: Path) -> None:
    """An audiofolder whose metadata names the clips and no text (the input of `distill label`, not of training)."""
    (tmp / "u" / "train").mkdir(parents=True)
    write_audio(tmp / "u" / "train" / "a.wav", tone(1.0))
    (tmp / "u" / "train" / "metadata.csv").write_text("file_name,speaker_id\na.wav,s1\n")


# (id, arguments, setup, exit code, fragment of the one error line); {corpus}, {model}, {tmp} are filled in.
CASES = [
    # options out of range or not among the choices: named as the CLI spells them, before any work
    ("optimizer", kws_federate("--optimizer", "foo"), None, 1, "--optimizer must be one of adam, sgd (got 'foo')"),
    ("local-epochs-0", kws_federate("--local-epochs", "0"), None, 1, "--local-epochs must be at least 1 (got 0)"),
    ("batch-size-0", kws_federate("--batch-size", "0"), None, 1, "--batch-size must be at least 1 (got 0)"),
    ("clients-per-round-0", kws_federate("--clients-per-round", "0"), None, 1, "--clients-per-round must be at least 1 (got 0)"),
    ("rounds-0", kws_federate("--rounds", "0"), None, 1, "--rounds must be at least 1 (got 0)"),
    ("rounds-negative", kws_federate("--rounds", "-1"), None, 1, "--rounds must be at least 1 (got -1)"),
    ("num-clients-0", kws_federate("--num-clients", "0"), None, 1, "--num-clients must be at least 1 (got 0)"),
    ("learning-rate-0", kws_federate("--learning-rate", "0"), None, 1, "--learning-rate must be positive"),
    ("window-too-long", kws_federate("--window-seconds", "31"), None, 1, "--window-seconds must be in (0, 30]"),
    ("recipe", kws_federate("--recipe", "nope"), None, 1, "--recipe must be one of fedwhisper, flower-example"),
    ("head", kws_federate("--head", "big"), None, 1, "--head must be one of"),
    (
        "more-clients-than-speakers",
        kws_federate("--num-clients", "500", "--clients-per-round", "5"),
        None,
        1,
        "500 clients need at least as many training speakers",
    ),
    ("unknown-keyword", kws_federate("--keywords", "nosuchword"), None, 1, "none of the keywords nosuchword"),
    (
        "rounds-not-a-number",
        kws_federate("--rounds", "many"),
        None,
        2,
        "Invalid value for '--rounds': 'many' is not a valid integer",
    ),
    ("missing-argument", ["kws", "evaluate"], None, 2, "Missing argument 'HEAD'"),
    ("kws-train-epochs-0", ["kws", "train", "{corpus}", "--epochs", "0"], None, 2, "Invalid value for '--epochs'"),
    ("transcribe-batch-size-0", ["transcribe", "x.wav", "--batch-size", "0"], None, 2, "Invalid value for '--batch-size'"),
    ("transcribe-num-beams-0", ["transcribe", "x.wav", "--num-beams", "0"], None, 2, "Invalid value for '--num-beams'"),
    ("asr-train-max-steps-0", ["asr", "train", "{tmp}", "--max-steps", "0"], None, 2, "Invalid value for '--max-steps'"),
    ("asr-evaluate-limit-negative", ["asr", "evaluate", "{tmp}", "--limit", "-1"], None, 2, "Invalid value for '--limit'"),
    ("app-port", ["app", "--port", "99999"], None, 2, "Invalid value for '--port': 99999 is not in the range"),
    (
        "transcribe-language",
        ["transcribe", "x.wav", "--model", "{model}", "--language", "xx"],
        None,
        1,
        "--language 'xx' is not a language Whisper knows",
    ),
    (
        "transcribe-task",
        ["transcribe", "x.wav", "--model", "{model}", "--task", "summarise"],
        None,
        1,
        "--task must be transcribe or translate",
    ),
    ("transcribe-format", ["transcribe", "x.wav", "--format", "docx"], None, 1, "unknown format docx"),
    # models
    ("transcribe-model-nosuch", ["transcribe", "x.wav", "--model", "nosuch"], None, 1, "model 'nosuch' does not load"),
    ("kws-model-nosuch", kws_federate("--model", "nosuch"), None, 1, "model 'nosuch' does not load"),
    ("app-model-nosuch", ["app", "--model", "nosuch"], None, 1, "model 'nosuch' does not load"),
    (
        "model-broken-json",
        ["transcribe", "x.wav", "--model", "{tmp}/m"],
        broken_json_model,
        1,
        "config.json: not a valid model config",
    ),
    ("model-not-whisper", ["transcribe", "x.wav", "--model", "{tmp}/m"], bert_model, 1, "holds a bert, not a Whisper model"),
    ("model-path-missing", ["transcribe", "x.wav", "--model", "{tmp}/none"], None, 1, "model directory '"),
    ("model-path-file", ["transcribe", "x.wav", "--model", "{tmp}/f.bin"], a_file, 1, "f.bin: a file, not a model directory"),
    # corpora
    (
        "data-info-nonexist",
        ["data", "info", "nonexist"],
        None,
        1,
        "nonexist: not a corpus directory, and not loadable as a hub dataset",
    ),
    ("data-info-missing-dir", ["data", "info", "{tmp}/none"], None, 1, "corpus directory not found"),
    ("data-info-file", ["data", "info", "{tmp}/f.bin"], a_file, 1, "f.bin: a file, not a corpus directory"),
    (
        "kws-keyword-not-in-train",
        [
            "kws",
            "federate",
            "{tmp}/k",
            "--model",
            "{model}",
            "--keywords",
            "yes,up",
            "--num-clients",
            "2",
            "--clients-per-round",
            "2",
        ],
        keyword_only_in_test,
        1,
        "--keywords: up said only outside the train split",
    ),
    (
        "transcribe-a-directory",
        ["transcribe", "{tmp}/recordings", "--model", "{model}", "--out-dir", "{tmp}/out"],
        a_directory,
        1,
        "nothing was transcribed: the file was skipped",
    ),
    (
        "data-info-not-a-corpus",
        ["data", "info", "{tmp}"],
        None,
        1,
        "not a Speech Commands, Common Voice, Kaldi or audiofolder directory",
    ),
    (
        "asr-prepare-keyword-corpus",
        ["asr", "prepare", "{corpus}", "--out", "{tmp}/f", "--model", "{model}"],
        None,
        1,
        "no transcriptions",
    ),
    (
        "distill-train-mode",
        ["distill", "train", "{tmp}", "--student", "{model}", "--teacher", "{model}", "--mode", "full"],
        None,
        1,
        "--mode must be one of decoder-only, frozen-encoder (got 'full')",
    ),
    (
        "asr-prepare-untranscribed",
        ["asr", "prepare", "{tmp}/u", "--out", "{tmp}/f", "--model", "{model}"],
        untranscribed_audiofolder,
        1,
        "no clip has a transcript; training needs them (`fedwhisper distill label` labels untranscribed audio with a teacher)",
    ),
    (
        "kws-one-class",
        [
            "kws",
            "federate",
            "{tmp}/one",
            "--model",
            "{model}",
            "--keywords",
            "yes",
            "--num-clients",
            "1",
            "--clients-per-round",
            "1",
        ],
        one_keyword_corpus,
        1,
        "the corpus gives one class (yes)",
    ),
    ("kws-missing-corpus", ["kws", "federate", "{tmp}/nowhere"], None, 1, "nowhere"),
    ("kws-no-corpus", ["kws", "federate"], None, 1, "give a CORPUS (or --resume RUN_DIR)"),
    ("data-check-bad-clips", ["data", "check", "{tmp}/c", "--num-proc", "1"], corpus_with_bad_clips, 1, "2 of 61 clips are bad"),
    # run directories and outputs
    ("kws-run-dir-holds-a-run", kws_federate(), existing_run, 1, "already holds a run; pass --resume"),
    ("kws-resume-not-a-run", ["kws", "federate", "--resume", "{tmp}"], None, 1, "not a run directory"),
    ("kws-resume-damaged-metrics", ["kws", "federate", "--resume", "{tmp}/run"], damaged_run, 1, "metrics.json: not valid JSON"),
    ("asr-federate-no-features", ["asr", "federate"], None, 1, "give FEATURES (or --resume RUN_DIR)"),
    (
        "asr-federate-mode",
        ["asr", "federate", "{tmp}", "--mode", "decoder"],
        None,
        1,
        "--mode must be one of lora, encoder-top, full",
    ),
    ("asr-federate-not-features", ["asr", "federate", "{tmp}"], None, 1, "not a prepared feature directory"),
    (
        "asr-federate-strategy",
        ["asr", "federate", "{tmp}", "--strategy", "fedsgd"],
        None,
        1,
        "--strategy must be one of fedavg, fedavgm, fedadam, fedprox (got 'fedsgd')",
    ),
    (
        "asr-federate-momentum",
        ["asr", "federate", "{tmp}", "--strategy", "fedavgm", "--server-momentum", "1.5"],
        None,
        1,
        "--server-momentum must be in [0, 1) (got 1.5)",
    ),
    (
        "asr-federate-optimizer",
        ["asr", "federate", "{tmp}", "--optimizer", "lion"],
        None,
        1,
        "--optimizer must be one of adamw, sgd (got 'lion')",
    ),
    (
        "asr-federate-lr-schedule",
        ["asr", "federate", "{tmp}", "--lr-schedule", "linear"],
        None,
        1,
        "--lr-schedule must be one of constant, cosine (got 'linear')",
    ),
    (
        "asr-federate-clients",
        ["asr", "federate", "{tmp}", "--num-clients", "2", "--clients-per-round", "3"],
        None,
        1,
        "--clients-per-round must be at most --num-clients (2)",
    ),
    ("asr-resume-not-a-run", ["asr", "train", "--resume", "{tmp}"], None, 1, "not a run directory"),
    (
        "asr-evaluate-csv-exists",
        ["asr", "evaluate", "{tmp}", "--csv", "{tmp}/wer.csv"],
        existing_csv,
        1,
        "wer.csv already exists; pass --overwrite",
    ),
    (
        "transcribe-output-exists",
        ["transcribe", "{tmp}/clip.wav", "--out-dir", "{tmp}/out", "--model", "{model}"],
        existing_transcript,
        1,
        "clip.txt already exists; pass --overwrite",
    ),
    (
        "transcribe-same-output-name",
        ["transcribe", "{tmp}/a/clip.wav", "{tmp}/b/clip.wav", "--out-dir", "{tmp}/out"],
        same_stems,
        1,
        "would both be written to",
    ),
    (
        "transcribe-out-dir-unwritable",
        ["transcribe", "{tmp}/clip.wav", "--out-dir", "{tmp}/file/sub"],
        blocked_out_dir,
        1,
        "cannot write there",
    ),
    # heads
    ("kws-predict-empty-head", ["kws", "predict", "{tmp}/empty.safetensors", "x.wav"], head_files, 1, "empty.safetensors: not a"),
    ("kws-predict-fake-head", ["kws", "predict", "{tmp}/fake.safetensors", "x.wav"], head_files, 1, "fake.safetensors: not a"),
    ("kws-predict-missing-head", ["kws", "predict", "{tmp}/none.safetensors", "x.wav"], None, 1, "checkpoint not found"),
    # audio (these worked before): skipped and reported, and the command fails because not every file was done
    (
        "transcribe-bad-audio",
        [
            "transcribe",
            "{tmp}/empty.wav",
            "{tmp}/text.wav",
            "{tmp}/truncated.wav",
            "{tmp}/none.wav",
            "--model",
            "{model}",
            "--out-dir",
            "{tmp}/out",
        ],
        bad_audio_files,
        1,
        "nothing was transcribed: all 4 files were skipped",
    ),
]


@pytest.mark.parametrize(("args", "setup", "code", "fragment"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_and_a_failing_exit_code(args, setup, code, fragment, tmp_path, tiny_kws_corpus, tiny_whisper_dir):
    if setup is not None:
        needs = setup.__code__.co_varnames[: setup.__code__.co_argcount]
        setup(tmp_path, *[{"corpus": tiny_kws_corpus, "model": tiny_whisper_dir}[name] for name in needs[1:]])
    filled = [a.format(corpus=tiny_kws_corpus, model=tiny_whisper_dir, tmp=tmp_path) for a in args]
    result = runner.invoke(app, filled)
    output = result.output
    assert "Traceback" not in output and not (result.exception and not isinstance(result.exception, SystemExit)), output
    errors = [line[line.index("error:") :] for line in output.splitlines() if "error:" in line]  # after a progress bar's \r
    assert result.exit_code == code, output
    assert len(errors) == 1 and fragment in errors[0], output
    assert not (tmp_path / "run" / "head-round-001.safetensors").exists()  # nothing ran


def test_keywords_the_corpus_never_says_are_named_and_left_out(tmp_path, tiny_kws_corpus, tiny_whisper_dir):
    args = ["kws", "train", str(tiny_kws_corpus), "--model", str(tiny_whisper_dir), "--keywords", "yes,banana,no"]
    result = runner.invoke(app, [*args, "--epochs", "1", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "--keywords: banana not in" in result.output and "the classes are yes, no, _silence_, _unknown_" in result.output


def test_a_directory_given_as_audio_is_named_as_one(tmp_path, tiny_whisper_dir):
    a_directory(tmp_path)
    result = runner.invoke(app, ["transcribe", str(tmp_path / "recordings"), "--model", str(tiny_whisper_dir)])
    assert result.exit_code == 1 and "recordings: a directory, not an audio file" in result.output, result.output
    assert "the others were transcribed" not in result.output and "file not found" not in result.output


def test_a_metadata_row_without_its_audio_is_reported_and_the_rest_kept(tmp_path):
    (tmp_path / "af" / "train").mkdir(parents=True)
    write_audio(tmp_path / "af" / "train" / "a.wav", tone(1.0))
    (tmp_path / "af" / "train" / "metadata.csv").write_text("file_name,transcription,speaker_id\na.wav,hi,s1\ngone.wav,bye,s2\n")
    result = runner.invoke(app, ["data", "info", str(tmp_path / "af")])
    assert result.exit_code == 0, result.output
    assert "1 left out" in result.output and "gone.wav (not found)" in "".join(result.output.split("\n"))
    assert "│ train │ 1 " in result.output


@pytest.mark.flower
def test_the_old_hang_fails_at_once(tiny_kws_corpus, tiny_whisper_dir, tmp_path):
    """More clients per round than clients waited forever for nodes that never come; now it is refused before Ray starts."""
    command = [
        str(Path(sys.executable).parent / "fedwhisper"),
        "kws",
        "federate",
        str(tiny_kws_corpus),
        "--model",
        str(tiny_whisper_dir),
        "--num-clients",
        "5",
        "--clients-per-round",
        "9",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--clients-per-round must be at most --num-clients (5) (got 9)" in done.stdout and "Traceback" not in done.stderr


@pytest.mark.flower
def test_clients_skip_and_report_clips_that_do_not_decode(tiny_kws_corpus, tiny_whisper_dir, tmp_path):
    """Before, the client holding a truncated clip crashed every round (a Ray traceback) and its good clips were never
    used; now it trains on the rest and the round line counts what it skipped."""
    corpus_with_bad_clips(tmp_path, tiny_kws_corpus)
    args = [
        a.format(corpus=tmp_path / "c", model=tiny_whisper_dir, tmp=tmp_path)
        for a in kws_federate("--rounds", "2", "--clients-per-round", "3")
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "failed" not in result.output
    rows = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [row["clients_trained"] for row in rows[1:]] == [3, 3]
    assert rows[1]["clips_skipped"] == 1 and "1 clips skipped (do not decode)" in " ".join(result.output.split())
