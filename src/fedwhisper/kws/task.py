"""What a keyword-spotting run needs, as plain functions over (options, partition, weights): the federated
client, the server's evaluation and the centralized baseline all call these; Flower code only moves weights."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedwhisper.data.partition import speaker_partitioner
from fedwhisper.data.speech_commands import COMMANDS
from fedwhisper.errors import FedwhisperError
from fedwhisper.features.cache import FeatureCache
from fedwhisper.features.encoder import FrozenEncoder
from fedwhisper.fl.defences import check_defences
from fedwhisper.kws import flower_example
from fedwhisper.kws.data import KwsCorpus, KwsExamples
from fedwhisper.kws.model import build_head
from fedwhisper.kws.train import TrainOptions, evaluate_head, train_head
from fedwhisper.models.registry import fedwhisper_home
from fedwhisper.run_config import RunConfigOptions, require
from fedwhisper.runs import RunDirectory

log = logging.getLogger("fedwhisper.kws")


@dataclass(frozen=True)
class KwsOptions(RunConfigOptions):
    """One run's settings. Flat scalars and strings, so they travel in a Flower ConfigRecord and a pyproject run config."""

    corpus: str = ""
    model: str = "tiny.en"
    window_seconds: float = 1.0
    keywords: str = ",".join(COMMANDS)
    head: str = "pooled"
    num_clients: int = 100
    clients_per_round: int = 10
    rounds: int = 10
    local_epochs: int = 5  # offices hold few speakers: more local work per round converges in fewer rounds
    batch_size: int = 16
    learning_rate: float = 2e-3
    optimizer: str = "adam"
    class_balanced: bool = True
    silence_fraction: float = 0.1
    min_client_examples: int = 8
    cache_dir: str = ""  # default: $FEDWHISPER_HOME/cache/kws; each client keeps its own sub-folder
    seed: int = 0
    recipe: str = "fedwhisper"  # or "flower-example": Flower's Whisper example's client, for comparison (kws/flower_example.py)
    strategy: str = "fedavg"  # or a rule robust to malicious clients: median, trimmed-mean, krum, multikrum, bulyan
    assumed_malicious: int = 2  # attackers per round the robust rules are set for
    norm_limit: float = 10.0  # an update longer than this many times the round's median is rejected (0: no limit)
    dp_noise_multiplier: float = 0.0  # > 0: central DP, updates clipped on the clients to --dp-clip, noise added by the server
    dp_clip: float = 1.0
    attack: str = "none"  # simulated attackers (fl/attacks.py): sign-flip, scale, random, label-flip
    attackers: int = 0  # clients partition-00000 .. attackers-1 attack
    min_clients: int = 1  # a round goes on with the clients still connected if at least this many; fewer trained: the model stays
    round_timeout: float = 3600.0  # seconds a round waits for its replies

    def __post_init__(self):
        """Ranges, choices and relations, checked wherever options are built (CLI, run config, resumed run): the
        option is named as the CLI spells it."""
        from fedwhisper.kws.model import HEADS
        from fedwhisper.kws.train import OPTIMIZERS

        for name in (
            "num_clients",
            "clients_per_round",
            "rounds",
            "local_epochs",
            "batch_size",
            "min_client_examples",
            "min_clients",
        ):
            require(getattr(self, name) >= 1, name, "must be at least 1", getattr(self, name))
        require(self.learning_rate > 0, "learning_rate", "must be positive", self.learning_rate)
        require(0 < self.window_seconds <= 30, "window_seconds", "must be in (0, 30] (Whisper's window)", self.window_seconds)
        require(0 <= self.silence_fraction <= 1, "silence_fraction", "must be in [0, 1]", self.silence_fraction)
        require(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}", self.optimizer)
        require(self.head in HEADS, "head", f"must be one of {', '.join(HEADS)}", self.head)
        require(self.recipe in RECIPES, "recipe", f"must be one of {', '.join(RECIPES)}", self.recipe)
        require(bool(self.keyword_tuple), "keywords", "must name at least one keyword", self.keywords)
        require(
            self.clients_per_round <= self.num_clients,
            "clients_per_round",
            f"must be at most --num-clients ({self.num_clients})",
            self.clients_per_round,
        )
        check_defences(self)
        require(
            self.min_clients <= self.clients_per_round,
            "min_clients",
            f"must be at most --clients-per-round ({self.clients_per_round})",
            self.min_clients,
        )
        require(self.round_timeout > 0, "round_timeout", "must be positive", self.round_timeout)

    @property
    def keyword_tuple(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.keywords.split(",") if k.strip())

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else fedwhisper_home() / "cache" / "kws"

    def check(self) -> None:
        """Fail before any work on what would fail later: the corpus, the keywords, clients vs speakers, the model."""
        resolved = with_recipe(self)
        check_keywords(resolved)
        client_partitions(resolved)
        encoder_for(resolved)  # loaded once per process: the server's evaluation reuses it

    def train_options(self, round_number: int, partition_id: int = 0) -> TrainOptions:
        return TrainOptions(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            class_balanced=self.class_balanced,
            seed=self.seed * 1_000_003 + round_number * 1_009 + partition_id,
        )


