import pytest

from fedwhisper.demo import run_demo


@pytest.mark.weights
def test_demo_transcribes_held_out_speakers_with_the_real_model(session_home):
    result = run_demo("tiny.en", clips=6)
    assert len(result.hypotheses) == 6 and all(result.hypotheses)
    # tiny.en on synthetic voices: far from perfect, far better than chance (a wrong model gives ~100 %).
    assert result.wer < 0.8
    assert result.audio_seconds / result.transcribe_seconds > 1.0
