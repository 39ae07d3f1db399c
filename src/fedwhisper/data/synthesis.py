"""Shared machinery of the corpus synthesizers: parallel, resumable, skip-and-report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from fedwhisper.errors import FedwhisperError
from fedwhisper.files import write_json

MANIFEST = "fedwhisper_synthesis.json"


class SynthesisOptionsMismatch(FedwhisperError):
    pass


@dataclass
class SynthesisReport:
    """What a synthesis run did; written next to the corpus as JSON."""

    written: int = 0
    reused: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clips_per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {
            "written": self.written,
            "reused": self.reused,
            "failed": len(self.failed),
            "failures": self.failed[:100],
            "seconds": round(self.seconds, 2),
            "clips_per_second": round(self.clips_per_second, 1),
        }


def check_manifest(out: Path, manifest: dict) -> None:
    """Refuse to resume into a directory made with other options (its files would mix two corpora)."""
    path = out / MANIFEST
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("options") != manifest["options"]:
            raise SynthesisOptionsMismatch(
                f"{out} was synthesised with other options ({path}); choose a new directory or delete it"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)


def run_tasks(tasks: Iterable, target: Callable, work: Callable, workers: int | None, description: str) -> SynthesisReport:
    """Run ``work(task)`` for each task whose ``target(task)`` file is missing, in a thread pool
    (the TTS engines are subprocesses, so threads keep every core busy).

    A task that raises is reported, not fatal; finished files are reused on the next run.
    """
    report = SynthesisReport()
    started = time.perf_counter()
    pending = []
    for task in tasks:
        if target(task).is_file():
            report.reused += 1
        else:
            pending.append(task)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        futures = {pool.submit(work, task): task for task in pending}
        for future in tqdm(as_completed(futures), total=len(futures), desc=description, unit="clip", disable=not futures):
            try:
                future.result()
                report.written += 1
            except Exception as error:  # a bad clip must not end a long job
                report.failed.append({"file": str(target(futures[future])), "error": f"{type(error).__name__}: {error}"})
    report.seconds = time.perf_counter() - started
    return report
