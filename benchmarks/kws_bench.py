"""Keyword-spotting benchmarks: our recipe (1-s window, encode once, train from the cache), its ablations (30-s window),
and Flower's Whisper example's client reproduced setting by setting (kws/flower_example.py) as the anchor.
Every ratio is measured in one run on this machine; each part runs alone (`run.py kws:flower_example`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fedwhisper.data.synth_kws import KwsSynthesisOptions, synthesize_speech_commands
from fedwhisper.features.encoder import FrozenEncoder
from fedwhisper.fl.kws_app import simulate
from fedwhisper.kws.data import KwsCorpus
from fedwhisper.kws.model import build_head, parameter_count
from fedwhisper.kws.task import KwsOptions, encode_examples, new_head, train_centralized, with_recipe
from fedwhisper.kws.train import TrainOptions, evaluate_head, train_head


def _seconds(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def encoder_macs(encoder: FrozenEncoder) -> int:
    """Multiply-adds of one encoder pass at ``encoder``'s window, from the model's shapes: the arithmetic bound
    on how much cheaper a shorter window can be (convolutions and linear layers scale with length, attention with its square)."""
    config = encoder.encoder.config
    d, ffn, layers, frames, positions = (
        config.d_model,
        config.encoder_ffn_dim,
        config.encoder_layers,
        encoder.frames,
        encoder.positions,
    )
    convolutions = frames * d * config.num_mel_bins * 3 + positions * d * d * 3
    per_token = 4 * d * d + 2 * d * ffn  # q, k, v, out projections and the two feed-forward layers
    attention = 2 * positions * positions * d  # scores and weighted sum
    return int(convolutions + layers * (positions * per_token + attention))


def encoder_cost(corpus: KwsCorpus, clips_short: int, clips_long: int, repeats: int = 5) -> dict:
    """Benchmark 1: seconds per 1-s clip, log-mel included, at the 1-s window and padded to 30 s.
    Each repetition times both in turn, so machine noise hits both sides; the median ratio is reported."""
    rows = corpus.splits["train"].select(range(clips_short))
    waveforms = corpus.examples(rows, seed=0).waveforms(list(range(clips_short)))
    short, long = FrozenEncoder("tiny.en", 1.0), FrozenEncoder("tiny.en", 30.0)
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
    return {
        "ms_per_clip_1s_window": round(1000 * per_short, 2),
        "ms_per_clip_30s_padding": round(1000 * per_long, 1),
        "ratio": round(float(np.median(ratios)), 1),
        "ratio_range": [round(ratios[0], 1), round(ratios[-1], 1)],
        "multiply_adds": {
            "1s": encoder_macs(short),
            "30s": encoder_macs(long),
            "ratio": round(encoder_macs(long) / encoder_macs(short), 1),
        },
        "repeats": repeats,
        "clips_timed": {"1s": clips_short, "30s": clips_long},
    }


def window_accuracy(corpus: KwsCorpus, work: Path, train_speakers: int, epochs: int) -> dict:
    """Benchmark 1b: the same head, trained centrally on the same clips of ``train_speakers`` training speakers,
    tested on every test speaker of the corpus, at the 1-s window and padded to 30 s."""
    speakers = sorted(set(corpus.splits["train"]["speaker_id"]))[:train_speakers]
    chosen = set(speakers)
    train = corpus.examples(corpus.splits["train"].filter(lambda row: row["speaker_id"] in chosen), seed=1)
    test = corpus.examples(corpus.splits["test"], seed=2)
    results: dict = {
        "train_clips": len(train),
        "test_clips": len(test),
        "test_speakers": len(set(corpus.splits["test"]["speaker_id"])),
    }
    for window in (1.0, 30.0):
        encoder = FrozenEncoder("tiny.en", window)
        started = time.perf_counter()
        train_features, _ = encode_examples(encoder, train, work / "cache-window", progress=True)
        test_features, _ = encode_examples(encoder, test, work / "cache-window", progress=True)
        encode_seconds = time.perf_counter() - started
        head = build_head("pooled", encoder.positions, encoder.d_model, len(corpus.classes))
        curve = []
        for epoch in range(epochs):
            train_head(head, train_features, train.labels, TrainOptions(epochs=1, batch_size=16, learning_rate=1e-3, seed=epoch))
            curve.append(round(evaluate_head(head, test_features, test.labels)["accuracy"], 4))
        results[f"{window:g}s"] = {
            "test_accuracy_per_epoch": curve,
            "final": curve[-1],
            "mean_last_3": round(float(np.mean(curve[-3:])), 4),
            "encode_seconds": round(encode_seconds, 1),
        }
    results["difference_points_mean_last_3"] = round(100 * (results["1s"]["mean_last_3"] - results["30s"]["mean_last_3"]), 2)
    return results


def _client_rounds(rows: list[dict]) -> list[dict]:
    """Every sampled client's round after round 0: its examples and the seconds it measured (load, encode, train)."""
    clients = []
    for row in rows[1:]:
        for i, examples in enumerate(row.get("client_num_examples", [])):
            entry = {"round": row["round"], "examples": examples}
            for key in ("encoded_clips", "load_seconds", "encode_seconds", "train_seconds", "round_seconds"):
                if f"client_{key}" in row:
                    entry[key] = row[f"client_{key}"][i]
            clients.append(entry)
    return clients


