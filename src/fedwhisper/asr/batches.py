"""Model inputs from prepared features: 30-s log-mels, or, for the frozen part of the encoder, its outputs computed once.

On a CPU the encoder over a 30-s window is most of a training step's cost, and frozen encoder layers give the same
outputs every epoch, every evaluation and every tuning trial, so they are computed once and kept on disk, keyed by
the encoder's weights, how many of its blocks are frozen and the dataset's fingerprint (as the keyword-spotting
feature cache is). A wholly frozen encoder yields ``encoder_outputs``; frozen bottom blocks yield ``encoder_bottom``
hidden states that the trainable top blocks finish in every step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fedwhisper.asr.prepare import WINDOW_FRAMES, full_features
from fedwhisper.constants import IGNORE_INDEX
from fedwhisper.features.cache import FeatureCache
from fedwhisper.features.encoder import encoder_bottom, encoder_top, weights_fingerprint

WINDOWS = ("full", "clip")
CLIP_BUCKET_FRAMES = 200  # clip windows are rounded up to whole 2-s buckets, so batches come in few shapes


def log_mel_batch(dataset, indices: Sequence[int], window: str = "full") -> torch.Tensor:
    """``[batch, n_mels, frames]`` float32 Whisper inputs for rows ``indices`` of a prepared split: 3000 frames (30 s,
    Whisper's window) or, for ``clip``, the longest clip's length rounded up to a bucket."""
    rows = dataset.with_format("numpy")[list(indices)]["input_features"]
    frames = WINDOW_FRAMES
    if window == "clip":
        frames = min(WINDOW_FRAMES, -(-max(len(stored) for stored in rows) // CLIP_BUCKET_FRAMES) * CLIP_BUCKET_FRAMES)
    return torch.from_numpy(np.stack([full_features(stored, frames) for stored in rows]))


def label_batch(label_lists: Sequence[Sequence[int]], decoder_start_token_id: int) -> torch.Tensor:
    """Padded targets: the model prepends the decoder start itself, so a leading start token is dropped."""
    lists = [list(ids[1:]) if len(ids) and ids[0] == decoder_start_token_id else list(ids) for ids in label_lists]
    labels = torch.full((len(lists), max(map(len, lists))), IGNORE_INDEX, dtype=torch.long)
    for row, ids in enumerate(lists):
        labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return labels


class EncoderOutputCache:
    """Outputs ``[rows, positions, d_model]`` float16 of one split under the encoder's first ``layers`` blocks
    (``None``: the whole encoder, final layer norm included), kept in the shared encoder-output store
    (``features.cache.FeatureCache``) under the encoder's identity, one key per dataset row. Chunks are stored as they
    are computed, so an interrupted computation resumes at the first missing chunk."""

    def __init__(self, root: str | os.PathLike, encoder: torch.nn.Module, dataset, layers: int | None = None, chunk_rows: int = 64, batch_size: int = 8):
        self.encoder = encoder
        self.dataset = dataset
        self.layers = layers
        self.chunk_rows = chunk_rows
        self.batch_size = batch_size
        self.store = FeatureCache(root, weights_fingerprint(encoder, f"layers={layers}"))
        self.keys = [f"{dataset._fingerprint}/{index}" for index in range(len(dataset))]

    def _encode(self, indices: list[int]) -> np.ndarray:
        outputs = []
        for first in range(0, len(indices), self.batch_size):
            features = log_mel_batch(self.dataset, indices[first : first + self.batch_size]).to(next(self.encoder.parameters()).device)
            with torch.inference_mode():
                hidden = self.encoder(features).last_hidden_state if self.layers is None else encoder_bottom(self.encoder, features, self.layers)
            outputs.append(hidden.float().cpu().numpy().astype(np.float16))
        return np.concatenate(outputs)

    def compute(self, progress: bool = True) -> int:
        """Encode every row not stored yet; returns how many rows were encoded now."""
        missing = self.store.missing(self.keys)
        with tqdm(total=len(missing), desc="encode (frozen encoder, once)", unit="clip", disable=not progress or not missing) as bar:
            for start in range(0, len(missing), self.chunk_rows):
                indices = missing[start : start + self.chunk_rows]
                self.store.add([self.keys[i] for i in indices], self._encode(indices))
                bar.update(len(indices))
        return len(missing)

    def rows(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self.store.rows([self.keys[i] for i in indices]).astype(np.float32))


class AsrBatches:
    """Batches of one prepared split in a reproducible order: epoch ``e`` is a permutation drawn from (seed, e), so
    micro-batch ``k`` is the same batch in every run, which is what lets training resume exactly."""

    def __init__(self, dataset, decoder_start_token_id: int, encoder_outputs: EncoderOutputCache | None = None, window: str = "full"):
        self.dataset = dataset
        self.decoder_start_token_id = decoder_start_token_id
        self.encoder_outputs = encoder_outputs
        self.window = window
        self._labels = dataset["labels"]

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: Sequence[int]) -> dict:
        """labels plus input_features, encoder_outputs or encoder_bottom (see :func:`model_inputs`)."""
        inputs = {"labels": label_batch([self._labels[i] for i in indices], self.decoder_start_token_id)}
        if self.encoder_outputs is not None:
            hidden = self.encoder_outputs.rows(indices)
            layers = self.encoder_outputs.layers
            inputs |= {"encoder_outputs": (hidden,)} if layers is None else {"encoder_bottom": (hidden, torch.tensor(layers))}
        else:
            inputs["input_features"] = log_mel_batch(self.dataset, indices, self.window)
        return inputs

    def batches_per_epoch(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def micro_batches(self, batch_size: int, seed: int, start: int = 0, count: int | None = None) -> Iterator[dict]:
        """Micro-batches ``start``, ``start + 1``, … (``count`` of them, or forever) of the epoch-permuted order."""
        per_epoch = self.batches_per_epoch(batch_size)
        k = start
        while count is None or k < start + count:
            epoch, position = divmod(k, per_epoch)
            order = np.random.default_rng([seed, epoch]).permutation(len(self))
            yield self.batch(order[position * batch_size : (position + 1) * batch_size].tolist())
            k += 1

    def in_order(self, batch_size: int) -> Iterator[tuple[list[int], dict]]:
        """(row indices, batch) over the split once, in row order: for evaluation."""
        for start in range(0, len(self), batch_size):
            indices = list(range(start, min(start + batch_size, len(self))))
            yield indices, self.batch(indices)


def model_inputs(model, batch: dict) -> dict:
    """Keyword arguments for the model's forward on its device; cached bottom-block outputs are finished by the
    (trainable) top blocks here, so gradients reach them."""
    device = next(model.parameters()).device
    inputs = {key: tuple(t.to(device) for t in value) if isinstance(value, tuple) else value.to(device) for key, value in batch.items()}
    whisper = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "encoder_bottom" in inputs:
        hidden, layers = inputs.pop("encoder_bottom")
        inputs["encoder_outputs"] = (encoder_top(whisper.model.encoder, hidden, int(layers)),)
    elif "input_features" in inputs and inputs["input_features"].shape[-1] < WINDOW_FRAMES:
        # a clip window: transformers' encoder refuses anything but 3000 frames; the same blocks run on the clip's
        # length with the positional embeddings sliced (features.encoder)
        encoder = whisper.model.encoder
        blocks = len(encoder.layers)
        inputs["encoder_outputs"] = (encoder_top(encoder, encoder_bottom(encoder, inputs.pop("input_features"), blocks), blocks),)
    return inputs
