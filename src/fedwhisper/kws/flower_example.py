"""Flower's Whisper example (adap/flower ``examples/whisper-federated-finetuning``), reproduced setting by setting
on this project's corpus readers: ``kws federate --recipe flower-example`` and the KWS benchmark's anchor rows.

Each setting names the example's file and line it copies (adap/flower main, March 2026). Where this differs, and why:
- encoder: whisper-tiny (multilingual) there, tiny.en here by default: the same shapes (4 blocks, d_model 384), and
  the only tiny checkpoint available without a model hub;
- audio: HF ``speech_commands`` decodes audio through datasets; here ``load_audio`` decodes inside the same per-round
  ``map``. The per-round filter for the background-noise rows runs over the whole training split as there, but reads
  undecoded entries (HF's filter decodes every row's audio), so this loading is a lower bound of the example's;
- randomness: unseeded there (python ``random``, torch's global generator); seeded per (seed, round, client) here, so
  a run can be repeated;
- evaluation: the example's server has ``central-eval = false``; runs here are evaluated by the server on held-out
  speakers exactly as every other recipe is.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedwhisper.audio import SAMPLE_RATE, load_audio
from fedwhisper.kws.data import SILENCE, KwsCorpus


@dataclass(frozen=True)
class FlowerExampleRecipe:
    optimizer: str = "adam"  # whisper_example/client_app.py:81  torch.optim.Adam(classifier.parameters(), lr=0.001)
    learning_rate: float = 1e-3  # client_app.py:81
    batch_size: int = 8  # pyproject.toml:31  batch-size = 8
    drop_last: bool = True  # client_app.py:76  DataLoader(..., drop_last=True)
    local_epochs: int = 1  # client_app.py:91  one train_one_epoch call per round
    min_full_batches: int = 2  # client_app.py:84  run_training = len(train_loader) > 1
    sampler_bins: int = 12  # model.py:44  np.histogram(trainset["targets"], bins=12)
    group_size: int = 5  # dataset.py:21-22  GroupedNaturalIdPartitioner(partition_by="speaker_id", group_size=5)
    fraction_train: float = 0.05  # pyproject.toml:29  fraction-train = 0.05
    min_train_nodes: int = 2  # server_app.py:53 leaves FedAvg's default min_train_nodes = 2
    window_seconds: float = 30.0  # dataset.py:66  WhisperProcessor pads every clip to 30 s
    silence_ratio: float = 0.1  # dataset.py:38-40  10 % of the client's examples
    head: str = "anchor"  # model.py:21-26  Conv1d(1500, 128, 1) -> ReLU -> Flatten -> Linear(128 * 384, 12)


RECIPE = FlowerExampleRecipe()


def clients_and_sample(train_speakers: int, recipe: FlowerExampleRecipe = RECIPE) -> tuple[int, int]:
    """(clients, clients sampled per round): one client per group of ``group_size`` speakers, and FedAvg's
    ``max(int(clients * fraction_train), min_train_nodes)`` (flwr serverapp/strategy/fedavg.py, configure_train)."""
    clients = math.ceil(train_speakers / recipe.group_size)
    return clients, max(int(clients * recipe.fraction_train), recipe.min_train_nodes)


def sampler_weights(targets: np.ndarray, bins: int = RECIPE.sampler_bins) -> np.ndarray:
    """Per-example weights of the example's WeightedRandomSampler (model.py:43-54), copied as written: a class's weight
    is N/(count+1)+1, zero for absent classes. np.histogram bins span min..max of the targets, so the weights line up with
    the classes only when both class 0 and class ``bins-1`` occur (as there; kept)."""
    targets = np.asarray(targets)
    histogram, _ = np.histogram(targets, bins=bins)
    per_class = (len(targets) / (histogram + 1) + 1) * (histogram > 0)
    return per_class[targets]


def silence_clips(
    noise: list[np.ndarray], client_examples: int, rng: np.random.Generator, recipe: FlowerExampleRecipe = RECIPE
) -> list[np.ndarray]:
    """The example's `_silence_` rows for one client (dataset.py:38-46 and 82-111): ⌊ratio·n⌋ // files rows per
    noise file. Its loop appends the same row object each time and overwrites its array, so every row of one file
    holds that file's last 1-s crop: one distinct crop per file, repeated; no gain change."""
    per_file = int(recipe.silence_ratio * client_examples) // len(noise) if noise else 0
    clips = []
    for source in noise:
        if per_file == 0:
            break
        offset = int(rng.integers(0, source.size - SAMPLE_RATE))  # random.randint(0, len(array) - sr - 1)
        clips += [source[offset : offset + SAMPLE_RATE]] * per_file
    return clips


