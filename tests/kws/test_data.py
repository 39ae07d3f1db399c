import numpy as np
import pytest

from fedwhisper.data.partition import speaker_partitioner
from fedwhisper.data.speech_commands import read_speech_commands
from fedwhisper.errors import FedwhisperError
from fedwhisper.kws.data import SILENCE, UNKNOWN, KwsCorpus, class_names, silence_crops
from tests.data.test_speech_commands import make_folder


def test_class_set_follows_the_corpus():
    words = {"yes", "no", "marvin", "house"}
    assert class_names(words, ("yes", "no", "stop")) == ("yes", "no", SILENCE, UNKNOWN)
    assert class_names({"zero", "one"}, ("zero", "one"), has_noise=False) == ("zero", "one")
    with pytest.raises(FedwhisperError, match="none of the keywords"):
        class_names({"cat"}, ("yes",))


def test_digit_corpus_without_noise_has_neither_silence_nor_unknown(tmp_path):
    root = make_folder(tmp_path / "digits", ["zero", "one", "two"], ["aaaa1111", "bbbb2222"], lists=False, noise=False)
    corpus = KwsCorpus(root, keywords=("zero", "one", "two"))
    assert corpus.classes == ("zero", "one", "two")
    examples = corpus.examples(corpus.splits["train"], seed=0)
    assert len(examples) == 6 and set(examples.labels) == {0, 1, 2}


def test_silence_crops_are_distinct_and_a_tenth_of_the_clips(tiny_kws_corpus):
    corpus = KwsCorpus(tiny_kws_corpus, keywords=("yes", "no", "up"))
    assert corpus.classes == ("yes", "no", "up", SILENCE, UNKNOWN)
    examples = corpus.examples(corpus.splits["train"], seed=3)
    silence = [a for a, label in zip(examples.audio, examples.labels) if label == corpus.classes.index(SILENCE)]
    assert len(silence) == round(0.1 * len(corpus.splits["train"]))
    assert len({a.tobytes() for a in silence}) == len(silence)
    assert all(a.shape == (16_000,) for a in silence)
    assert corpus.label_of("marvin") == corpus.label_of("house") == corpus.classes.index(UNKNOWN)


def test_crops_depend_on_the_seed():
    noise = [np.random.default_rng(0).standard_normal(16_000 * 5).astype(np.float32)]
    assert np.array_equal(silence_crops(noise, 3, 1)[0], silence_crops(noise, 3, 1)[0])
    assert not np.array_equal(silence_crops(noise, 3, 1)[0], silence_crops(noise, 3, 2)[0])


def test_partitions_are_disjoint_speaker_groups_covering_the_training_speakers(tiny_kws_corpus):
    splits = read_speech_commands(tiny_kws_corpus)
    train_speakers = set(splits["train"]["speaker_id"])
    held_out = set(splits["validation"]["speaker_id"]) | set(splits["test"]["speaker_id"])
    partitioner = speaker_partitioner(splits["train"], num_clients=3)
    groups = [set(partitioner.load_partition(i)["speaker_id"]) for i in range(partitioner.num_partitions)]
    assert partitioner.num_partitions == 3
    assert set().union(*groups) == train_speakers and sum(map(len, groups)) == len(train_speakers)
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert not set().union(*groups) & held_out  # test speakers never appear in any client
    with pytest.raises(FedwhisperError, match="at least as many training speakers"):
        speaker_partitioner(splits["train"], num_clients=len(train_speakers) + 1)
