import csv

import pytest

from fedwhisper.audio import load_audio
from fedwhisper.data.corpus import load_corpus
from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder
from fedwhisper.data.text import english_sentences, load_sentences, wordnet_sentences
from fedwhisper.errors import FedwhisperError


@pytest.mark.parametrize("language", ["en", "sv"])
def test_built_in_text_sources_have_thousands_of_distinct_sentences(language):
    sentences = load_sentences(language)
    assert len(sentences) >= 2000 and len(set(sentences)) == len(sentences)
    assert all(4 <= len(s.split()) <= 16 and s[-1] in ".?!" for s in sentences)


def test_wordnet_adds_tens_of_thousands_of_english_sentences_the_fortunes_lack():
    sentences = wordnet_sentences()
    assert len(sentences) >= 30_000 and len(set(sentences) - set(english_sentences())) >= 30_000
    assert all(4 <= len(s.split()) <= 16 and s[0].isupper() and s[-1] in ".?!" and '"' not in s for s in sentences)


@pytest.mark.parametrize("language", ["en", "sv"])
def test_audiofolder_with_disjoint_test_speakers(tmp_path, language):
    options = AsrSynthesisOptions(language=language, sentences=24, speakers=6, test_speakers=2)
    report = synthesize_audiofolder(tmp_path, options)
    assert report.written == 24 and not report.failed
    corpus = load_corpus(tmp_path)
    train, test = corpus["train"], corpus["test"]
    assert len(train) + len(test) == 24 and len(test) == 8
    assert not set(train["speaker_id"]) & set(test["speaker_id"])
    assert len(set(train["transcription"]) | set(test["transcription"])) == 24
    assert load_audio(test[0]["audio"]).size > 16_000 * 0.5
    assert set(train["engine"]) <= {"espeak-ng", "flite"}


def test_text_file_replaces_the_source_and_engines_can_be_chosen(tmp_path):
    text = tmp_path / "sentences.txt"
    text.write_text("".join(f"This is test sentence number {n}.\n" for n in range(12)))
    out = tmp_path / "corpus"
    synthesize_audiofolder(
        out, AsrSynthesisOptions(sentences=12, speakers=4, test_speakers=1, text=str(text), engines=("flite",))
    )
    with open(out / "train" / "metadata.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {r["engine"] for r in rows} == {"flite"}
    assert all(r["transcription"].startswith("This is test sentence") for r in rows)


def test_asking_for_more_sentences_than_the_source_has_is_an_error(tmp_path):
    text = tmp_path / "two.txt"
    text.write_text("One sentence here.\nAnother sentence here.\n")
    with pytest.raises(FedwhisperError, match="fewer than"):
        synthesize_audiofolder(tmp_path / "c", AsrSynthesisOptions(sentences=5, speakers=3, test_speakers=1, text=str(text)))
