"""Common Voice layout: ``clips/`` plus ``train.tsv``, ``dev.tsv``, ``test.tsv`` with columns
``path`` (file in clips/), ``sentence`` and ``client_id`` (the speaker)."""

from __future__ import annotations

import csv
from pathlib import Path

from fedwhisper.data.corpus import audio_dataset, with_skipped
from fedwhisper.errors import FedwhisperError

SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}


def is_common_voice(root: Path) -> bool:
    root = Path(root)
    return (root / "clips").is_dir() and any((root / name).is_file() for name in SPLIT_FILES.values())


def read_common_voice(root: str | Path):
    """A ``datasets.DatasetDict`` (train / validation / test, those present) with columns
    ``audio``, ``transcription`` and ``speaker_id``. Rows whose clip is missing or that name no speaker are left out and
    named in ``.skipped``."""
    import datasets

    root = Path(root)
    if not is_common_voice(root):
        raise FedwhisperError(f"{root}: not a Common Voice directory (clips/ and train.tsv/dev.tsv/test.tsv)")
    corpus, skipped = {}, {}
    for split, name in SPLIT_FILES.items():
        tsv = root / name
        if not tsv.is_file():
            continue
        columns: dict[str, list] = {"audio": [], "transcription": [], "speaker_id": []}
        with open(tsv, newline="", encoding="utf-8") as stream:
            # Common Voice sentences contain quotes; the TSVs are not CSV-quoted.
            reader = csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
            for field in ("path", "sentence", "client_id"):
                if field not in (reader.fieldnames or []):
                    raise FedwhisperError(f"{tsv}: missing column {field!r}")
            for row in reader:
                clip = root / "clips" / row["path"]
                if not clip.is_file() or not row["client_id"]:
                    skipped[str(clip)] = "not found" if not clip.is_file() else "no client_id (speaker)"
                    continue
                columns["audio"].append(str(clip))
                columns["transcription"].append(row["sentence"] or "")
                columns["speaker_id"].append(row["client_id"])
        corpus[split] = audio_dataset(columns, {"transcription": "string", "speaker_id": "string"})
    return with_skipped(datasets.DatasetDict(corpus), skipped, root, "rows")
