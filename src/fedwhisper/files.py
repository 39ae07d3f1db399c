"""Writing files so that an interruption never leaves a half-written one where a finished one is expected."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a sibling ``NAME.partial`` to write (a file or a directory); on success it replaces ``path`` in one
    rename, on failure it is removed and ``path`` is left as it was."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    _remove(partial)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield partial
    except BaseException:
        _remove(partial)
        raise
    if partial.is_dir() and path.exists():
        _remove(path)  # os.replace cannot put a directory over a non-empty one
    os.replace(partial, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, value) -> None:
    write_text(path, json.dumps(value, indent=2))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
