"""Background noise: coloured noise, mains hum, fan-like rumble and babble, plus mixing at a given SNR."""

from __future__ import annotations

import numpy as np

from fedwhisper.audio import SAMPLE_RATE


def coloured_noise(rng: np.random.Generator, samples: int, exponent: float) -> np.ndarray:
    """Noise with power spectral density ~ 1/f^exponent (0 white, 1 pink, 2 brown), peak-normalised."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    frequencies = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE)
    frequencies[0] = frequencies[1]
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2), n=samples)
    return (noise / np.max(np.abs(noise))).astype(np.float32)


def hum(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Mains hum (50 or 60 Hz and harmonics) with slow amplitude drift over a faint noise floor."""
    t = np.arange(samples) / SAMPLE_RATE
    base = rng.choice([50.0, 60.0])
    signal = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 2 * np.pi)) for k in range(1, 6))
    signal = signal * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t)) + 0.05 * coloured_noise(rng, samples, 1.0)
    return (signal / np.max(np.abs(signal))).astype(np.float32)


def fan(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Broadband rumble with a blade-rate flutter, like a fan or running tap."""
    t = np.arange(samples) / SAMPLE_RATE
    noise = coloured_noise(rng, samples, 1.5) * (1 + 0.4 * np.sin(2 * np.pi * rng.uniform(8, 25) * t))
    return (noise / np.max(np.abs(noise))).astype(np.float32)


def babble(rng: np.random.Generator, samples: int, utterances: list[np.ndarray], talkers: int = 6) -> np.ndarray:
    """Overlapping voices: ``talkers`` streams of randomly placed ``utterances`` summed."""
    mix = np.zeros(samples, dtype=np.float32)
    for _ in range(talkers):
        position = int(rng.integers(0, SAMPLE_RATE))
        while position < samples:
            clip = utterances[int(rng.integers(len(utterances)))]
            end = min(samples, position + clip.size)
            mix[position:end] += clip[: end - position] / (np.max(np.abs(clip)) + 1e-9)
            position = end + int(rng.integers(0, SAMPLE_RATE // 4))
    return (mix / np.max(np.abs(mix))).astype(np.float32)


def random_crop(rng: np.random.Generator, noise: np.ndarray, samples: int) -> np.ndarray:
    start = int(rng.integers(0, max(1, noise.size - samples + 1)))
    crop = noise[start : start + samples]
    return np.pad(crop, (0, samples - crop.size))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech`` + ``noise`` scaled so the speech-to-noise power ratio is ``snr_db``."""
    speech_power = float(np.mean(speech**2)) + 1e-12
    noise_power = float(np.mean(noise**2)) + 1e-12
    return speech + noise * np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