def check_keywords(options: KwsOptions) -> None:
    """Keywords the corpus never says are left out of the classes, in one warning line; a keyword said only outside
    the train split would be a class with nothing to learn from, and fails."""
    corpus = corpus_for(options)
    if absent := [k for k in options.keyword_tuple if k not in corpus.words]:
        log.warning(
            "--keywords: %s not in %s, left out; the classes are %s", ", ".join(absent), options.corpus, ", ".join(corpus.classes)
        )
    if untrained := [k for k in corpus.keywords_without_training_clips(options.keyword_tuple) if k in corpus.words]:
        raise FedwhisperError(
            f"--keywords: {', '.join(untrained)} said only outside the train split of {options.corpus}: "
            "a class with no training clips"
        )


# One corpus index and one encoder per process: a simulation actor serves many clients in turn.
@functools.cache
def kws_corpus(root: str, keywords: tuple[str, ...], silence_fraction: float) -> KwsCorpus:
    return KwsCorpus(root, keywords, silence_fraction)


@functools.cache
def frozen_encoder(model: str, window_seconds: float) -> FrozenEncoder:
    return FrozenEncoder(model, window_seconds)


@functools.cache
def partitioner(root: str, keywords: tuple[str, ...], silence_fraction: float, num_clients: int, seed: int):
    return speaker_partitioner(kws_corpus(root, keywords, silence_fraction).splits["train"], num_clients, seed)


def corpus_for(options: KwsOptions) -> KwsCorpus:
    if not options.corpus:
        raise FedwhisperError("no corpus given (options.corpus)")
    return kws_corpus(str(Path(options.corpus).resolve()), options.keyword_tuple, options.silence_fraction)


def encoder_for(options: KwsOptions) -> FrozenEncoder:
    return frozen_encoder(options.model, options.window_seconds)


def encode_examples(
    encoder: FrozenEncoder, examples: KwsExamples, cache_dir: Path, progress: bool = False
) -> tuple[np.ndarray, int]:
    """Encoder outputs of ``examples`` from the cache in ``cache_dir``, encoding only what is not there yet.
    A clip that does not decode gets a row of NaN (stored too, so it is not decoded again every round); ``usable``
    drops those rows. Returns (features, clips encoded now)."""

    def compute(indices: list[int]) -> np.ndarray:
        clips = examples.waveforms(indices)
        rows = np.full((len(indices), encoder.positions, encoder.d_model), np.nan, dtype=np.float16)
        good = [i for i, clip in enumerate(clips) if clip is not None]
        if good:
            rows[good] = encoder([clips[i] for i in good], progress=progress)
        return rows

    return FeatureCache(cache_dir, encoder.fingerprint).get_or_compute(examples.keys(), compute)