@functools.cache
def grouped_partitioner(corpus: KwsCorpus, group_size: int = RECIPE.group_size):
    """flwr-datasets' GroupedNaturalIdPartitioner over the training split, built once per process (dataset.py:19-29)."""
    from flwr_datasets.partitioner import GroupedNaturalIdPartitioner

    partitioner = GroupedNaturalIdPartitioner(partition_by="speaker_id", group_size=group_size)
    partitioner.dataset = corpus.splits["train"]
    return partitioner


@functools.cache
def _train_rows_with_noise(corpus: KwsCorpus):
    """The training split as HF's speech_commands lays it out: the background-noise files are rows labelled `_silence_`."""
    import datasets

    from fedwhisper.data.corpus import audio_dataset
    from fedwhisper.data.speech_commands import background_noise_files

    train = corpus.splits["train"]
    files = background_noise_files(corpus.root)
    noise = audio_dataset(
        {"audio": files, "label": [SILENCE] * len(files), "speaker_id": [None] * len(files), "utterance": [0] * len(files)},
        {"label": "string", "speaker_id": "string", "utterance": "int32"},
    )
    return datasets.concatenate_datasets([train, noise])


def load_client_data(corpus: KwsCorpus, feature_extractor, partition_id: int, rng: np.random.Generator):
    """What the example's ``load_data`` does at the start of every round (dataset.py:14-48): this client's rows, their
    30-s log-mel (``map``), the noise rows found by a filter over the whole training split, and their silence crops.
    Returns a torch-formatted dataset with ``data`` [80, 3000] and ``targets``."""
    import datasets

    def encode(waveform: np.ndarray) -> np.ndarray:  # dataset.py:63-77
        return feature_extractor(waveform, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]

    partition = grouped_partitioner(corpus).load_partition(partition_id)
    partition = partition.map(
        lambda row: {"data": encode(load_audio(row["audio"], allow_silent=True)), "targets": corpus.label_of(row["label"])},
        remove_columns=partition.column_names,
    )
    noise_rows = _train_rows_with_noise(corpus).filter(lambda row: row["label"] == SILENCE)  # dataset.py:92
    noise = [load_audio(entry, allow_silent=True) for entry in noise_rows["audio"]]
    silence = silence_clips(noise, len(partition), rng)
    if silence:
        rows = datasets.Dataset.from_dict(
            {"data": [encode(c) for c in silence], "targets": [corpus.classes.index(SILENCE)] * len(silence)},
            features=partition.features,
        )
        partition = datasets.concatenate_datasets([partition, rows])
    return partition.with_format("torch", columns=["data", "targets"])


def train_one_round(
    encoder: nn.Module, head: nn.Module, dataset, generator: torch.Generator, recipe: FlowerExampleRecipe = RECIPE
) -> dict | None:
    """The example's client training (client_app.py:64-104, model.py:57-101): balanced sampler when the client has more
    than one batch, batches of 8 with the last partial batch dropped, Adam, one epoch, the 30-s encoder run on every batch.
    Returns None when the client has fewer than two full batches (the example replies ``trained = False``)."""
    from torch.utils.data import DataLoader, WeightedRandomSampler

    targets = np.asarray(dataset["targets"])
    sampler = None
    if len(targets) > recipe.batch_size:
        sampler = WeightedRandomSampler(sampler_weights(targets).tolist(), len(targets), generator=generator)
    loader = DataLoader(dataset, batch_size=recipe.batch_size, shuffle=False, sampler=sampler, drop_last=recipe.drop_last)
    if len(loader) < recipe.min_full_batches:
        return None
    optimizer = torch.optim.Adam(head.parameters(), lr=recipe.learning_rate)
    encoder.eval()
    head.train()
    losses, accuracies, encode_seconds = [], [], 0.0
    for _ in range(recipe.local_epochs):
        for batch in loader:
            started = time.perf_counter()
            with torch.no_grad():
                encoded = encoder(batch["data"])[0]
            encode_seconds += time.perf_counter() - started
            logits = head(encoded)
            loss = nn.functional.cross_entropy(logits.float(), batch["targets"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            accuracies.append(float((logits.argmax(-1) == batch["targets"]).float().mean()))
    head.eval()
    # the example averages per batch (model.py:30-40) and reports the whole dataset's size (client_app.py:103)
    return {
        "train_loss": float(np.mean(losses)),
        "train_accuracy": float(np.mean(accuracies)),
        "num-examples": len(targets),
        "steps": len(losses),
        "encode-seconds": encode_seconds,
    }
