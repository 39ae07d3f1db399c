import numpy as np
import pytest
import soundfile as sf

from fedwhisper.audio import SAMPLE_RATE, AudioError, load_audio, write_audio
from tests.conftest import tone


@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg", "mp3"])
def test_formats_decode_to_16k_mono_float32(tmp_path, suffix):
    path = tmp_path / f"clip.{suffix}"
    write_audio(path, tone(1.0))
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(audio.size - SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # mp3 adds encoder padding


def test_stereo_44k1_is_resampled_and_mixed_down_keeping_the_pitch(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(2.0, rate=44_100, frequency=1000.0, channels=2), 44_100)
    audio = load_audio(path)
    assert audio.size == 2 * SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.fft.rfftfreq(audio.size, 1 / SAMPLE_RATE)[np.argmax(spectrum)] == pytest.approx(1000.0, abs=1.0)


def test_bytes_and_datasets_entries_decode(tmp_path):
    path = tmp_path / "clip.wav"
    write_audio(path, tone(0.5))
    assert load_audio(path.read_bytes()).size == 8000
    assert load_audio({"path": str(path), "bytes": None}).size == 8000
    assert load_audio({"path": "elsewhere.wav", "bytes": path.read_bytes()}).size == 8000


def _bad(tmp_path, kind):
    path = tmp_path / f"{kind}.wav"
    if kind == "missing":
        return path, "not found"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty"
    if kind == "not_audio":
        path.write_text("this is text, not sound\n" * 20)
        return path, "not readable as audio"
    if kind == "truncated":
        write_audio(path, tone(1.0))
        path.write_bytes(path.read_bytes()[:5000])
        return path, "truncated"
    if kind == "zero_length":
        sf.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
        return path, "no samples"
    if kind == "nan":
        samples = tone(1.0)
        samples[100] = np.nan
        sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
        return path, "NaN"
    if kind == "silent":
        write_audio(path, np.zeros(SAMPLE_RATE, dtype=np.float32))
        return path, "silent"
    if kind == "too_long":
        write_audio(path, tone(3.0))
        return path, "longer than"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "empty", "not_audio", "truncated", "zero_length", "nan", "silent", "too_long"])
def test_bad_input_is_a_clear_error_naming_the_file(tmp_path, kind):
    path, reason = _bad(tmp_path, kind)
    with pytest.raises(AudioError, match=reason) as error:
        load_audio(path, max_seconds=2.0)
    assert str(path) in str(error.value)


def test_silence_can_be_allowed(tmp_path):
    path = tmp_path / "quiet.wav"
    write_audio(path, np.zeros(SAMPLE_RATE, dtype=np.float32))
    assert load_audio(path, allow_silent=True).size == SAMPLE_RATE


def test_write_is_atomic_and_leaves_no_partial_file(tmp_path):
    write_audio(tmp_path / "a.wav", tone(0.1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
    with pytest.raises(AudioError, match="suffix"):
        write_audio(tmp_path / "a.xyz", tone(0.1))
