"""Encoder outputs kept on the local disk of whoever computed them: the one store behind keyword spotting's clips and
ASR's frozen-encoder batches.

One store per encoder identity (weights + window, or + frozen blocks): ``ROOT/<fingerprint>/chunk-NNNNN.npy`` (float16
rows) each with ``chunk-NNNNN.keys.json`` (the key of each row: a clip's content hash, or a dataset row). Chunks are
written as they are computed (array first, then its keys, each atomically), so an interrupted encoding resumes at the
first missing chunk; a chunk whose keys file is missing or does not match its rows is ignored and computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fedwhisper.files import atomic_path, write_json

log = logging.getLogger("fedwhisper.features")


def content_key(entry) -> str:
    """Hash of a clip's content: file bytes for paths and datasets entries, sample bytes for arrays."""
    digest = hashlib.sha1()
    if isinstance(entry, np.ndarray):
        digest.update(np.ascontiguousarray(entry, dtype=np.float32).tobytes())
    elif isinstance(entry, dict) and entry.get("bytes"):
        digest.update(entry["bytes"])
    else:
        path = entry["path"] if isinstance(entry, dict) else entry
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


class FeatureCache:
    def __init__(self, root: str | os.PathLike, fingerprint: str):
        self.directory = Path(root) / fingerprint
        self.directory.mkdir(parents=True, exist_ok=True)
        self._where: dict[str, tuple[int, int]] = {}  # key -> (chunk, row)
        self._chunks: dict[int, np.ndarray] = {}
        self._seen: set[int] = set()
        self._next_chunk = 0
        self._refresh()

    def _refresh(self) -> None:
        """Index the chunks on disk not indexed yet (another process may have added some)."""
        for keys_file in sorted(self.directory.glob("chunk-*.keys.json")):
            chunk = int(keys_file.name[len("chunk-") :].split(".")[0])
            self._next_chunk = max(self._next_chunk, chunk + 1)
            if chunk in self._seen:
                continue
            self._seen.add(chunk)
            try:
                keys = json.loads(keys_file.read_text())
                rows = np.load(self._chunk_path(chunk), mmap_mode="r")
            except (OSError, ValueError) as error:
                log.warning("%s: damaged cache chunk left out, its rows are encoded again (%s)", keys_file, error)
                continue
            if len(keys) != len(rows):
                log.warning(
                    "%s: %d keys for %d rows, chunk left out; its rows are encoded again", keys_file, len(keys), len(rows)
                )
                continue
            self._chunks[chunk] = rows
            self._where.update((key, (chunk, row)) for row, key in enumerate(keys))

    def __len__(self) -> int:
        self._refresh()
        return len(self._where)

    def _chunk_path(self, chunk: int) -> Path:
        return self.directory / f"chunk-{chunk:05d}.npy"

    def missing(self, keys: Sequence[str]) -> list[int]:
        """Positions in ``keys`` of the first occurrence of each key not stored yet."""
        self._refresh()
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in self._where:
                first.setdefault(key, i)
        return list(first.values())

    def add(self, keys: Sequence[str], outputs: np.ndarray) -> None:
        """Store ``outputs`` (one row per key) as a new chunk."""
        self._refresh()
        chunk, self._next_chunk = self._next_chunk, self._next_chunk + 1
        with atomic_path(self._chunk_path(chunk)) as partial, open(partial, "wb") as stream:
            np.save(stream, np.asarray(outputs, dtype=np.float16))
        write_json(self.directory / f"chunk-{chunk:05d}.keys.json", list(keys))
        self._seen.add(chunk)
        self._chunks[chunk] = np.load(self._chunk_path(chunk), mmap_mode="r")
        self._where.update((key, (chunk, row)) for row, key in enumerate(keys))

    def row_shape(self, key: str) -> tuple[int, ...]:
        """The shape of ``key``'s stored row (KeyError if not stored)."""
        return self._chunks[self._where[key][0]].shape[1:]

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The stored rows of ``keys``, in order (KeyError for a key not stored)."""
        return np.stack([self._chunks[chunk][row] for chunk, row in (self._where[key] for key in keys)])

    def get_or_compute(
        self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray], chunk_rows: int = 1024
    ) -> tuple[np.ndarray, int]:
        """Rows for ``keys`` in order, calling ``compute(indices)`` (indices into ``keys``) only for keys not stored yet,
        ``chunk_rows`` at a time, each chunk stored as soon as it is computed. Returns (rows, number computed now)."""
        missing = self.missing(keys)
        for start in range(0, len(missing), chunk_rows):
            indices = missing[start : start + chunk_rows]
            self.add([keys[i] for i in indices], compute(indices))
        return (self.rows(keys) if len(keys) else np.zeros((0,), dtype=np.float16)), len(missing)
