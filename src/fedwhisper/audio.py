"""Audio in: any file soundfile reads (wav, flac, ogg, mp3) at any rate and channel count -> 16 kHz mono float32."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from fedwhisper.constants import SAMPLE_RATE
from fedwhisper.errors import FedwhisperError
from fedwhisper.files import atomic_path

SILENCE_PEAK = 1e-4  # peak amplitude below which a clip holds no usable signal


class AudioError(FedwhisperError, ValueError):
    """Audio that cannot be used; the message names the file and the reason."""


def _source_name(source) -> str:
    if isinstance(source, dict):
        return str(source.get("path") or "<bytes>")
    if isinstance(source, (bytes, bytearray)):
        return "<bytes>"
    return str(source)


def _open(source):
    """A path or file object soundfile can read, from a path, bytes, or a datasets Audio(decode=False) dict."""
    if isinstance(source, dict):
        if source.get("bytes"):
            return io.BytesIO(source["bytes"])
        source = source.get("path")
        if not source:
            raise AudioError("audio entry has neither bytes nor a path")
    if isinstance(source, (bytes, bytearray)):
        return io.BytesIO(source)
    path = Path(source)
    if path.is_dir():
        raise AudioError(f"{path}: a directory, not an audio file (name its files, e.g. {path / '*.wav'})")
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty")
    return path


def _wav_data_shortfall(path: Path) -> int:
    """Bytes missing from a RIFF/WAVE file's data chunk (libsndfile quietly reads what is there)."""
    with open(path, "rb") as stream:
        header = stream.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return 0
        size = path.stat().st_size
        while chunk := stream.read(8):
            if len(chunk) < 8:
                return 0
            chunk_size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                return max(0, stream.tell() + chunk_size - size) if chunk_size != 0xFFFFFFFF else 0
            stream.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)
    return 0


def load_audio(
    source: str | os.PathLike | bytes | dict, max_seconds: float | None = None, allow_silent: bool = False
) -> np.ndarray:
    """Decode ``source`` to 16 kHz mono float32, rejecting anything a training job should not see.

    Raises AudioError, naming the file, for: missing or empty files, data that is not audio,
    truncated files, zero-length audio, NaN/inf samples, all-silent audio (unless ``allow_silent``)
    and audio longer than ``max_seconds``.
    """
    name = _source_name(source)
    handle = _open(source)
    if isinstance(handle, Path) and (missing := _wav_data_shortfall(handle)):
        raise AudioError(f"{name}: truncated ({missing} bytes of audio data missing)")
    try:
        with sf.SoundFile(handle) as sound:
            declared = sound.frames
            rate = sound.samplerate
            if max_seconds is not None and declared > 0 and declared / rate > max_seconds:
                raise AudioError(f"{name}: {declared / rate:.1f} s is longer than the allowed {max_seconds:g} s")
            samples = sound.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{name}: not readable as audio ({error})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{name}: contains no samples")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    mono = samples.mean(axis=1)
    if max_seconds is not None and mono.size / rate > max_seconds:
        raise AudioError(f"{name}: {mono.size / rate:.1f} s is longer than the allowed {max_seconds:g} s")
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    if not allow_silent and float(np.max(np.abs(mono))) < SILENCE_PEAK:
        raise AudioError(f"{name}: audio is silent")
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_audio(path: str | os.PathLike, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM atomically: a crash never leaves a half-written file under the final name."""
    path = Path(path)
    audio_format = _format_for(path)
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[audio_format]
    with atomic_path(path) as partial:
        sf.write(partial, np.clip(samples, -1.0, 1.0), sample_rate, subtype=subtype, format=audio_format)


def _format_for(path: Path) -> str:
    formats = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}
    try:
        return formats[path.suffix.lower()]
    except KeyError:
        raise AudioError(f"{path}: cannot write audio with suffix {path.suffix!r}") from None
