import json

import pytest

from fedwhisper.audio import write_audio
from fedwhisper.data.audiofolder import read_audiofolder
from fedwhisper.data.corpus import corpus_kind, load_corpus
from fedwhisper.errors import FedwhisperError
from tests.conftest import tone


def test_split_folders_with_csv_metadata(tmp_path):
    write_audio(tmp_path / "train" / "s1" / "a.wav", tone(1.0))
    write_audio(tmp_path / "test" / "s2" / "b.flac", tone(1.0))
    (tmp_path / "train" / "metadata.csv").write_text(
        'file_name,transcription,speaker_id,engine\ns1/a.wav,"Hello, world.",s1,flite\ns1/gone.wav,x,s1,flite\n'
    )
    (tmp_path / "test" / "metadata.csv").write_text(
        "file_name,transcription,speaker_id,engine\ns2/b.flac,Goodbye.,s2,espeak-ng\n"
    )
    assert corpus_kind(tmp_path) == "audiofolder"
    corpus = load_corpus(tmp_path)
    assert corpus["train"][0]["transcription"] == "Hello, world."
    assert corpus["train"]["engine"] == ["flite"]  # extra metadata columns are kept
    assert corpus["test"]["speaker_id"] == ["s2"]
    assert corpus.skipped == {str(tmp_path / "train" / "s1" / "gone.wav"): "not found"}


def test_single_jsonl_metadata_is_the_train_split(tmp_path):
    write_audio(tmp_path / "a.wav", tone(1.0))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.wav", "sentence": "Hi there."}) + "\n")
    corpus = read_audiofolder(tmp_path)
    assert list(corpus) == ["train"] and corpus["train"][0]["transcription"] == "Hi there."


def test_metadata_without_file_name_is_named(tmp_path):
    (tmp_path / "metadata.csv").write_text("path,transcription\na.wav,x\n")
    with pytest.raises(FedwhisperError, match="file_name"):
        read_audiofolder(tmp_path)


def test_unknown_directory_and_missing_path(tmp_path):
    with pytest.raises(FedwhisperError, match="not a Speech Commands"):
        corpus_kind(tmp_path)
    with pytest.raises(FedwhisperError):
        corpus_kind(tmp_path / "nope")
