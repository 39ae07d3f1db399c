from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedwhisper.audio import load_audio, write_audio
from fedwhisper.cli import app
from fedwhisper.data.corpus import corpus_kind, load_corpus
from fedwhisper.data.kaldi import read_kaldi
from fedwhisper.errors import FedwhisperError
from tests.conftest import tone


def kaldi_dir(path, rows, *, text=True, spk2age=None, spk2gender=None, segments=None, wav=None):
    """A data directory: rows (utterance, audio path as written in wav.scp, speaker or None, text)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "wav.scp").write_text(wav or "".join(f"{u} {a}\n" for u, a, _, _ in rows))
    (path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, _, s, _ in rows if s))
    if text:  # tab-separated, as speechocean762 writes it
        (path / "text").write_text("".join(f"{u}\t{t}\n".replace("\t\n", "\n") for u, _, _, t in rows))
    for name, table in (("spk2age", spk2age), ("spk2gender", spk2gender)):
        if table:
            (path / name).write_text("".join(f"{k}\t{v}\n" for k, v in table.items()))
    if segments:
        (path / "segments").write_text(segments)


def test_a_corpus_root_with_train_and_test_data_dirs_and_paths_relative_to_the_root(tmp_path):
    """speechocean762's layout: WAVE/ beside train/ and test/, wav.scp paths relative to the root."""
    for name in ("a", "b", "c", "d", "e"):
        write_audio(tmp_path / "WAVE" / f"{name}.WAV", tone(1.0))
    (tmp_path / "WAVE" / "broken.WAV").write_bytes(b"")
    kaldi_dir(
        tmp_path / "train",
        [
            ("u1", "WAVE/a.WAV", "s1", "WE CALL IT BEAR"),
            ("u2", "WAVE/gone.WAV", "s1", "MISSING AUDIO"),
            ("u3", "WAVE/b.WAV", None, "NO SPEAKER"),
            ("u4", "WAVE/c.WAV", "s2", ""),
            ("u5", "WAVE/d.WAV", "s2", "ZERO THREE FIVE ONE"),
            ("u6", "sox WAVE/e.WAV -t wav - |", "s2", "A PIPE"),
        ],
        spk2age={"s1": "9", "s2": "24"},
        spk2gender={"s1": "f", "s2": "m"},
    )
    kaldi_dir(tmp_path / "test", [("t1", "WAVE/e.WAV", "s3", "THREE TWO TWO SEVEN")])
    assert corpus_kind(tmp_path) == "kaldi" and corpus_kind(tmp_path / "train") == "kaldi"
    corpus = load_corpus(tmp_path)
    assert sorted(corpus) == ["test", "train"]
    train = corpus["train"]
    # an utterance without a text is kept with an empty one: `asr prepare` reports it, or keeps it for pseudo-labels
    assert train["utterance"] == ["u1", "u4", "u5"] and train["transcription"] == ["WE CALL IT BEAR", "", "ZERO THREE FIVE ONE"]
    assert train["speaker_id"] == ["s1", "s2", "s2"] and train["gender"] == ["f", "m", "m"] and train["age"] == ["9", "24", "24"]
    assert train["age_group"] == ["child", "adult", "adult"] and corpus["test"]["age_group"] == [""]
    assert load_audio(train[0]["audio"]).size == 16_000
    # each left-out utterance named with its reason, the rest kept
    skipped = {name.rsplit("/", 1)[1]: why for name, why in corpus.skipped.items()}
    assert set(skipped) == {"u2", "u3", "u6"}
    assert "gone.WAV not found" in skipped["u2"] and skipped["u3"] == "no speaker in utt2spk" and "command" in skipped["u6"]
    # one data directory alone is the train split
    assert list(load_corpus(tmp_path / "test")) == ["train"]


def test_segments_are_cut_from_their_recordings_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDWHISPER_HOME", str(tmp_path / "home"))
    audio = np.concatenate([tone(1.0, frequency=440.0), tone(0.5, frequency=880.0)])
    write_audio(tmp_path / "rec.wav", audio)
    kaldi_dir(
        tmp_path / "data",
        [("utt-a", "", "s1", "FIRST"), ("utt-b", "", "s1", "SECOND"), ("utt-c", "", "s1", "ELSEWHERE")],
        wav=f"rec1 {tmp_path / 'rec.wav'}\n",
        segments="utt-a rec1 0.0 1.0\nutt-b rec1 1.0 -1\nutt-c rec9 0.0 1.0\n",
    )
    corpus = read_kaldi(tmp_path / "data")
    assert corpus["train"]["utterance"] == ["utt-a", "utt-b"]
    first, second = (load_audio(entry) for entry in corpus["train"]["audio"])
    assert first.size == 16_000 and second.size == 8_000  # -1: to the end of the recording
    assert np.allclose(first, audio[:16_000], atol=1e-3) and np.allclose(second, audio[16_000:], atol=1e-3)
    assert "rec9" in next(iter(corpus.skipped.values()))
    cut = corpus["train"][0]["audio"]["path"]
    before = Path(cut).stat().st_mtime_ns
    read_kaldi(tmp_path / "data")
    assert Path(cut).stat().st_mtime_ns == before  # reused, not cut again


