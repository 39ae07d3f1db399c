from pathlib import Path

import pytest

from fedwhisper.data.synth_asr import AsrSynthesisOptions, synthesize_audiofolder


@pytest.fixture(scope="session")
def tiny_asr_corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("asr-corpus")
    synthesize_audiofolder(out, AsrSynthesisOptions(sentences=40, speakers=8, test_speakers=2, noise_probability=0.0))
    return out


@pytest.fixture(scope="session")
def tiny_features(tiny_asr_corpus, tiny_asr_model, tmp_path_factory) -> Path:
    from fedwhisper.asr.prepare import PrepareOptions, prepare_features

    out = tmp_path_factory.mktemp("features") / "features"
    prepare_features(tiny_asr_corpus, str(tiny_asr_model), out, PrepareOptions(shard_size=16, validation_speakers=1))
    return out
