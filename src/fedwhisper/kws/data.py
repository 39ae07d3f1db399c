"""Keyword-spotting examples: the class set, labels, `_silence_` crops, and speaker-grouped client partitions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedwhisper.audio import SAMPLE_RATE, AudioError, load_audio
from fedwhisper.data.speech_commands import COMMANDS, background_noise_files, read_speech_commands
from fedwhisper.errors import FedwhisperError
from fedwhisper.features.cache import content_key

log = logging.getLogger("fedwhisper.kws")
SILENCE = "_silence_"
UNKNOWN = "_unknown_"


def class_names(words: set[str], keywords: tuple[str, ...] = COMMANDS, has_noise: bool = True) -> tuple[str, ...]:
    """The keywords present in the corpus, then `_silence_` if background noise exists, then `_unknown_` if other words do."""
    present = tuple(k for k in keywords if k in words)
    if not present:
        raise FedwhisperError(
            f"none of the keywords {', '.join(keywords)} is a word folder of this corpus ({', '.join(sorted(words))})"
        )
    classes = present + ((SILENCE,) if has_noise else ()) + ((UNKNOWN,) if words - set(present) else ())
    if len(classes) < 2:  # one class is learnt to "100 %" and means nothing
        raise FedwhisperError(
            f"the corpus gives one class ({classes[0]}): keyword spotting needs at least two "
            "(more keywords, other words for _unknown_, or _background_noise_ for _silence_)"
        )
    return classes


@dataclass
class KwsExamples:
    """Clips with class indices. ``audio`` holds datasets entries ({path, bytes}) or arrays (silence crops)."""

    audio: list
    labels: np.ndarray
    speakers: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def keys(self) -> list[str]:
        return [_key(a) for a in self.audio]

    def waveforms(self, indices: list[int]) -> list[np.ndarray | None]:
        """The clips at ``indices``; None for a clip that does not decode (logged here, on the device that holds it)."""
        return [a if isinstance(a, np.ndarray) else _decode(a) for a in (self.audio[i] for i in indices)]


def _key(entry) -> str:
    try:
        return content_key(entry)
    except OSError:  # missing or unreadable: a key of its own, so it is skipped like any clip that does not decode
        return f"unreadable:{entry['path'] if isinstance(entry, dict) else entry}"


def _decode(entry) -> np.ndarray | None:
    try:
        return load_audio(entry, allow_silent=True)
    except AudioError as error:
        log.warning("skipped: %s", error)
        return None


def silence_crops(noise: list[np.ndarray], count: int, seed: int) -> list[np.ndarray]:
    """``count`` distinct 1-s crops of background noise at random offsets and levels.

    (Flower's example drew the same crop every time; these differ by file, offset and gain.)"""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        source = noise[int(rng.integers(len(noise)))]
        start = int(rng.integers(0, max(1, source.size - SAMPLE_RATE)))
        crop = source[start : start + SAMPLE_RATE]
        crops.append((np.pad(crop, (0, SAMPLE_RATE - crop.size)) * rng.uniform(0.05, 1.0)).astype(np.float32))
    return crops


class KwsCorpus:
    """A Speech Commands-layout corpus seen through a fixed class set."""

    def __init__(
        self,
        root: str | Path,
        keywords: tuple[str, ...] = COMMANDS,
        silence_fraction: float = 0.1,
        classes: tuple[str, ...] | None = None,
    ):
        """``classes``: a trained head's class set, kept as it is (evaluation); otherwise the corpus decides it."""
        self.root = Path(root)
        self.splits = read_speech_commands(self.root)
        self.words = {w for split in self.splits.values() for w in set(split["label"])}
        self.noise = [load_audio(p, allow_silent=True) for p in background_noise_files(self.root)]
        self.classes = tuple(classes) if classes else class_names(self.words, keywords, has_noise=bool(self.noise))
        self.silence_fraction = silence_fraction if self.noise else 0.0

    def label_of(self, word: str) -> int:
        """The class of a clip's word; -1 for a word the class set has no place for (a head without ``_unknown_``)."""
        if word in self.classes:
            return self.classes.index(word)
        return self.classes.index(UNKNOWN) if UNKNOWN in self.classes else -1

    def keywords_without_training_clips(self, keywords: tuple[str, ...]) -> list[str]:
        """The keywords no clip of the train split says: a class with nothing to learn from."""
        said = set(self.splits["train"]["label"]) if "train" in self.splits else set()
        return [k for k in keywords if k not in said]

    def examples(self, dataset, seed: int) -> KwsExamples:
        """Rows of ``dataset`` (a split or a partition of one) plus silence crops, ``silence_fraction`` of its size."""
        audio = list(dataset["audio"])
        labels = [self.label_of(w) for w in dataset["label"]]
        speakers = list(dataset["speaker_id"])
        if self.noise and SILENCE in self.classes:
            silence = silence_crops(self.noise, round(self.silence_fraction * len(audio)), seed)
            audio += silence
            labels += [self.classes.index(SILENCE)] * len(silence)
            speakers += [SILENCE] * len(silence)
        return KwsExamples(audio=audio, labels=np.asarray(labels, dtype=np.int64), speakers=speakers)
