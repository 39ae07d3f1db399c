"""Classification heads over frozen Whisper encoder outputs ``[batch, positions, d_model]``, and their checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedwhisper.errors import FedwhisperError
from fedwhisper.runs import load_arrays


class AnchorHead(nn.Sequential):
    """Flower's Whisper example head (whisper_example/model.py:21-26), layer for layer, so its state dict has the
    example's keys (0.*, 3.*): Conv1d over encoder positions (as channels) -> ReLU -> Flatten -> Linear.
    With 1500 positions (30-s window), d_model 384 and 12 classes it has 781,964 parameters."""

    def __init__(self, positions: int, d_model: int, num_classes: int, hidden: int = 128):
        super().__init__(
            nn.Conv1d(positions, hidden, kernel_size=1), nn.ReLU(), nn.Flatten(1), nn.Linear(hidden * d_model, num_classes)
        )


class PooledHead(nn.Module):
    """Our default: a per-position projection, mean+max pooling over time, a linear classifier.
    Independent of the window length, and ~15x smaller than the anchor head at d_model 384."""

    def __init__(self, positions: int, d_model: int, num_classes: int, hidden: int = 128):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.project = nn.Linear(d_model, hidden)
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def forward(self, encoded: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.gelu(self.project(self.norm(encoded)))
        return self.classifier(torch.cat([hidden.mean(dim=1), hidden.amax(dim=1)], dim=-1))


HEADS = {"anchor": AnchorHead, "pooled": PooledHead}


def build_head(kind: str, positions: int, d_model: int, num_classes: int, seed: int = 0) -> nn.Module:
    if kind not in HEADS:
        raise FedwhisperError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
    torch.manual_seed(seed)
    return HEADS[kind](positions, d_model, num_classes)


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_head(path: str | Path) -> tuple[nn.Module, dict]:
    """A head saved in a run directory (``head.safetensors``) and its meta: model, window, classes."""
    state, meta = load_arrays(path)
    try:
        head = build_head(meta["head"], meta["positions"], meta["d_model"], len(meta["classes"]))
        head.load_state_dict(state)
    except (KeyError, RuntimeError) as error:
        raise FedwhisperError(f"{path}: not a keyword-spotting head ({type(error).__name__}: {error})") from None
    return head.eval(), meta
