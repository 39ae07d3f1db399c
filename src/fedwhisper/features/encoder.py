"""A frozen Whisper encoder run on a window of the clip's real length instead of 30 s of padding.

transformers' WhisperEncoder refuses anything but 3000 mel frames, so a 1-s keyword clip pays for 30 s of
encoder work. The same weights run on a shorter window by slicing the positional embeddings: 1 s -> 100 mel
frames -> 50 encoder positions. ``window_seconds=30`` gives exactly what transformers computes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fedwhisper.constants import HOP_LENGTH, SAMPLE_RATE
from fedwhisper.errors import FedwhisperError
from fedwhisper.models.registry import from_pretrained, resolve_model


def encoder_bottom(encoder: nn.Module, features: torch.Tensor, layers: int) -> torch.Tensor:
    """A WhisperEncoder's convolution stem, positional embeddings (sliced to the input's length) and first ``layers`` blocks."""
    hidden = nn.functional.gelu(encoder.conv1(features))
    hidden = nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
    for layer in encoder.layers[:layers]:
        hidden = layer(hidden, None)
    return hidden


def encoder_top(encoder: nn.Module, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """The rest of the encoder from block ``start``: the remaining blocks and the final layer norm."""
    for layer in encoder.layers[start:]:
        hidden = layer(hidden, None)
    return encoder.layer_norm(hidden)


def weights_fingerprint(module: nn.Module, salt: str = "") -> str:
    """A short hash of ``module``'s weights (and ``salt``): the identity under which its outputs are cached."""
    digest = hashlib.sha256(salt.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).numpy().tobytes())
    return digest.hexdigest()[:20]


class FrozenEncoder:
    """Whisper encoder outputs for fixed-length windows: ``[clips, positions, d_model]`` float16."""

    def __init__(self, model: str | os.PathLike = "tiny.en", window_seconds: float = 1.0, batch_size: int | None = None):
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        location = resolve_model(model)
        whisper = from_pretrained(WhisperForConditionalGeneration, location)
        config = whisper.config
        max_seconds = config.max_source_positions * 2 * HOP_LENGTH / SAMPLE_RATE
        if not 0 < window_seconds <= max_seconds:
            raise FedwhisperError(f"window must be in (0, {max_seconds:g}] seconds, got {window_seconds}")
        self.model_ref = str(model)
        self.window_seconds = float(window_seconds)
        self.window_samples = int(round(window_seconds * SAMPLE_RATE))
        self.frames = self.window_samples // HOP_LENGTH
        # long windows: attention's positions² memory makes big batches slow (tiny.en at 30 s: 0.5 s/clip at 64, 0.2 at 8)
        self.batch_size = batch_size or (64 if window_seconds <= 5 else 8)
        self.encoder = whisper.model.encoder.eval().requires_grad_(False)
        self.feature_extractor = from_pretrained(WhisperFeatureExtractor, location)
        self.d_model = config.d_model
        self.positions = (self.frames + 1) // 2  # conv2 has stride 2
        # a cache written under another model or window is never reused
        self.fingerprint = weights_fingerprint(self.encoder, f"{self.window_samples}")

    def log_mel(self, clips: Sequence[np.ndarray]) -> torch.Tensor:
        """Log-mel features of each clip padded or cut to the window: ``[clips, n_mels, frames]``."""
        features = self.feature_extractor(
            [np.asarray(c, dtype=np.float32) for c in clips],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            padding="max_length",
            max_length=self.window_samples,
            truncation=True,
        ).input_features
        return features[..., : self.frames]

    @torch.inference_mode()
    def forward_features(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder on ``[batch, n_mels, frames]`` for any frame count up to 3000."""
        return encoder_top(
            self.encoder, encoder_bottom(self.encoder, features, len(self.encoder.layers)), len(self.encoder.layers)
        )

    def __call__(self, clips: Sequence[np.ndarray], progress: bool = False) -> np.ndarray:
        outputs = np.empty((len(clips), self.positions, self.d_model), dtype=np.float16)
        starts = range(0, len(clips), self.batch_size)
        for start in tqdm(
            starts, desc=f"encode ({self.window_seconds:g}-s window)", unit="batch", disable=not progress or len(starts) < 2
        ):
            batch = clips[start : start + self.batch_size]
            outputs[start : start + len(batch)] = self.forward_features(self.log_mel(batch)).numpy().astype(np.float16)
        return outputs
