"""Plain training and evaluation of a head on cached encoder outputs: what a federated client and the server call."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedwhisper.errors import FedwhisperError

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class TrainOptions:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # or "sgd"
    class_balanced: bool = True  # sample classes equally: `_unknown_` holds 25 of 35 words
    seed: int = 0


def _batches(labels: np.ndarray, options: TrainOptions, generator: torch.Generator):
    count = len(labels)
    if options.class_balanced:
        frequency = np.bincount(labels)
        weights = torch.as_tensor(1.0 / frequency[labels], dtype=torch.double)
        order = torch.multinomial(weights, count, replacement=True, generator=generator)
    else:
        order = torch.randperm(count, generator=generator)
    return [order[i : i + options.batch_size] for i in range(0, count, options.batch_size)]


def train_head(head: nn.Module, features: np.ndarray, labels: np.ndarray, options: TrainOptions = TrainOptions()) -> dict:
    """Train ``head`` in place on encoder outputs; returns loss, accuracy and the number of examples."""
    if len(labels) == 0:
        raise FedwhisperError("no training examples")
    inputs = torch.from_numpy(np.asarray(features, dtype=np.float32))
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimizer = OPTIMIZERS[options.optimizer](head.parameters(), lr=options.learning_rate)
    generator = torch.Generator().manual_seed(options.seed)
    head.train()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(options.epochs):
        for batch in _batches(labels, options, generator):
            logits = head(inputs[batch])
            loss = nn.functional.cross_entropy(logits, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += int((logits.argmax(-1) == targets[batch]).sum())
            seen += len(batch)
    head.eval()
    return {"train_loss": total_loss / seen, "train_accuracy": correct / seen, "num-examples": len(labels)}


@torch.inference_mode()
def predict_proba(head: nn.Module, features: np.ndarray, batch_size: int = 512) -> np.ndarray:
    head.eval()
    outputs = [
        torch.softmax(head(torch.from_numpy(np.asarray(features[i : i + batch_size], dtype=np.float32))), dim=-1).numpy()
        for i in range(0, len(features), batch_size)
    ]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)


def evaluate_head(head: nn.Module, features: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy and cross-entropy of ``head`` on encoder outputs."""
    if len(labels) == 0:
        raise FedwhisperError("no evaluation examples")
    probabilities = predict_proba(head, features)
    labels = np.asarray(labels)
    loss = float(-np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-12)))
    return {"accuracy": float(np.mean(probabilities.argmax(-1) == labels)), "loss": loss, "num-examples": len(labels)}
