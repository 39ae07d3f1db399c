"""A run directory: options, per-round metrics (JSON and CSV), a PNG of accuracy per round, head checkpoints.
It is also the resume point: the last recorded round and its head."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from fedwhisper.kws.model import load_head, save_head

OPTIONS = "options.json"
METRICS_JSON = "metrics.json"
METRICS_CSV = "metrics.csv"
PLOT = "accuracy.png"
LATEST_HEAD = "head.safetensors"


class RunLog:
    def __init__(self, run_dir: str | Path):
        self.directory = Path(run_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / METRICS_JSON
        self.rounds: list[dict] = json.loads(path.read_text()) if path.is_file() else []

    @property
    def last_round(self) -> int:
        return max((row["round"] for row in self.rounds), default=0)

    def start(self, options: dict, resume: bool) -> None:
        """Begin a run here; a fresh start refuses a directory that already holds rounds."""
        if not resume and self.rounds:
            raise FileExistsError(f"{self.directory} already holds {len(self.rounds)} rounds; resume it or choose a new directory")
        if resume and not (self.directory / LATEST_HEAD).is_file():
            raise FileNotFoundError(f"{self.directory}: nothing to resume (no {LATEST_HEAD})")
        (self.directory / OPTIONS).write_text(json.dumps(options, indent=2))

    def saved_options(self) -> dict:
        path = self.directory / OPTIONS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a run directory")
        return json.loads(path.read_text())

    def latest_head(self):
        return load_head(self.directory / LATEST_HEAD)

    def record(self, row: dict, head, meta: dict) -> None:
        """Append one round: head checkpoint first, then metrics, so a recorded round always has its head."""
        save_head(self.directory / f"head-round-{row['round']:03d}.safetensors", head, meta)
        latest = self.directory / (LATEST_HEAD + ".partial")
        save_head(latest, head, meta)
        os.replace(latest, self.directory / LATEST_HEAD)
        self.rounds = [r for r in self.rounds if r["round"] != row["round"]] + [row]
        self._write()

    def _write(self) -> None:
        partial = self.directory / (METRICS_JSON + ".partial")
        partial.write_text(json.dumps(self.rounds, indent=2))
        os.replace(partial, self.directory / METRICS_JSON)
        columns = sorted({key for row in self.rounds for key in row}, key=lambda k: (k != "round", k))
        with open(self.directory / METRICS_CSV, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rounds)
        self.plot()

    def plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        rounds = [row["round"] for row in self.rounds]
        for key, label in (("validation_accuracy", "validation speakers"), ("test_accuracy", "held-out test speakers")):
            if any(key in row for row in self.rounds):
                axis.plot(rounds, [row.get(key) for row in self.rounds], marker="o", label=label)
        axis.set_xlabel("round")
        axis.set_ylabel("accuracy")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend()
        axis.set_title("Federated keyword spotting (FedAvg)")
        figure.tight_layout()
        figure.savefig(self.directory / PLOT, dpi=100)
        plt.close(figure)
        return self.directory / PLOT
