"""Text-to-speech voices standing in for speakers: espeak-ng accents x variants, and flite's voices.

A speaker is a fixed identity (engine, voice, variant, rate, pitch, loudness) so that every clip of
one speaker sounds alike and different speakers sound different, as a speaker-grouped corpus needs.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedwhisper.audio import SAMPLE_RATE, load_audio
from fedwhisper.errors import FedwhisperError

# espeak-ng's own voices per language (MBROLA voices need extra Debian packages and are left out).
ESPEAK_ACCENTS = {
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"),
    "sv": ("sv",),
}
FLITE_VOICES = {"en": ("slt", "rms", "awb", "kal16", "kal"), "sv": ()}
ENGINES = ("espeak-ng", "flite")


class SynthesisError(FedwhisperError):
    pass


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker."""

    engine: str  # "espeak-ng" or "flite"
    name: str  # espeak-ng voice (accent) or flite voice
    variant: str  # espeak-ng voice variant ("" for none / flite)
    rate: float  # speaking-rate factor, 1.0 = the engine's default
    pitch: float  # pitch factor, 1.0 = the engine's default
    gain_db: float  # loudness of this speaker's recordings

    def describe(self) -> dict:
        return asdict(self)

    def synthesize(self, text: str) -> np.ndarray:
        """16 kHz mono float32 speech for ``text`` with leading/trailing silence trimmed."""
        if not text.strip():
            raise SynthesisError("cannot synthesise empty text")
        wav = _espeak(self, text) if self.engine == "espeak-ng" else _flite(self, text)
        try:
            samples = load_audio(wav)
        except ValueError as error:
            raise SynthesisError(f"{self.engine} {self.name} produced no usable audio for {text!r}: {error}") from None
        return trim_silence(samples) * np.float32(10 ** (self.gain_db / 20))


def _run(command: list[str]) -> bytes:
    try:
        result = subprocess.run(command, capture_output=True, timeout=60, check=False)
    except FileNotFoundError:
        raise SynthesisError(f"{command[0]} is not installed (Debian package {command[0]}; `make demo` installs it)") from None
    if result.returncode != 0:
        raise SynthesisError(f"{' '.join(command[:3])}… failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _espeak(voice: Voice, text: str) -> bytes:
    name = f"{voice.name}+{voice.variant}" if voice.variant else voice.name
    # espeak-ng defaults: 175 words per minute, pitch 50 of 0-99.
    rate = int(round(175 * voice.rate))
    pitch = int(np.clip(round(50 * voice.pitch), 0, 99))
    return _run(["espeak-ng", "-v", name, "-s", str(rate), "-p", str(pitch), "--stdout", text])


def _flite(voice: Voice, text: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="fedwhisper-flite-") as tmp:
        out = Path(tmp) / "speech.wav"
        _run(
            [
                "flite",
                "-voice",
                voice.name,
                "--setf",
                f"duration_stretch={1 / voice.rate:.3f}",
                "--setf",
                f"int_f0_target_mean={110 * voice.pitch:.1f}",
                "-t",
                text,
                "-o",
                str(out),
            ]
        )
        return out.read_bytes()


def trim_silence(samples: np.ndarray, threshold_db: float = -40.0, pad_seconds: float = 0.02) -> np.ndarray:
    """Cut leading and trailing stretches quieter than ``threshold_db`` below the peak."""
    envelope = np.abs(samples)
    peak = float(envelope.max()) if samples.size else 0.0
    if peak == 0.0:
        return samples
    loud = np.flatnonzero(envelope > peak * 10 ** (threshold_db / 20))
    pad = int(pad_seconds * SAMPLE_RATE)
    return samples[max(0, loud[0] - pad) : loud[-1] + pad + 1]


@functools.cache
def espeak_variants() -> tuple[str, ...]:
    """espeak-ng's voice variants (m1…m7, f1…f5, klatt, croak, …) as installed."""
    if shutil.which("espeak-ng") is None:
        return ()
    listing = _run(["espeak-ng", "--voices=variant"]).decode()
    variants = []
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("!v/"):
            variants.append(fields[4][3:])
    return tuple(sorted(set(variants)))


def available_engines() -> list[str]:
    return [engine for engine in ENGINES if shutil.which(engine)]


def _unit(key: str) -> float:
    """A deterministic number in [0, 1) for ``key`` (stable across Python processes, unlike hash())."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def speaker_voices(count: int, language: str = "en", seed: int = 0, engines: tuple[str, ...] | None = None) -> list[Voice]:
    """``count`` distinct speaker identities for ``language``, deterministic for ``seed``.

    Voices cycle through the engines' accents and voices so that every accent is represented,
    and draw variant, rate, pitch and loudness per speaker.
    """
    engines = tuple(engines or available_engines())
    bases: list[tuple[str, str]] = []
    if "espeak-ng" in engines:
        bases += [("espeak-ng", accent) for accent in ESPEAK_ACCENTS.get(language, ())]
    if "flite" in engines:
        bases += [("flite", name) for name in FLITE_VOICES.get(language, ())]
    if not bases:
        raise SynthesisError(f"no installed TTS engine speaks {language!r} (engines asked for: {', '.join(engines) or 'none'})")
    variants = espeak_variants() or ("",)
    voices: list[Voice] = []
    seen: set[Voice] = set()
    index = 0
    while len(voices) < count:
        engine, name = bases[index % len(bases)]
        key = f"{seed}/{language}/{index}"
        voice = Voice(
            engine=engine,
            name=name,
            variant=variants[int(_unit(key + "/variant") * len(variants))] if engine == "espeak-ng" else "",
            rate=round(0.8 + 0.45 * _unit(key + "/rate"), 3),
            pitch=round(0.7 + 0.6 * _unit(key + "/pitch"), 3),
            gain_db=round(-12 + 10 * _unit(key + "/gain"), 2),
        )
        index += 1
        if voice not in seen:
            seen.add(voice)
            voices.append(voice)
    return voices
