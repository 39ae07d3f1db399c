"""Encoder outputs kept on the local disk of whoever computed them, keyed by encoder identity and audio content.

One store per encoder fingerprint (weights + window): ``ROOT/<fingerprint>/features.npy`` (float16, one row per
clip) and ``keys.json`` (the content hash of each row). A clip whose bytes change gets a new key and is encoded
again; a new model or window gets a new store. Writes go to a temporary file and are renamed, so an interrupted
run leaves the previous store intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


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
        self._features_path = self.directory / "features.npy"
        self._keys_path = self.directory / "keys.json"

    def _load(self) -> tuple[list[str], np.ndarray | None]:
        if not (self._keys_path.is_file() and self._features_path.is_file()):
            return [], None
        keys = json.loads(self._keys_path.read_text())
        features = np.load(self._features_path, mmap_mode="r")
        if len(keys) != len(features):  # killed between the two renames of _write: start over
            return [], None
        return keys, features

    def __len__(self) -> int:
        return len(self._load()[0])

    def get_or_compute(self, keys: Sequence[str], compute: Callable[[list[int]], np.ndarray]) -> tuple[np.ndarray, int]:
        """Rows for ``keys`` in order, calling ``compute(indices)`` only for keys not stored yet.

        Returns (features, number of rows computed now).
        """
        stored_keys, stored = self._load()
        row_of = {key: row for row, key in enumerate(stored_keys)}
        first_missing: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in row_of:
                first_missing.setdefault(key, i)
        missing_unique = list(first_missing.values())
        if missing_unique:
            fresh = compute(missing_unique)
            combined = fresh if stored is None else np.concatenate([np.asarray(stored), fresh])
            for offset, i in enumerate(missing_unique):
                row_of[keys[i]] = len(stored_keys) + offset
            stored_keys = stored_keys + [keys[i] for i in missing_unique]
            self._write(stored_keys, combined)
            stored = combined
        return np.asarray(stored[[row_of[key] for key in keys]]), len(missing_unique)

    def _write(self, keys: list[str], features: np.ndarray) -> None:
        partial_features = self._features_path.with_suffix(".partial.npy")
        np.save(partial_features, features)
        partial_keys = self._keys_path.with_suffix(".partial")
        partial_keys.write_text(json.dumps(keys))
        os.replace(partial_features, self._features_path)
        os.replace(partial_keys, self._keys_path)
