"""The Speech Commands reader on hand-made folders, as a user's real download would look."""

import collections
import hashlib

import pytest

from fedwhisper.audio import load_audio, write_audio
from fedwhisper.data.corpus import corpus_kind, load_corpus
from fedwhisper.data.speech_commands import background_noise_files, read_speech_commands, which_set
from fedwhisper.errors import FedwhisperError
from tests.conftest import tone


def make_folder(root, words, speakers, lists=True, noise=True):
    for w, word in enumerate(words):
        for s, speaker in enumerate(speakers):
            write_audio(root / word / f"{speaker}_nohash_0.wav", tone(1.0, frequency=200 + 50 * w + 5 * s))
    if noise:
        write_audio(root / "_background_noise_" / "white_noise.wav", tone(3.0, frequency=1234.0))
    if lists:
        (root / "validation_list.txt").write_text(f"{words[0]}/{speakers[0]}_nohash_0.wav\n")
        (root / "testing_list.txt").write_text("".join(f"{word}/{speakers[1]}_nohash_0.wav\n" for word in words))
    return root


def test_hand_made_folder_is_read_with_splits_from_the_lists(tmp_path):
    root = make_folder(tmp_path / "sc", ["yes", "no", "marvin"], ["0a7c2a8d", "0b09edd3", "c50f55b8"])
    (root / "yes" / "README.txt").write_text("not a clip")
    (root / "yes" / "badname.wav").write_bytes(b"")
    corpus = load_corpus(root)
    assert corpus_kind(root) == "speech_commands"
    assert [len(corpus[s]) for s in ("train", "validation", "test")] == [5, 1, 3]
    assert set(corpus["test"]["speaker_id"]) == {"0b09edd3"}
    assert set(corpus["train"]["label"]) == {"yes", "no", "marvin"}
    assert corpus.skipped == {str(root / "yes" / "badname.wav"): "not named <speaker>_nohash_<n>.wav"}
    assert load_audio(corpus["train"][0]["audio"]).size == 16_000
    assert [p.name for p in background_noise_files(root)] == ["white_noise.wav"]


def test_digit_words_without_noise_or_lists_are_a_valid_corpus(tmp_path):
    root = make_folder(tmp_path / "digits", ["zero", "one", "two"], ["aaaa1111", "bbbb2222"], lists=False, noise=False)
    corpus = read_speech_commands(root)
    assert len(corpus["train"]) == 6 and len(corpus["test"]) == 0
    assert background_noise_files(root) == []


def test_folder_without_clips_is_an_error(tmp_path):
    (tmp_path / "yes").mkdir()
    with pytest.raises(FedwhisperError, match="no <word>"):
        read_speech_commands(tmp_path)


def test_which_set_keeps_a_speaker_in_one_split_and_splits_80_10_10():
    assert {which_set(f"{w}/0a7c2a8d_nohash_{n}.wav") for w in ("yes", "no") for n in range(5)} == {
        which_set("0a7c2a8d_nohash_0.wav")
    }
    speakers = [hashlib.md5(str(i).encode()).hexdigest()[:8] for i in range(4000)]
    shares = collections.Counter(which_set(f"{s}_nohash_0.wav") for s in speakers)
    assert shares["validation"] / 4000 == pytest.approx(0.1, abs=0.02)
    assert shares["test"] / 4000 == pytest.approx(0.1, abs=0.02)


def test_hub_style_columns_are_standardised():
    import datasets

    from fedwhisper.data.corpus import standardise_columns

    features = datasets.Features(
        {
            "label": datasets.ClassLabel(names=["yes", "no", "up"]),
            "utterance_id": datasets.Value("int8"),
            "speaker_id": datasets.Value("string"),
        }
    )
    hub = datasets.Dataset.from_dict({"label": [0, 2], "utterance_id": [0, 1], "speaker_id": ["a", "b"]}, features=features)
    corpus = standardise_columns(datasets.DatasetDict(train=hub))
    assert corpus["train"]["label"] == ["yes", "up"] and corpus["train"]["utterance"] == [0, 1]
