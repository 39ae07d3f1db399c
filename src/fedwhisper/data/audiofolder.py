"""Hugging Face audiofolder layout: audio files with ``metadata.csv`` (or ``metadata.jsonl``) whose
``file_name`` column is relative to the metadata file. Splits are sub-folders (train/, validation/, test/)
each with its own metadata, or one metadata file at the root (a single train split)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fedwhisper.data.corpus import audio_dataset, with_skipped
from fedwhisper.errors import FedwhisperError

METADATA_NAMES = ("metadata.csv", "metadata.jsonl")
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation", "test": "test"}
TEXT_COLUMNS = ("transcription", "sentence", "text")


def is_audiofolder(root: Path) -> bool:
    root = Path(root)
    return any((root / name).is_file() for name in METADATA_NAMES) or any(
        (root / split / name).is_file() for split in SPLIT_NAMES for name in METADATA_NAMES
    )


def _read_metadata(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise FedwhisperError(f"{path}:{number}: not JSON ({error})") from None
        return rows
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def _split_rows(metadata: Path, skipped: dict[str, str]) -> dict[str, list]:
    """Columns of one split: audio, transcription (empty where the metadata has none), speaker_id, plus any other
    metadata columns as strings. A row whose file is missing, or without a speaker where the metadata has a speaker
    column, goes to ``skipped``."""
    rows = _read_metadata(metadata)
    columns: dict[str, list] = {"audio": [], "transcription": [], "speaker_id": []}
    if not rows:
        return columns
    if "file_name" not in rows[0]:
        raise FedwhisperError(f"{metadata}: no 'file_name' column (columns: {', '.join(rows[0])})")
    text_column = next((name for name in TEXT_COLUMNS if name in rows[0]), None)  # None: untranscribed audio (empty texts)
    extra = [name for name in rows[0] if name not in {"file_name", text_column, "speaker_id", *columns}]
    columns |= {name: [] for name in extra}
    speaker_column = next((name for name in ("speaker_id", "client_id") if name in rows[0]), None)
    for row in rows:
        path = metadata.parent / row["file_name"]
        speaker = str(row.get(speaker_column) or "") if speaker_column else ""
        if not path.is_file() or (speaker_column and not speaker):
            skipped[str(path)] = "not found" if not path.is_file() else f"no {speaker_column}"
            continue
        columns["audio"].append(str(path))
        columns["transcription"].append((row[text_column] if text_column else "") or "")
        columns["speaker_id"].append(speaker)
        for name in extra:
            columns[name].append("" if row.get(name) is None else str(row[name]))
    return columns


def read_audiofolder(root: str | Path):
    """A ``datasets.DatasetDict`` with columns ``audio``, ``transcription`` and ``speaker_id``.
    Rows whose audio file is missing or that name no speaker are left out and named in ``.skipped``."""
    import datasets

    root = Path(root)
    metadata_files = {
        split: metadata
        for folder, split in SPLIT_NAMES.items()
        for metadata in [next((root / folder / n for n in METADATA_NAMES if (root / folder / n).is_file()), None)]
        if metadata is not None
    }
    if not metadata_files:
        single = next((root / n for n in METADATA_NAMES if (root / n).is_file()), None)
        if single is None:
            raise FedwhisperError(f"{root}: no metadata.csv or metadata.jsonl (audiofolder layout)")
        metadata_files = {"train": single}
    corpus, skipped = {}, {}
    for split, metadata in metadata_files.items():
        columns = _split_rows(metadata, skipped)
        corpus[split] = audio_dataset(columns, {name: "string" for name in columns if name != "audio"})
    return with_skipped(datasets.DatasetDict(corpus), skipped, root, "metadata rows")