def flower_example(corpus_dir: Path, work: Path, rounds: int, our_clients: int) -> dict:
    """The anchor rows: Flower's Whisper example's client (``--recipe flower-example``, kws/flower_example.py) federated
    for ``rounds`` rounds on the demo corpus, and our default recipe on the same corpus, evaluated on the same held-out
    speakers by the same server code, in the same run. Each client runs on one core (Ray, num_cpus=1)."""
    results: dict = {}
    for recipe in ("fedwhisper", "flower-example"):
        options = KwsOptions(
            corpus=str(corpus_dir), rounds=rounds, recipe=recipe, num_clients=our_clients, cache_dir=str(work / "cache-recipes")
        )
        resolved = with_recipe(options)
        seconds, run = _seconds(simulate, options, work / f"run-{recipe}")
        clients = _client_rounds(run.rows)
        trained = [c for c in clients if c.get("train_seconds") is not None]
        entry = {
            "settings": {k: v for k, v in resolved.to_config().items() if k not in ("corpus", "cache_dir", "keywords")},
            "head_parameters": parameter_count(new_head(resolved)),
            "wall_seconds": round(seconds, 1),
            "test_accuracy_per_round": [round(row["test_accuracy"], 4) for row in run.rows],
            "validation_accuracy_per_round": [round(row["validation_accuracy"], 4) for row in run.rows],
            "clients_trained_per_round": [row.get("clients_trained") for row in run.rows[1:]],
            "client_rounds": clients,
            "client_round_seconds_mean": round(float(np.mean([c["round_seconds"] for c in trained])), 3),
            "client_round_seconds_range": [min(c["round_seconds"] for c in trained), max(c["round_seconds"] for c in trained)],
            "client_examples_mean": round(float(np.mean([c["examples"] for c in trained])), 1),
        }
        if recipe == "flower-example":
            encoded = sum(c["encoded_clips"] for c in trained)
            entry["encoder_seconds_per_clip"] = round(sum(c["encode_seconds"] for c in trained) / encoded, 4)
            entry["load_seconds_mean"] = round(float(np.mean([c["load_seconds"] for c in trained])), 2)
        else:
            first = [c for c in trained if c["encoded_clips"]]
            entry["encoder_seconds_per_clip"] = round(
                sum(c["encode_seconds"] for c in first) / sum(c["encoded_clips"] for c in first), 4
            )
            entry["first_round_seconds_mean"] = round(float(np.mean([c["round_seconds"] for c in first])), 3)
            entry["cached_round_seconds_mean"] = round(
                float(np.mean([c["round_seconds"] for c in trained if not c["encoded_clips"]] or [0])), 3
            )
        results[recipe] = entry
    return results


def full_scale(work: Path, speakers: int, rounds: int, central_epochs: int) -> dict:
    """Benchmark 4: ~2,100 synthetic speakers, 100 clients x 10 per round x 10 rounds, and centralized training."""
    corpus_dir = work / f"kws-{speakers}"
    synthesis = synthesize_speech_commands(corpus_dir, KwsSynthesisOptions(speakers=speakers))
    options = KwsOptions(
        corpus=str(corpus_dir), rounds=rounds, num_clients=100 if speakers >= 200 else 10, cache_dir=str(work / "cache-full")
    )
    federated_seconds, run = _seconds(simulate, options, work / "full-federated")
    central_seconds, central = _seconds(
        train_centralized,
        KwsOptions(corpus=str(corpus_dir), local_epochs=1, cache_dir=str(work / "cache-full")),
        work / "full-central",
        central_epochs,
    )
    corpus = KwsCorpus(corpus_dir)
    return {
        "speakers": speakers,
        "clips": synthesis.written + synthesis.reused,
        "train_speakers": len(set(corpus.splits["train"]["speaker_id"])),
        "synthesis_seconds": round(synthesis.seconds, 1),
        "federated": {
            "wall_seconds": round(federated_seconds, 1),
            "per_round": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in run.rows],
        },
        "centralized": {
            "epochs": central_epochs,
            "wall_seconds": round(central_seconds, 1),
            "test_accuracy": central.rows[-1]["test_accuracy"],
            "validation_accuracy": central.rows[-1]["validation_accuracy"],
        },
    }


def demo_corpus(work: Path, small: bool) -> KwsCorpus:
    directory = work / "kws-300"
    synthesize_speech_commands(directory, KwsSynthesisOptions(speakers=30 if small else 300))
    return KwsCorpus(directory)


def _kws_parts() -> dict:
    """Each part with the options it runs with, recorded in its results entry."""

    def encoder_cost_part(work: Path, small: bool) -> dict:
        options = {"model": "tiny.en", "speakers": 30 if small else 300, "clips_short": 64 if small else 512}
        options |= {"clips_long": 8 if small else 96, "repeats": 5}
        corpus = demo_corpus(work, small)
        return {**encoder_cost(corpus, options["clips_short"], options["clips_long"], options["repeats"]), "options": options}

    def window_accuracy_part(work: Path, small: bool) -> dict:
        options = {"model": "tiny.en", "speakers": 30 if small else 300, "train_speakers": 4 if small else 40}
        options |= {"epochs": 3 if small else 10}
        result = window_accuracy(demo_corpus(work, small), work, options["train_speakers"], options["epochs"])
        return {**result, "options": options}

    def flower_example_part(work: Path, small: bool) -> dict:
        options = {"speakers": 30 if small else 300, "rounds": 2 if small else 10, "our_clients": 10 if small else 100}
        result = flower_example(demo_corpus(work, small).root, work, options["rounds"], options["our_clients"])
        return {**result, "options": options}

    def full_scale_part(work: Path, small: bool) -> dict:
        options = {"speakers": 40 if small else 2100, "rounds": 2 if small else 10, "central_epochs": 2 if small else 10}
        return {**full_scale(work, options["speakers"], options["rounds"], options["central_epochs"]), "options": options}

    return {
        "encoder_cost": encoder_cost_part,
        "window_accuracy": window_accuracy_part,
        "flower_example": flower_example_part,
        "full_scale": full_scale_part,
    }


PARTS = _kws_parts()
