import numpy as np
import pytest
import torch

from fedwhisper.errors import FedwhisperError
from fedwhisper.features.encoder import FrozenEncoder


def test_short_window_gives_fewer_positions_and_30_s_matches_transformers(tiny_whisper_dir):
    short = FrozenEncoder(tiny_whisper_dir, window_seconds=1.0)
    assert (short.frames, short.positions, short.d_model) == (100, 50, 64)
    clips = [np.random.default_rng(i).standard_normal(16_000).astype(np.float32) * 0.1 for i in range(3)]
    assert short(clips).shape == (3, 50, 64)

    full = FrozenEncoder(tiny_whisper_dir, window_seconds=30.0)
    features = full.log_mel(clips[:1])
    assert features.shape == (1, 80, 3000)
    with torch.inference_mode():
        expected = full.encoder(features).last_hidden_state
    torch.testing.assert_close(full.forward_features(features), expected)


def test_window_changes_the_fingerprint_and_bad_windows_are_refused(tiny_whisper_dir):
    assert FrozenEncoder(tiny_whisper_dir, 1.0).fingerprint != FrozenEncoder(tiny_whisper_dir, 2.0).fingerprint
    assert FrozenEncoder(tiny_whisper_dir, 1.0).fingerprint == FrozenEncoder(tiny_whisper_dir, 1.0).fingerprint
    with pytest.raises(FedwhisperError, match="window"):
        FrozenEncoder(tiny_whisper_dir, 31.0)