def test_untranscribed_and_broken_data_directories(tmp_path):
    write_audio(tmp_path / "a.wav", tone(1.0))
    kaldi_dir(tmp_path / "audio-only", [("u1", str(tmp_path / "a.wav"), "s1", "")], text=False)
    assert read_kaldi(tmp_path / "audio-only")["train"]["transcription"] == [""]  # untranscribed audio is kept
    (tmp_path / "no-spk").mkdir()
    (tmp_path / "no-spk" / "wav.scp").write_text(f"u1 {tmp_path / 'a.wav'}\n")
    with pytest.raises(FedwhisperError, match="utt2spk"):
        read_kaldi(tmp_path / "no-spk")


def test_data_info_and_check_show_speaker_metadata_and_name_left_out_utterances(tmp_path):
    write_audio(tmp_path / "a.wav", tone(1.0))
    write_audio(tmp_path / "b.wav", tone(1.0))
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEfmt ")
    kaldi_dir(
        tmp_path / "train",
        [
            ("u1", "a.wav", "kid", "HELLO"),
            ("u2", "b.wav", "grown", "WORLD"),
            ("u3", "bad.wav", "grown", "BROKEN"),
            ("u4", "a.wav", None, "ORPHAN"),
        ],
        spk2age={"kid": "8", "grown": "30"},
        spk2gender={"kid": "f", "grown": "m"},
    )
    runner = CliRunner()
    info = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert info.exit_code == 0, info.output
    text = " ".join(info.output.split())
    assert "(kaldi)" in text and "train age_group: adult 1, child 1 speakers" in text and "train gender: f 1, m 1" in text
    assert "u4 (no speaker in utt2spk)" in text
    check = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert check.exit_code == 1
    text = " ".join(check.output.split())
    assert "3 of 4 clips usable" not in text and "2 of 4 clips usable, 2 bad" in text
    assert "bad.wav" in text and "u4: no speaker in utt2spk" in text


def test_held_out_speakers_are_carved_from_train_with_children_and_adults_in_every_split():
    import datasets

    from fedwhisper.asr.prepare import _with_held_out_splits

    speakers = [f"kid{i}" for i in range(3)] + [f"adult{i}" for i in range(27)]
    rows = [(s, "child" if s.startswith("kid") else "adult") for s in speakers for _ in range(3)]
    train = datasets.Dataset.from_dict({"speaker_id": [s for s, _ in rows], "age_group": [g for _, g in rows]})
    splits = _with_held_out_splits(datasets.DatasetDict({"train": train}), validation=None, test=5, seed=0)
    parts = {name: set(split["speaker_id"]) for name, split in splits.items()}
    assert sorted(parts) == ["test", "train", "validation"]
    assert len(parts["test"]) == 5 and len(parts["validation"]) == 2  # 10 % of the 25 speakers left after the test split
    assert not (parts["test"] & parts["train"] or parts["validation"] & parts["train"] or parts["test"] & parts["validation"])
    for name, members in parts.items():
        assert {s[:3] for s in members} == {"kid", "adu"}, (name, members)
    # the same seed carves the same speakers; a corpus that has a test split keeps it
    assert {
        n: set(s["speaker_id"]) for n, s in _with_held_out_splits(datasets.DatasetDict({"train": train}), None, 5, 0).items()
    } == parts
    kept = _with_held_out_splits(datasets.DatasetDict({"train": train, "test": train.select([0])}), None, 5, 0)
    assert len(kept["test"]) == 1


def test_evaluation_reports_wer_by_age_group(tmp_path, tiny_asr_corpus, tiny_asr_model):
    """A Kaldi directory over the tiny corpus's test clips, one child and one adult: `asr evaluate` gives each group's WER."""
    import csv

    rows = list(csv.DictReader(open(tiny_asr_corpus / "test" / "metadata.csv")))[:4]
    kaldi_dir(
        tmp_path / "kaldi",
        [
            (f"u{i}", str(tiny_asr_corpus / "test" / r["file_name"]), "kid" if i < 2 else "grown", r["transcription"])
            for i, r in enumerate(rows)
        ],
        spk2age={"kid": "10", "grown": "40"},
    )
    result = CliRunner().invoke(
        app,
        [
            "asr",
            "evaluate",
            str(tmp_path / "kaldi"),
            "--model",
            str(tiny_asr_model),
            "--split",
            "train",
            "--csv",
            str(tmp_path / "w.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("WER by age_group"))
    assert "adult" in line and "child" in line
    written = list(csv.DictReader(open(tmp_path / "w.csv")))
    assert [r["age_group"] for r in written] == ["child", "child", "adult", "adult"]
