import json

import numpy as np
import pytest
import soundfile as sf

from fedwhisper.data.corpus import load_corpus
from fedwhisper.data.speech_commands import which_set
from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands
from fedwhisper.data.synthesis import SynthesisOptionsMismatch

SMALL = KwsSynthesisOptions(speakers=6, words=("yes", "no", "marvin"), noise_seconds=3.0)


@pytest.fixture(scope="module")
def kws_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("kws")
    report = synthesize_speech_commands(out, SMALL)
    return out, report


def test_layout_matches_speech_commands_v002(kws_corpus):
    out, report = kws_corpus
    assert report.written == 18 and not report.failed
    assert sorted(p.name for p in (out / "_background_noise_").glob("*.wav")) == [
        "babble.wav",
        "brown_noise.wav",
        "fan.wav",
        "hum.wav",
        "pink_noise.wav",
        "white_noise.wav",
    ]
    clips = sorted(out.glob("*/*_nohash_0.wav"))
    assert len(clips) == 18
    info = sf.info(clips[0])
    assert (info.samplerate, info.channels, info.frames) == (16_000, 1, 16_000)
    listed = (out / "validation_list.txt").read_text().split() + (out / "testing_list.txt").read_text().split()
    assert all(which_set(line) in ("validation", "test") for line in listed)
    speakers = json.loads((out / "speakers.json").read_text())
    assert len(speakers) == 6 and len({json.dumps(v, sort_keys=True) for v in speakers.values()}) == 6


def test_reader_sees_every_clip_with_speaker_ids(kws_corpus):
    out, _ = kws_corpus
    corpus = load_corpus(out)
    assert sum(len(split) for split in corpus.values()) == 18
    for split in corpus.values():
        for row in split:
            assert row["audio"]["path"].endswith(f"{row['speaker_id']}_nohash_0.wav")


def test_clips_are_not_copies_of_each_other(kws_corpus):
    out, _ = kws_corpus
    data = [sf.read(p)[0] for p in sorted(out.glob("yes/*.wav"))]
    assert all(not np.array_equal(a, b) for i, a in enumerate(data) for b in data[i + 1 :])


def test_same_seed_same_corpus_and_resume_redoes_only_missing_files(kws_corpus, tmp_path):
    out, _ = kws_corpus
    again = tmp_path / "again"
    synthesize_speech_commands(again, SMALL)
    for clip in sorted(out.glob("*/*.wav")):
        assert np.array_equal(sf.read(clip)[0], sf.read(again / clip.parent.name / clip.name)[0]), clip
    victim = next(again.glob("no/*.wav"))
    victim.unlink()
    report = synthesize_speech_commands(again, SMALL)
    assert (report.written, report.reused) == (1, 17) and victim.is_file()


def test_resuming_with_other_options_is_refused(kws_corpus):
    out, _ = kws_corpus
    with pytest.raises(SynthesisOptionsMismatch):
        synthesize_speech_commands(out, KwsSynthesisOptions(speakers=7, words=("yes", "no", "marvin"), noise_seconds=3.0))


def test_failed_clips_are_skipped_and_reported(tmp_path):
    report = synthesize_speech_commands(tmp_path, KwsSynthesisOptions(speakers=2, words=("yes", " "), noise_seconds=2.0))
    assert report.written == 2 and len(report.failed) == 2
    assert "empty text" in report.failed[0]["error"]
    assert json.loads((tmp_path / "synthesis_report.json").read_text())["failed"] == 2
