"""Model inputs from prepared features: log-mels (30 s, or the clip's length), or, for the frozen part of the encoder,
its outputs computed once.

On a CPU the encoder is most of a training step's cost (on clip windows too: from cached outputs a base distillation
step runs 2.4x faster, `distill:encoder-cache`), and frozen encoder layers give the same outputs every epoch, every
evaluation and every tuning trial, so they are computed once and kept on disk, keyed by the encoder's weights, how
many of its blocks are frozen, the window and the dataset's fingerprint (as the keyword-spotting feature cache is). A
wholly frozen encoder yields ``encoder_outputs``; frozen bottom blocks yield ``encoder_bottom`` hidden states that the
trainable top blocks finish in every step. A clip's outputs are those of its own window (its length rounded up to a
bucket), so batches over them hold one window each.
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
    frames = clip_window_frames(max(len(stored) for stored in rows)) if window == "clip" else WINDOW_FRAMES
    return torch.from_numpy(np.stack([full_features(stored, frames) for stored in rows]))


def clip_window_frames(stored_frames: int) -> int:
    """A clip window's log-mel frames: the clip's stored frames rounded up to a whole bucket, at most Whisper's 30 s."""
    return min(WINDOW_FRAMES, -(-stored_frames // CLIP_BUCKET_FRAMES) * CLIP_BUCKET_FRAMES)


def label_batch(label_lists: Sequence[Sequence[int]], decoder_start_token_id: int) -> torch.Tensor:
    """Padded targets: the model prepends the decoder start itself, so a leading start token is dropped."""
    lists = [list(ids[1:]) if len(ids) and ids[0] == decoder_start_token_id else list(ids) for ids in label_lists]
    labels = torch.full((len(lists), max(map(len, lists))), IGNORE_INDEX, dtype=torch.long)
    for row, ids in enumerate(lists):
        labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return labels


class EncoderOutputCache:
    """Outputs ``[rows, positions, d_model]`` float16 of one split under the encoder's first ``layers`` blocks
    (``None``: the whole encoder, final layer norm included) on ``window``, kept in the shared encoder-output store
    (``features.cache.FeatureCache``) under the encoder's identity, one key per dataset row; on clip windows each row
    has its own window's positions. Chunks are stored as they are computed, so an interrupted computation resumes at
    the first missing chunk."""

    def __init__(
        self,
        root: str | os.PathLike,
        encoder: torch.nn.Module,
        dataset,
        layers: int | None = None,
        window: str = "full",
        chunk_rows: int = 64,
        batch_size: int = 8,
    ):
        self.encoder = encoder
        self.dataset = dataset
        self.layers = layers
        self.window = window
        self.chunk_rows = chunk_rows
        self.batch_size = batch_size
        self.store = FeatureCache(
            root, weights_fingerprint(encoder, f"layers={layers}" + ("" if window == "full" else f",window={window}"))
        )
        self.keys = [f"{dataset._fingerprint}/{index}" for index in range(len(dataset))]

    def _encode(self, indices: list[int]) -> np.ndarray:
        """Rows ``indices`` (on clip windows: of one bucket) through the frozen blocks."""
        outputs = []
        for first in range(0, len(indices), self.batch_size):
            features = log_mel_batch(self.dataset, indices[first : first + self.batch_size], self.window).to(
                next(self.encoder.parameters()).device
            )
            with torch.inference_mode():
                hidden = (
                    whole_encoder(self.encoder, features)
                    if self.layers is None
                    else encoder_bottom(self.encoder, features, self.layers)
                )
            outputs.append(hidden.float().cpu().numpy().astype(np.float16))
        return np.concatenate(outputs)

    def _same_window(self, indices: list[int]) -> list[list[int]]:
        """``indices`` split by window (one group on 30-s windows), so each stored chunk has one shape."""
        if self.window == "full":
            return [indices]
        frames = [clip_window_frames(len(stored)) for stored in self.dataset.with_format("numpy")[indices]["input_features"]]
        return [[i for i, f in zip(indices, frames) if f == window] for window in sorted(set(frames))]

    def compute(self, progress: bool = True) -> int:
        """Encode every row not stored yet; returns how many rows were encoded now."""
        missing = self.store.missing(self.keys)
        with tqdm(
            total=len(missing), desc="encode (frozen encoder, once)", unit="clip", disable=not progress or not missing
        ) as bar:
            for start in range(0, len(missing), self.chunk_rows):
                for indices in self._same_window(missing[start : start + self.chunk_rows]):
                    self.store.add([self.keys[i] for i in indices], self._encode(indices))
                    bar.update(len(indices))
        return len(missing)

    def positions(self) -> np.ndarray:
        """Each row's stored encoder positions (after ``compute``)."""
        return np.array([self.store.row_shape(key)[0] for key in self.keys], dtype=np.int64)

    def rows(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(self.store.rows([self.keys[i] for i in indices]).astype(np.float32))


class AsrBatches:
    """Batches of one prepared split in a reproducible order: epoch ``e`` is a permutation drawn from (seed, e), so
    micro-batch ``k`` is the same batch in every run, which is what lets training resume exactly. Over cached clip
    windows a batch holds clips of one window: each window's clips in the epoch's order, cut into batches, shuffled."""

    def __init__(
        self, dataset, decoder_start_token_id: int, encoder_outputs: EncoderOutputCache | None = None, window: str = "full"
    ):
        self.dataset = dataset
        self.decoder_start_token_id = decoder_start_token_id
        self.encoder_outputs = encoder_outputs
        self.window = window
        self._labels = dataset["labels"]
        self._windows = encoder_outputs.positions() if encoder_outputs is not None and encoder_outputs.window == "clip" else None

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

    def _groups(self, order: np.ndarray) -> list[np.ndarray]:
        """``order`` split by window, keeping its order within each (one group unless cached clip windows differ)."""
        if self._windows is None:
            return [order]
        return [order[self._windows[order] == window] for window in np.unique(self._windows)]

    def batches_per_epoch(self, batch_size: int) -> int:
        return sum(-(-len(group) // batch_size) for group in self._groups(np.arange(len(self))))

    def _epoch(self, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, epoch])
        batches = [
            group[first : first + batch_size]
            for group in self._groups(rng.permutation(len(self)))
            for first in range(0, len(group), batch_size)
        ]
        return batches if self._windows is None else [batches[i] for i in rng.permutation(len(batches))]

    def micro_batches(self, batch_size: int, seed: int, start: int = 0, count: int | None = None) -> Iterator[dict]:
        """Micro-batches ``start``, ``start + 1``, … (``count`` of them, or forever) of the epoch-permuted order."""
        per_epoch = self.batches_per_epoch(batch_size)
        k, epoch_batches = start, (None, [])
        while count is None or k < start + count:
            epoch, position = divmod(k, per_epoch)
            if epoch_batches[0] != epoch:
                epoch_batches = (epoch, self._epoch(batch_size, seed, epoch))
            yield self.batch(epoch_batches[1][position].tolist())
            k += 1

    def in_order(self, batch_size: int) -> Iterator[tuple[list[int], dict]]:
        """(row indices, batch) over the split once, in row order (window by window if grouped): for evaluation."""
        for group in self._groups(np.arange(len(self))):
            for first in range(0, len(group), batch_size):
                indices = group[first : first + batch_size].tolist()
                yield indices, self.batch(indices)


def model_inputs(model, batch: dict) -> dict:
    """Keyword arguments for the model's forward on its device; cached bottom-block outputs are finished by the
    (trainable) top blocks here, so gradients reach them."""
    device = next(model.parameters()).device
    inputs = {
        key: tuple(t.to(device) for t in value) if isinstance(value, tuple) else value.to(device) for key, value in batch.items()
    }
    whisper = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "encoder_bottom" in inputs:
        hidden, layers = inputs.pop("encoder_bottom")
        inputs["encoder_outputs"] = (encoder_top(whisper.model.encoder, hidden, int(layers)),)
    elif "input_features" in inputs and inputs["input_features"].shape[-1] < WINDOW_FRAMES:
        inputs["encoder_outputs"] = (whole_encoder(whisper.model.encoder, inputs.pop("input_features")),)
    return inputs


def whole_encoder(encoder, features: torch.Tensor) -> torch.Tensor:
    """A WhisperEncoder's output on any window: transformers' own forward on 30 s; on a clip window (which it refuses)
    the same blocks with the positional embeddings sliced to the clip's length (features.encoder)."""
    if features.shape[-1] == WINDOW_FRAMES:
        return encoder(features).last_hidden_state
    blocks = len(encoder.layers)
    return encoder_top(encoder, encoder_bottom(encoder, features, blocks), blocks)
