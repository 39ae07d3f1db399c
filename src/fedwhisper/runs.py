"""A run directory, shared by every long job (federations, fine-tuning): its options, a table of metrics (JSON and
CSV), checkpoints written atomically, and the resume point. A fresh run refuses a directory that already holds results."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from fedwhisper.errors import FedwhisperError
from fedwhisper.files import atomic_path, write_json

OPTIONS = "options.json"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"


def runs_root() -> Path:
    """Where runs go when no directory is given: ``$FEDWHISPER_RUNS``, else ``$FEDWHISPER_HOME/runs``."""
    from fedwhisper.models.registry import fedwhisper_home

    return Path(os.environ["FEDWHISPER_RUNS"]) if os.environ.get("FEDWHISPER_RUNS") else fedwhisper_home() / "runs"


class RunDirectory:
    def __init__(self, path: str | os.PathLike, key: str = "round"):
        """``key`` names the column that orders the metric rows (``round``, ``step``)."""
        self.path = Path(path)
        self.key = key
        metrics = self.path / METRICS_JSON
        try:
            self.rows: list[dict] = json.loads(metrics.read_text()) if metrics.is_file() else []
        except json.JSONDecodeError as error:
            raise FedwhisperError(f"{metrics}: not valid JSON ({error.msg}); the run's metrics are damaged") from None

    @property
    def last(self) -> int:
        return max((row[self.key] for row in self.rows), default=0)

    def check_start(self, resume: bool) -> None:
        """Fail now if a run cannot begin here (fresh: the directory holds a run) or continue here (resume: none)."""
        if not resume and self.rows:
            raise FedwhisperError(f"{self.path} already holds a run; pass --resume to continue it or choose a new directory")
        if resume and not (self.path / OPTIONS).is_file():
            raise FedwhisperError(f"{self.path}: nothing to resume (no {OPTIONS})")

    def start(self, options: dict, resume: bool) -> None:
        """Begin a run here, or continue the one here (``resume``)."""
        self.check_start(resume)
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / OPTIONS, options)

    def saved_options(self) -> dict:
        path = self.path / OPTIONS
        if not path.is_file():
            raise FedwhisperError(f"{path}: not a run directory")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise FedwhisperError(f"{path}: not valid JSON ({error.msg})") from None

    def record(self, row: dict) -> None:
        """Add (or replace) the row with ``row[key]``; JSON and CSV are rewritten atomically."""
        self.rows = sorted([r for r in self.rows if r[self.key] != row[self.key]] + [row], key=lambda r: r[self.key])
        self._write()

    def keep_until(self, last: int) -> None:
        """Drop the rows after ``last`` (a resume point), so the steps or rounds after it are recorded once."""
        self.rows = [r for r in self.rows if r[self.key] <= last]
        self._write()

    def _write(self) -> None:
        write_json(self.path / METRICS_JSON, self.rows)
        columns = sorted(
            {name for r in self.rows for name in r if not isinstance(r[name], list | dict)},
            key=lambda name: (name != self.key, name),
        )
        with atomic_path(self.path / METRICS_CSV) as partial, open(partial, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)

    def save_arrays(self, name: str, arrays: dict, meta: dict) -> Path:
        """``NAME.safetensors``: tensors plus ``meta`` (what is needed to rebuild the model they belong to)."""
        from safetensors.torch import save_file

        target = self.path / f"{name}.safetensors"
        with atomic_path(target) as partial:
            save_file({k: v.contiguous() for k, v in arrays.items()}, str(partial), metadata={"fedwhisper": json.dumps(meta)})
        return target


def load_arrays(path: str | os.PathLike) -> tuple[dict, dict]:
    """Tensors and meta of a file written by ``RunDirectory.save_arrays``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FedwhisperError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["fedwhisper"])
        return load_file(str(path)), meta
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as error:
        raise FedwhisperError(f"{path}: not a fedwhisper checkpoint ({type(error).__name__}: {error})") from None
