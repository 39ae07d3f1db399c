"""Synthesise an ASR corpus in the Hugging Face audiofolder layout, test speakers disjoint from train speakers."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedwhisper.audio import write_audio
from fedwhisper.data import noise
from fedwhisper.data.synthesis import SynthesisReport, check_manifest, run_tasks
from fedwhisper.data.text import load_sentences
from fedwhisper.data.tts import speaker_voices
from fedwhisper.errors import FedwhisperError
from fedwhisper.files import write_json


@dataclass(frozen=True)
class AsrSynthesisOptions:
    language: str = "en"
    sentences: int = 2400  # distinct sentences, each spoken once
    speakers: int = 48
    test_speakers: int = 8  # disjoint from the training speakers; they get sentences of their own
    seed: int = 0
    text: str | None = None  # one sentence a line; replaces the built-in source
    engines: tuple[str, ...] | None = None
    noise_probability: float = 0.3
    snr_db: tuple[float, float] = (10.0, 30.0)


def synthesize_audiofolder(
    out: str | Path, options: AsrSynthesisOptions = AsrSynthesisOptions(), workers: int | None = None
) -> SynthesisReport:
    """Write ``out/train`` and ``out/test`` audiofolders (wav + metadata.csv); resumes where a run stopped."""
    out = Path(out)
    if not 0 < options.test_speakers < options.speakers:
        raise FedwhisperError(
            f"test speakers ({options.test_speakers}) must be between 1 and speakers - 1 ({options.speakers - 1})"
        )
    pool = load_sentences(options.language, options.text)
    if len(pool) < options.sentences:
        raise FedwhisperError(f"the text source has {len(pool)} usable sentences, fewer than the {options.sentences} asked for")
    sentences = random.Random(options.seed).sample(pool, options.sentences)
    voices = speaker_voices(options.speakers, options.language, options.seed, options.engines)
    # Shuffle voices so the test speakers are not all one engine or accent.
    order = random.Random(options.seed + 1).sample(range(options.speakers), options.speakers)
    test_voices = set(order[: options.test_speakers])
    check_manifest(out, {"kind": "audiofolder", "options": json.loads(json.dumps(asdict(options)))})

    # Sentences are dealt round-robin to speakers of each split; the test split gets its share by speaker count.
    n_test = round(options.sentences * options.test_speakers / options.speakers)
    splits = {"test": sentences[:n_test], "train": sentences[n_test:]}
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    for split, texts in splits.items():
        members = [v for v in order if (v in test_voices) == (split == "test")]
        for i, text in enumerate(texts):
            v = members[i % len(members)]
            speaker = f"{options.language}{v:04d}"
            voice = voices[v]
            rows[split].append(
                {
                    "file_name": f"{speaker}/{speaker}-{i:05d}.wav",
                    "transcription": text,
                    "speaker_id": speaker,
                    "engine": voice.engine,
                    "voice": voice.name,
                    "_voice": v,
                    "_index": i,
                }
            )
    write_json(out / "speakers.json", {f"{options.language}{v:04d}": voices[v].describe() for v in range(options.speakers)})

    tasks = [(split, row) for split in rows for row in rows[split]]

    def target(task) -> Path:
        split, row = task
        return out / split / row["file_name"]

    def work(task) -> None:
        split, row = task
        rng = np.random.default_rng([options.seed, 3, row["_voice"], row["_index"], split == "test"])
        speech = voices[row["_voice"]].synthesize(row["transcription"])
        speech = np.pad(speech, (int(rng.integers(800, 4000)), int(rng.integers(800, 4000))))
        if rng.random() < options.noise_probability:
            speech = noise.mix_at_snr(
                speech, noise.coloured_noise(rng, speech.size, float(rng.uniform(0, 2))), rng.uniform(*options.snr_db)
            )
        write_audio(target(task), speech)

    report = run_tasks(tasks, target, work, workers, f"synth-asr ({options.language})")
    failed = {f["file"] for f in report.failed}
    for split, split_rows in rows.items():
        # metadata lists only clips that exist, so readers never meet a missing file
        with open(out / split / "metadata.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(
                stream, fieldnames=["file_name", "transcription", "speaker_id", "engine", "voice"], extrasaction="ignore"
            )
            writer.writeheader()
            writer.writerows(r for r in split_rows if str(out / split / r["file_name"]) not in failed)
    write_json(out / "synthesis_report.json", report.as_dict())
    return report
