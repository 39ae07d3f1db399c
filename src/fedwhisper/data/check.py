"""Decode every clip of a corpus in parallel and report the ones a training job must not see."""

from __future__ import annotations

import os

from fedwhisper.audio import AudioError, load_audio
from fedwhisper.data.corpus import load_corpus


def _probe(example: dict, max_seconds: float) -> dict:
    try:
        load_audio(example["audio"], max_seconds=max_seconds)
        return {"error": ""}
    except AudioError as error:
        return {"error": str(error)}


def check_corpus(source, max_seconds: float = 30.0, num_proc: int | None = None) -> tuple[list[dict], int]:
    """(bad clips as {split, path, error}, total clips) over every split of ``source``."""
    corpus = load_corpus(source)
    bad, total = [], 0
    for split, dataset in corpus.items():
        if len(dataset) == 0:
            continue
        processes = min(num_proc or os.cpu_count() or 1, len(dataset))
        probed = dataset.map(
            _probe, fn_kwargs={"max_seconds": max_seconds}, num_proc=processes if processes > 1 else None, desc=f"check {split}"
        )
        total += len(probed)
        for path_entry, error in zip(probed["audio"], probed["error"]):
            if error:
                bad.append({"split": split, "path": path_entry.get("path"), "error": error})
    skipped = getattr(corpus, "skipped", {})
    bad += [{"split": "", "path": name, "error": f"{name}: {why}"} for name, why in skipped.items()]
    return bad, total + len(skipped)
