"""Google Speech Commands v0.02 layout: reader, split rule and words.

Layout: ``ROOT/<word>/<speaker>_nohash_<n>.wav`` (1-s, 16 kHz), ``ROOT/_background_noise_/*.wav``,
``validation_list.txt`` and ``testing_list.txt`` with paths relative to ROOT. Files in neither
list are training files.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fedwhisper.data.corpus import audio_dataset, with_skipped
from fedwhisper.errors import FedwhisperError

WORDS = (
    "backward",
    "bed",
    "bird",
    "cat",
    "dog",
    "down",
    "eight",
    "five",
    "follow",
    "forward",
    "four",
    "go",
    "happy",
    "house",
    "learn",
    "left",
    "marvin",
    "nine",
    "no",
    "off",
    "on",
    "one",
    "right",
    "seven",
    "sheila",
    "six",
    "stop",
    "three",
    "tree",
    "two",
    "up",
    "visual",
    "wow",
    "yes",
    "zero",
)
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
BACKGROUND_NOISE_DIR = "_background_noise_"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
_MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
_FILE_NAME = re.compile(r"^(?P<speaker>[^_]+)_nohash_(?P<n>\d+)\.wav$")


def which_set(filename: str, validation_percentage: float = 10, testing_percentage: float = 10) -> str:
    """The split of ``filename`` by the hash of its speaker, as the dataset's own ``which_set`` does it,
    so all of one speaker's clips land in one split and the split never changes as the corpus grows."""
    speaker = re.sub(r"_nohash_.*$", "", Path(filename).name)
    hashed = hashlib.sha1(speaker.encode("utf-8")).hexdigest()
    percentage = (int(hashed, 16) % (_MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / _MAX_NUM_WAVS_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "test"
    return "train"


def parse_file_name(name: str) -> tuple[str, int] | None:
    """(speaker id, utterance number) from ``<speaker>_nohash_<n>.wav``, None for other names."""
    match = _FILE_NAME.match(name)
    return (match["speaker"], int(match["n"])) if match else None


def is_speech_commands(root: Path) -> bool:
    root = Path(root)
    return (root / VALIDATION_LIST).is_file() or (root / TESTING_LIST).is_file() or (root / BACKGROUND_NOISE_DIR).is_dir()


def background_noise_files(root: Path) -> list[Path]:
    return sorted((Path(root) / BACKGROUND_NOISE_DIR).glob("*.wav"))


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()} if path.is_file() else set()


def read_speech_commands(root: str | Path):
    """A ``datasets.DatasetDict`` (train / validation / test) with columns
    ``audio`` (path; datasets Audio, decoded by :func:`fedwhisper.audio.load_audio`), ``label`` (the word folder),
    ``speaker_id`` and ``utterance``. Any set of word folders works."""
    import datasets

    root = Path(root)
    if not root.is_dir():
        raise FedwhisperError(f"{root}: Speech Commands directory not found")
    lists = {"validation": _read_list(root / VALIDATION_LIST), "test": _read_list(root / TESTING_LIST)}
    columns = {split: {"audio": [], "label": [], "speaker_id": [], "utterance": []} for split in ("train", "validation", "test")}
    skipped = {}
    for word_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        for wav in sorted(word_dir.glob("*.wav")):
            parsed = parse_file_name(wav.name)
            if parsed is None:
                skipped[str(wav)] = "not named <speaker>_nohash_<n>.wav"
                continue
            relative = f"{word_dir.name}/{wav.name}"
            split = next((name for name, members in lists.items() if relative in members), "train")
            column = columns[split]
            column["audio"].append(str(wav))
            column["label"].append(word_dir.name)
            column["speaker_id"].append(parsed[0])
            column["utterance"].append(parsed[1])
    if not any(columns[split]["audio"] for split in columns):
        raise FedwhisperError(f"{root}: no <word>/<speaker>_nohash_<n>.wav files found")
    types = {"label": "string", "speaker_id": "string", "utterance": "int32"}
    corpus = datasets.DatasetDict({split: audio_dataset(data, types) for split, data in columns.items()})
    return with_skipped(corpus, skipped, root, "files")
