"""Keyword-spotting benchmarks: our way (1-s window, encode once, train from the cache) against the anchor's way
(Flower's Whisper example: 30-s padded input, encoder re-run every epoch, Conv1d head, SGD lr 1e-3, batch 8).
Every ratio is measured in one run on this machine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands
from fedwhisper.features.encoder import FrozenEncoder
from fedwhisper.kws.data import KwsCorpus, speaker_partitioner
from fedwhisper.kws.model import build_head, parameter_count
from fedwhisper.kws.simulate import simulate
from fedwhisper.kws.task import KwsOptions, encode_examples, train_centralized
from fedwhisper.kws.train import TrainOptions, evaluate_head, train_head


def _seconds(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def encoder_macs(encoder: FrozenEncoder) -> int:
    """Multiply-adds of one encoder pass at ``encoder``'s window, from the model's shapes: the arithmetic bound
    on how much cheaper a shorter window can be (convolutions and linear layers scale with length, attention with its square)."""
    config = encoder.encoder.config
    d, ffn, layers, frames, positions = config.d_model, config.encoder_ffn_dim, config.encoder_layers, encoder.frames, encoder.positions
    convolutions = frames * d * config.num_mel_bins * 3 + positions * d * d * 3
    per_token = 4 * d * d + 2 * d * ffn  # q, k, v, out projections and the two feed-forward layers
    attention = 2 * positions * positions * d  # scores and weighted sum
    return int(convolutions + layers * (positions * per_token + attention))


def encoder_cost(corpus: KwsCorpus, clips_short: int, clips_long: int, repeats: int = 5) -> dict:
    """Benchmark 1: seconds per 1-s clip, log-mel included, at the 1-s window and padded to 30 s.
    Each repetition times both in turn, so machine noise hits both sides; the median ratio is reported."""
    rows = corpus.splits["train"].select(range(clips_short))
    waveforms = corpus.examples(rows, seed=0).waveforms(list(range(clips_short)))
    short, long = FrozenEncoder("tiny.en", 1.0), FrozenEncoder("tiny.en", 30.0, batch_size=8)
    short(waveforms[:8])  # warm-up
    long(waveforms[:2])
    pairs = []
    for _ in range(repeats):
        short_seconds, _ = _seconds(short, waveforms)
        long_seconds, _ = _seconds(long, waveforms[:clips_long])
        pairs.append((short_seconds / clips_short, long_seconds / clips_long))
    ratios = sorted(long_ / short_ for short_, long_ in pairs)
    per_short = float(np.median([p[0] for p in pairs]))
    per_long = float(np.median([p[1] for p in pairs]))
    return {"ms_per_clip_1s_window": round(1000 * per_short, 2), "ms_per_clip_30s_padding": round(1000 * per_long, 1),
            "ratio": round(float(np.median(ratios)), 1), "ratio_range": [round(ratios[0], 1), round(ratios[-1], 1)],
            "multiply_adds": {"1s": encoder_macs(short), "30s": encoder_macs(long),
                              "ratio": round(encoder_macs(long) / encoder_macs(short), 1)},
            "repeats": repeats, "clips_timed": {"1s": clips_short, "30s": clips_long}}


def window_accuracy(corpus: KwsCorpus, work: Path, train_speakers: int, epochs: int) -> dict:
    """Benchmark 1b: the same head, trained centrally on the same clips of ``train_speakers`` training speakers,
    tested on every test speaker of the corpus, at the 1-s window and padded to 30 s."""
    speakers = sorted(set(corpus.splits["train"]["speaker_id"]))[:train_speakers]
    chosen = set(speakers)
    train = corpus.examples(corpus.splits["train"].filter(lambda row: row["speaker_id"] in chosen), seed=1)
    test = corpus.examples(corpus.splits["test"], seed=2)
    results: dict = {"train_clips": len(train), "test_clips": len(test), "test_speakers": len(set(corpus.splits["test"]["speaker_id"]))}
    for window in (1.0, 30.0):
        encoder = FrozenEncoder("tiny.en", window, batch_size=64 if window <= 1 else 8)
        started = time.perf_counter()
        train_features, _ = encode_examples(encoder, train, work / "cache-window", progress=True)
        test_features, _ = encode_examples(encoder, test, work / "cache-window", progress=True)
        encode_seconds = time.perf_counter() - started
        head = build_head("pooled", encoder.positions, encoder.d_model, len(corpus.classes))
        curve = []
        for epoch in range(epochs):
            train_head(head, train_features, train.labels, TrainOptions(epochs=1, batch_size=16, learning_rate=1e-3, seed=epoch))
            curve.append(round(evaluate_head(head, test_features, test.labels)["accuracy"], 4))
        results[f"{window:g}s"] = {"test_accuracy_per_epoch": curve, "final": curve[-1], "mean_last_3": round(float(np.mean(curve[-3:])), 4),
                                   "encode_seconds": round(encode_seconds, 1)}
    results["difference_points_mean_last_3"] = round(100 * (results["1s"]["mean_last_3"] - results["30s"]["mean_last_3"]), 2)
    return results


def anchor_epoch(encoder: FrozenEncoder, head: torch.nn.Module, waveforms: list, labels: np.ndarray) -> None:
    """One epoch the anchor's way: every batch of 8 is padded to 30 s and run through the encoder again."""
    optimizer = torch.optim.SGD(head.parameters(), lr=1e-3)
    order = np.random.default_rng(0).permutation(len(labels))
    for start in range(0, len(order), 8):
        batch = order[start : start + 8]
        encoded = torch.from_numpy(encoder([waveforms[i] for i in batch]).astype(np.float32))
        loss = torch.nn.functional.cross_entropy(head(encoded), torch.from_numpy(labels[batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def client_round_cost(corpus: KwsCorpus, options: KwsOptions, work: Path) -> dict:
    """Benchmark 2: one client's round — ours from the cache (5 local epochs) vs the anchor's (1 epoch, encoder inside)."""
    partition = speaker_partitioner(corpus.splits["train"], options.num_clients).load_partition(0)
    examples = corpus.examples(partition, seed=0)
    waveforms = examples.waveforms(list(range(len(examples))))
    short = FrozenEncoder(options.model, 1.0)
    cache = work / "cache-client"
    first_seconds, (features, _) = _seconds(encode_examples, short, examples, cache)
    head = build_head("pooled", short.positions, short.d_model, len(corpus.classes))

    def our_round():
        cached, _ = encode_examples(short, examples, cache)  # later rounds: read from the cache
        train_head(head, cached, examples.labels, TrainOptions(epochs=options.local_epochs, batch_size=options.batch_size,
                                                                learning_rate=options.learning_rate))

    ours, _ = _seconds(our_round)
    long = FrozenEncoder(options.model, 30.0, batch_size=8)
    anchor_head = build_head("anchor", long.positions, long.d_model, len(corpus.classes))
    theirs, _ = _seconds(anchor_epoch, long, anchor_head, waveforms, examples.labels)
    return {"client_clips": len(examples), "ours_first_round_encode_seconds": round(first_seconds, 2),
            "ours_round_seconds_from_cache": round(ours, 3), "ours_local_epochs": options.local_epochs,
            "anchor_round_seconds": round(theirs, 1), "anchor_local_epochs": 1, "ratio": round(theirs / ours, 1)}


def raspberry_pi_table(corpus: KwsCorpus, work: Path, encode_clips: int = 845, epoch_clips: int = 925) -> dict:
    """Benchmark 3: the anchor's Raspberry Pi 5 table (filter ~85k rows, encode 845 clips, one epoch over 925) here."""
    import datasets

    rng = np.random.default_rng(0)
    rows = 84_848  # google/speech_commands v0.02 train split
    speakers = [f"{i:08x}" for i in rng.integers(0, 2**32, size=2_112)]
    metadata = datasets.Dataset.from_dict({
        "file": [f"word/{i}.wav" for i in range(rows)], "speaker_id": [speakers[i] for i in rng.integers(0, len(speakers), rows)],
        "label": rng.integers(0, 35, rows).tolist()})
    client = set(speakers[:21])
    anchor_filter, subset = _seconds(lambda: metadata.filter(lambda row: row["speaker_id"] in client))
    partitioner = speaker_partitioner(metadata, 100)
    partitioner.load_partition(0)  # builds the index once per process
    ours_filter, _ = _seconds(partitioner.load_partition, 1)

    examples = corpus.examples(corpus.splits["train"], seed=0)
    waveforms = examples.waveforms(list(range(max(encode_clips, epoch_clips))))
    short, long = FrozenEncoder("tiny.en", 1.0), FrozenEncoder("tiny.en", 30.0, batch_size=8)
    ours_encode, features = _seconds(short, waveforms[:encode_clips])
    anchor_encode, _ = _seconds(long, waveforms[:encode_clips])

    labels = examples.labels[:epoch_clips]
    cached = short(waveforms[:epoch_clips])
    head = build_head("pooled", short.positions, short.d_model, len(corpus.classes))
    ours_epoch, _ = _seconds(train_head, head, cached, labels, TrainOptions(epochs=1))
    anchor_head = build_head("anchor", long.positions, long.d_model, len(corpus.classes))
    anchor_epoch_seconds, _ = _seconds(anchor_epoch, long, anchor_head, waveforms[:epoch_clips], labels)
    return {
        "filter_85k_rows_seconds": {"anchor_dataset_filter": round(anchor_filter, 2), "ours_flwr_datasets_partition": round(ours_filter, 3),
                                    "rows": rows, "client_rows_found": len(subset)},
        "encode_845_clips_seconds": {"anchor_30s": round(anchor_encode, 1), "ours_1s": round(ours_encode, 2)},
        "epoch_925_clips_seconds": {"anchor_encoder_every_epoch": round(anchor_epoch_seconds, 1), "ours_from_cache": round(ours_epoch, 2)},
        "raspberry_pi_5_reference": {"encode_845_clips": "66 s", "epoch_925_clips": "~20 min"},
        "head_parameters": {"anchor": parameter_count(anchor_head), "ours": parameter_count(head)},
    }


def full_scale(work: Path, speakers: int, rounds: int, central_epochs: int) -> dict:
    """Benchmark 4: ~2,100 synthetic speakers, 100 clients x 10 per round x 10 rounds, and centralized training."""
    corpus_dir = work / f"kws-{speakers}"
    synthesis = synthesize_speech_commands(corpus_dir, KwsSynthesisOptions(speakers=speakers))
    options = KwsOptions(corpus=str(corpus_dir), rounds=rounds, num_clients=100 if speakers >= 200 else 10, cache_dir=str(work / "cache-full"))
    federated_seconds, runlog = _seconds(simulate, options, work / "full-federated")
    central_seconds, central = _seconds(train_centralized, KwsOptions(corpus=str(corpus_dir), local_epochs=1, cache_dir=str(work / "cache-full")),
                                        work / "full-central", central_epochs)
    corpus = KwsCorpus(corpus_dir)
    return {
        "speakers": speakers, "clips": synthesis.written + synthesis.reused,
        "train_speakers": len(set(corpus.splits["train"]["speaker_id"])),
        "synthesis_seconds": round(synthesis.seconds, 1),
        "federated": {"wall_seconds": round(federated_seconds, 1),
                      "per_round": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in runlog.rounds]},
        "centralized": {"epochs": central_epochs, "wall_seconds": round(central_seconds, 1),
                        "test_accuracy": central.rounds[-1]["test_accuracy"], "validation_accuracy": central.rounds[-1]["validation_accuracy"]},
    }


def bench_kws(work: Path, small: bool) -> dict:
    demo_dir = work / "kws-300"
    synthesize_speech_commands(demo_dir, KwsSynthesisOptions(speakers=30 if small else 300))
    corpus = KwsCorpus(demo_dir)
    results = {"encoder_cost": encoder_cost(corpus, 64 if small else 512, 8 if small else 96)}
    results["window_accuracy"] = window_accuracy(corpus, work, train_speakers=4 if small else 40, epochs=3 if small else 10)
    results["client_round_cost"] = client_round_cost(corpus, KwsOptions(corpus=str(demo_dir), num_clients=10 if small else 100), work)
    results["raspberry_pi_table"] = raspberry_pi_table(corpus, work, 40 if small else 845, 48 if small else 925)
    results["full_scale"] = full_scale(work, 40 if small else 2100, 2 if small else 10, 2 if small else 10)
    return results
