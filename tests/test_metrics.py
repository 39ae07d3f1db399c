import pytest

from fedwhisper.errors import FedwhisperError
from fedwhisper.metrics import character_error_rate, word_error_rate


def test_english_normaliser_ignores_case_punctuation_and_spelling_variants():
    assert word_error_rate(["Hello, world! It's the colour grey."], ["hello world it is the color gray"]) == 0.0


def test_errors_are_counted():
    assert word_error_rate(["the cat sat down"], ["the bat sat"]) == pytest.approx(0.5)
    assert character_error_rate(["abcd"], ["abxd"]) == pytest.approx(0.25)


def test_other_languages_use_the_basic_normaliser():
    assert word_error_rate(["Tack så mycket!"], ["tack så mycket"], language="sv") == 0.0


def test_mismatched_lengths_and_empty_references_are_errors():
    with pytest.raises(ValueError, match="hypotheses"):
        word_error_rate(["a"], [])
    with pytest.raises(FedwhisperError, match="non-empty"):
        word_error_rate(["", "  "], ["x", "y"])
