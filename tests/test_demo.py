import pytest

from fedwhisper.demo import run_asr_demo


@pytest.mark.weights
def test_demo_transcribes_held_out_speakers_with_the_real_model(session_home):
    result = run_asr_demo("tiny.en", clips=6)
    assert len(result.hypotheses) == 6 and all(result.hypotheses)
    # tiny.en on synthetic voices: far from perfect, far better than chance (a wrong model gives ~100 %).
    assert result.wer < 0.8
    assert result.audio_seconds / result.transcribe_seconds > 1.0


@pytest.mark.weights
def test_kws_demo_reaches_97_percent_on_held_out_speakers_within_10_rounds(session_home):
    from fedwhisper.demo import run_kws_demo

    run = run_kws_demo("tiny.en")
    assert [row["round"] for row in run.rows] == list(range(11))
    assert run.rows[-1]["test_accuracy"] >= 0.97
    assert all(row["clients_trained"] == 10 for row in run.rows[1:])
    assert (run.path / "accuracy.png").is_file()