def usable(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The rows of clips that decoded, their labels, and how many were skipped."""
    good = ~np.isnan(features.reshape(len(features), -1)[:, 0]) if len(features) else np.zeros(0, dtype=bool)
    return features[good], labels[good], int((~good).sum())


# What the server sends each round; the rest of KwsOptions is the run's static config (Flower's run_config).
TRAINING_FIELDS = ("local_epochs", "batch_size", "learning_rate", "optimizer", "class_balanced", "min_client_examples")
RECIPES = ("fedwhisper", "flower-example")


def with_recipe(options: KwsOptions) -> KwsOptions:
    """``options`` with the settings its recipe fixes. ``flower-example`` takes Flower's Whisper example's client
    settings (kws/flower_example.py) and its partition: one client per 5 training speakers, 5 % of them per round."""
    if options.recipe == "fedwhisper":
        return options
    speakers = len(set(corpus_for(options).splits["train"]["speaker_id"]))
    clients, per_round = flower_example.clients_and_sample(speakers)
    recipe = flower_example.RECIPE
    return replace(
        options,
        window_seconds=recipe.window_seconds,
        head=recipe.head,
        num_clients=clients,
        clients_per_round=per_round,
        local_epochs=recipe.local_epochs,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        optimizer=recipe.optimizer,
        silence_fraction=recipe.silence_ratio,
        min_client_examples=recipe.min_full_batches * recipe.batch_size,
    )


def client_partitions(options: KwsOptions):
    """The flwr-datasets partitioner of this run's training speakers (built once per process)."""
    if options.recipe == "flower-example":
        return flower_example.grouped_partitioner(corpus_for(options))
    return partitioner(
        str(Path(options.corpus).resolve()), options.keyword_tuple, options.silence_fraction, options.num_clients, options.seed
    )


def client_examples(options: KwsOptions, partition_id: int) -> KwsExamples:
    """Client ``partition_id``'s clips and silence crops. A corpus of one client (a device's own, in a deployment) is its
    whole training split; ``partition_id`` still seeds the crops, so a deployed client is the simulated one."""
    corpus = corpus_for(options)
    shard = corpus.splits["train"] if options.num_clients == 1 else client_partitions(options).load_partition(partition_id)
    return corpus.examples(shard, seed=options.seed * 7919 + partition_id)


def write_client_corpora(options: KwsOptions, out: str | Path) -> list[Path]:
    """What each device of a deployment holds: ``out/partition-NNNNN``, a Speech Commands folder with only that
    client's training clips (hard links where the file system allows) and the background noise. Their names are the
    simulation's client names, so a deployment samples the same clients."""
    import shutil

    from fedwhisper.data.speech_commands import BACKGROUND_NOISE_DIR, background_noise_files

    corpus, partitions = corpus_for(options), client_partitions(options)
    folders = []
    for partition_id in range(options.num_clients):
        folder = Path(out) / f"partition-{partition_id:05d}"
        for source in [Path(a["path"]) for a in partitions.load_partition(partition_id)["audio"]] + background_noise_files(
            corpus.root
        ):
            target = (
                folder
                / (BACKGROUND_NOISE_DIR if source.parent.name == BACKGROUND_NOISE_DIR else source.parent.name)
                / source.name
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                try:
                    os.link(source, target)
                except OSError:  # another file system
                    shutil.copy2(source, target)
        folders.append(folder)
    return folders


def new_head(options: KwsOptions) -> torch.nn.Module:
    encoder = encoder_for(options)
    return build_head(options.head, encoder.positions, encoder.d_model, len(corpus_for(options).classes), options.seed)


def head_meta(options: KwsOptions) -> dict:
    encoder = encoder_for(options)
    return {
        "head": options.head,
        "model": options.model,
        "window_seconds": options.window_seconds,
        "positions": encoder.positions,
        "d_model": encoder.d_model,
        "classes": list(corpus_for(options).classes),
    }


def client_update(
    options: KwsOptions, partition_id: int, state: dict[str, torch.Tensor], round_number: int, flip_labels: bool = False
) -> tuple[dict | None, dict]:
    """One client's round: encode its own clips once (cached on its disk), train the head from the cache.
    ``flip_labels``: a label-flipping attacker's round (every clip trained as the next class).

    Returns (new head weights, metrics); weights are None when the client has too few examples to train.
    """
    if options.recipe == "flower-example":
        return _flower_example_update(options, partition_id, state, round_number)
    started = time.perf_counter()
    examples = client_examples(options, partition_id)
    if len(examples) < options.min_client_examples:
        return None, {"num-examples": 0}
    features, encoded_now = encode_examples(encoder_for(options), examples, options.cache_root / f"client-{partition_id}")
    features, labels, skipped = usable(features, examples.labels)
    if len(labels) < options.min_client_examples:
        return None, {"num-examples": 0, "skipped-clips": skipped}
    encoded_at = time.perf_counter()
    head = new_head(options)
    head.load_state_dict(state)
    if flip_labels:
        labels = (labels + 1) % len(corpus_for(options).classes)
    metrics = train_head(head, features, labels, options.train_options(round_number, partition_id))
    finished = time.perf_counter()
    metrics |= {
        "encoded-clips": encoded_now,
        "skipped-clips": skipped,
        "encode-seconds": encoded_at - started,
        "train-seconds": finished - encoded_at,
        "round-seconds": finished - started,
    }
    return {k: v.detach().clone() for k, v in head.state_dict().items()}, metrics


def _flower_example_update(options: KwsOptions, partition_id: int, state: dict, round_number: int) -> tuple[dict | None, dict]:
    """A client's round as Flower's Whisper example runs it: data loaded and log-mel computed again every round,
    the 30-s encoder run inside training on every batch."""
    started = time.perf_counter()
    encoder = encoder_for(options)
    seed = options.train_options(round_number, partition_id).seed
    dataset = flower_example.load_client_data(
        corpus_for(options), encoder.feature_extractor, partition_id, np.random.default_rng(seed)
    )
    loaded_at = time.perf_counter()
    head = new_head(options)
    head.load_state_dict(state)
    metrics = flower_example.train_one_round(encoder.encoder, head, dataset, torch.Generator().manual_seed(seed))
    finished = time.perf_counter()
    timing = {"load-seconds": loaded_at - started, "train-seconds": finished - loaded_at, "round-seconds": finished - started}
    if metrics is None:
        return None, {"num-examples": 0, **timing}
    metrics |= {"encoded-clips": metrics["steps"] * flower_example.RECIPE.batch_size, **timing}
    return {k: v.detach().clone() for k, v in head.state_dict().items()}, metrics


class SplitEvaluator:
    """Server-side evaluation on whole splits (validation, test) of speakers no client holds."""

    def __init__(self, options: KwsOptions, splits: tuple[str, ...] = ("validation", "test"), progress: bool = True):
        corpus = corpus_for(options)
        self.sets = {}
        for offset, split in enumerate(splits):
            if split not in corpus.splits or len(corpus.splits[split]) == 0:
                continue
            examples = corpus.examples(corpus.splits[split], seed=options.seed * 7919 + 10_000_000 + offset)
            features, _ = encode_examples(encoder_for(options), examples, options.cache_root / "server", progress=progress)
            features, labels, skipped = usable(features, examples.labels)
            if skipped:
                log.warning("%s: %d %s clips do not decode and are left out of the evaluation", options.corpus, skipped, split)
            if len(labels):
                self.sets[split] = (features, labels)
        if not self.sets:
            raise FedwhisperError(f"{options.corpus}: no {' or '.join(splits)} examples to evaluate on")

    def __call__(self, head: torch.nn.Module) -> dict[str, float]:
        metrics = {}
        for split, (features, labels) in self.sets.items():
            result = evaluate_head(head, features, labels)
            metrics[f"{split}_accuracy"] = result["accuracy"]
            metrics[f"{split}_loss"] = result["loss"]
        return metrics


def train_centralized(options: KwsOptions, run_dir: str | Path, epochs: int = 10, on_epoch=None) -> RunDirectory:
    """The baseline without federation: one head trained on every training speaker's clips, evaluated each epoch
    on the same held-out speakers as the federated run."""
    run = RunDirectory(run_dir)
    run.start({**options.to_config(), "epochs": epochs}, resume=False)
    check_keywords(options)
    corpus = corpus_for(options)
    examples = corpus.examples(corpus.splits["train"], seed=options.seed * 7919 + 20_000_000)
    features, _ = encode_examples(encoder_for(options), examples, options.cache_root / "central", progress=True)
    features, labels, skipped = usable(features, examples.labels)
    if skipped:
        log.warning("%s: %d training clips do not decode and are left out", options.corpus, skipped)
    evaluator = SplitEvaluator(options)
    head, meta = new_head(options), head_meta(options)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        metrics = train_head(head, features, labels, options.train_options(epoch))
        row = {
            "round": epoch,
            **evaluator(head),
            "train_loss": metrics["train_loss"],
            "seconds": round(time.perf_counter() - started, 2),
        }
        run.save_arrays(f"head-round-{epoch:03d}", head.state_dict(), meta)
        run.save_arrays("head", head.state_dict(), meta)
        run.record(row)
        plot_accuracy(run.rows, run.path / "accuracy.png")
        if on_epoch:
            on_epoch(row)
    return run


def plot_accuracy(rows: list[dict], path: Path) -> None:
    """Held-out accuracy per round (or epoch) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    rounds = [row["round"] for row in rows]
    for key, label in (("validation_accuracy", "validation speakers"), ("test_accuracy", "held-out test speakers")):
        if any(key in row for row in rows):
            axis.plot(rounds, [row.get(key) for row in rows], marker="o", label=label)
    axis.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title="Keyword spotting: held-out accuracy")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def head_encoder_and_corpus(head_meta_: dict, corpus: str | Path | None = None):
    """The encoder a saved head was trained on, and optionally a corpus read with the head's class set."""
    encoder = frozen_encoder(head_meta_["model"], float(head_meta_["window_seconds"]))
    if corpus is None:
        return encoder, None
    from fedwhisper.kws.data import SILENCE, UNKNOWN

    keywords = tuple(c for c in head_meta_["classes"] if c not in (SILENCE, UNKNOWN))
    return encoder, KwsCorpus(Path(corpus).resolve(), keywords, 0.1, classes=tuple(head_meta_["classes"]))


def evaluate_saved_head(head_path: str | Path, corpus: str | Path, split: str = "test") -> dict:
    """Accuracy of a saved head on a corpus split, overall and per class (the classes the head was trained on)."""
    from fedwhisper.kws.model import load_head
    from fedwhisper.kws.train import predict_proba

    head, meta = load_head(head_path)
    encoder, kws = head_encoder_and_corpus(meta, corpus)
    if split not in kws.splits or len(kws.splits[split]) == 0:
        raise FedwhisperError(f"{corpus} has no {split} clips")
    examples = kws.examples(kws.splits[split], seed=1)
    scorable = [i for i in range(len(examples)) if examples.labels[i] >= 0]  # words the head has no class for: not scored
    unscored_words = sorted({w for w in kws.splits[split]["label"] if kws.label_of(w) < 0})
    clips = dict(zip(scorable, examples.waveforms(scorable)))
    good = [i for i in scorable if clips[i] is not None]
    if not good:
        raise FedwhisperError(f"{corpus}: none of the {split} clips decodes or belongs to the head's classes {meta['classes']}")
    labels = examples.labels[good]
    predicted = predict_proba(head, encoder([clips[i] for i in good], progress=True)).argmax(-1)
    per_class = [
        {"class": name, "clips": int((labels == index).sum()), "accuracy": float(np.mean(predicted[labels == index] == index))}
        for index, name in enumerate(meta["classes"])
        if (labels == index).any()
    ]
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "clips": len(good),
        "skipped": len(scorable) - len(good),
        "per_class": per_class,
        "absent_classes": [name for index, name in enumerate(meta["classes"]) if not (labels == index).any()],
        "unscored_words": unscored_words,
        "unscored_clips": len(examples) - len(scorable),
    }
