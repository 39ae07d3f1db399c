"""Synthesise a keyword-spotting corpus in the Google Speech Commands v0.02 layout."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fedwhisper.audio import SAMPLE_RATE, load_audio, write_audio
from fedwhisper.data import noise
from fedwhisper.data.speech_commands import BACKGROUND_NOISE_DIR, TESTING_LIST, VALIDATION_LIST, WORDS, which_set
from fedwhisper.data.synthesis import SynthesisReport, check_manifest, run_tasks
from fedwhisper.data.tts import Voice, speaker_voices
from fedwhisper.files import write_json


@dataclass(frozen=True)
class KwsSynthesisOptions:
    speakers: int = 200
    words: tuple[str, ...] = WORDS
    repeats: int = 1  # clips of each word per speaker
    seed: int = 0
    noise_seconds: float = 60.0  # length of each background-noise file
    noise_probability: float = 0.8  # share of clips with background noise mixed in
    snr_db: tuple[float, float] = (5.0, 30.0)
    gain_db: tuple[float, float] = (-3.0, 3.0)  # per-clip level jitter on top of the speaker's loudness
    engines: tuple[str, ...] | None = None  # default: every installed engine


def speaker_id(seed: int, index: int) -> str:
    """An 8-hex-digit id like the dataset's own."""
    return hashlib.sha1(f"fedwhisper-kws/{seed}/{index}".encode()).hexdigest()[:8]


def place_in_window(rng: np.random.Generator, speech: np.ndarray, samples: int = SAMPLE_RATE) -> np.ndarray:
    """The word at a random offset in a ``samples``-long window (centre-cropped if longer)."""
    if speech.size >= samples:
        start = (speech.size - samples) // 2
        return speech[start : start + samples].copy()
    window = np.zeros(samples, dtype=np.float32)
    offset = int(rng.integers(0, samples - speech.size + 1))
    window[offset : offset + speech.size] = speech
    return window


def _background_noise(out: Path, options: KwsSynthesisOptions, voices: list[Voice]) -> dict[str, np.ndarray]:
    """Write (or reuse) ``_background_noise_/``: white, pink, brown, hum, fan and babble."""
    directory = out / BACKGROUND_NOISE_DIR
    samples = int(options.noise_seconds * SAMPLE_RATE)
    makers = {
        "white_noise": lambda rng: noise.coloured_noise(rng, samples, 0.0),
        "pink_noise": lambda rng: noise.coloured_noise(rng, samples, 1.0),
        "brown_noise": lambda rng: noise.coloured_noise(rng, samples, 2.0),
        "hum": lambda rng: noise.hum(rng, samples),
        "fan": lambda rng: noise.fan(rng, samples),
        "babble": lambda rng: noise.babble(rng, samples, _babble_utterances(rng, voices, options.words)),
    }
    noises = {}
    for index, (name, make) in enumerate(tqdm(makers.items(), desc="background noise", unit="file")):
        path = directory / f"{name}.wav"
        if not path.is_file():
            write_audio(path, 0.5 * make(np.random.default_rng([options.seed, 1, index])))
        noises[name] = load_audio(path)
    return noises


def _babble_utterances(rng: np.random.Generator, voices: list[Voice], words: tuple[str, ...]) -> list[np.ndarray]:
    talkers = [voices[int(i)] for i in rng.choice(len(voices), size=min(8, len(voices)), replace=False)]
    return [voice.synthesize(" ".join(rng.choice(words, size=6))) for voice in talkers]


def synthesize_speech_commands(
    out: str | Path, options: KwsSynthesisOptions = KwsSynthesisOptions(), workers: int | None = None
) -> SynthesisReport:
    """Write a Speech Commands v0.02-style corpus to ``out``; resumes where a previous run stopped."""
    out = Path(out)
    voices = speaker_voices(options.speakers, "en", options.seed, options.engines)
    speakers = [speaker_id(options.seed, i) for i in range(options.speakers)]
    check_manifest(out, {"kind": "speech_commands_v0.02", "options": json.loads(json.dumps(asdict(options)))})
    write_json(out / "speakers.json", {sid: voice.describe() for sid, voice in zip(speakers, voices)})
    noises = list(_background_noise(out, options, voices).values())

    tasks = [(s, w, r) for s in range(options.speakers) for w in range(len(options.words)) for r in range(options.repeats)]

    def target(task) -> Path:
        s, w, r = task
        return out / options.words[w] / f"{speakers[s]}_nohash_{r}.wav"

    def work(task) -> None:
        s, w, r = task
        rng = np.random.default_rng([options.seed, 2, s, w, r])
        clip = place_in_window(rng, voices[s].synthesize(options.words[w]))
        clip = clip * np.float32(10 ** (rng.uniform(*options.gain_db) / 20))
        if rng.random() < options.noise_probability:
            background = noise.random_crop(rng, noises[int(rng.integers(len(noises)))], clip.size)
            clip = noise.mix_at_snr(clip, background, rng.uniform(*options.snr_db))
        write_audio(target(task), clip)

    report = run_tasks(tasks, target, work, workers, "synth-kws")
    _write_split_lists(out, options.words)
    write_json(out / "synthesis_report.json", report.as_dict())
    return report


def _write_split_lists(out: Path, words: tuple[str, ...]) -> None:
    lists = {"validation": [], "test": []}
    for word in words:
        for wav in sorted((out / word).glob("*.wav")):
            split = which_set(wav.name)
            if split in lists:
                lists[split].append(f"{word}/{wav.name}")
    (out / VALIDATION_LIST).write_text("".join(f"{line}\n" for line in lists["validation"]))
    (out / TESTING_LIST).write_text("".join(f"{line}\n" for line in lists["test"]))
