import pytest

from fedwhisper.demo import run_asr_demo


@pytest.mark.weights
def test_demo_transcribes_held_out_speakers_with_the_real_model(session_home):
    result = run_asr_demo("tiny.en", clips=6)
    assert len(result.hypotheses) == 6 and all(result.hypotheses)
    # tiny.en on synthetic voices: far from perfect, far better than chance (a wrong model gives ~100 %).
    assert result.wer < 0.8
    assert result.audio_seconds / result.transcribe_seconds > 1.0


@pytest.mark.flower
@pytest.mark.weights
def test_the_kws_demo_job_learns_keywords_of_held_out_speakers(session_home):
    """`make demo`'s job (synthesis, real tiny.en, Flower simulation) at 1/5 of its scale, to keep `make test` short: 60
    speakers, 20 clients, 5 a round, 8 rounds, and 5 of the 25 non-keyword words as the unknown class (synthesis and
    encoding were most of the test's time; measured 96.2 %, 6.1 % at round 0). The full demo's recipe is the kws
    benchmark's."""
    from fedwhisper.data.speech_commands import COMMANDS
    from fedwhisper.data.synth_kws import KwsSynthesisOptions
    from fedwhisper.demo import run_kws_demo
    from fedwhisper.kws.task import KwsOptions

    words = (*COMMANDS, "bed", "bird", "house", "marvin", "zero")
    run = run_kws_demo(
        "tiny.en",
        corpus=KwsSynthesisOptions(speakers=60, words=words),
        options=KwsOptions(num_clients=20, clients_per_round=5, rounds=8),
    )
    assert [row["round"] for row in run.rows] == list(range(9))
    assert run.rows[0]["test_accuracy"] < 0.2 and run.rows[-1]["test_accuracy"] >= 0.95
    assert all(row["clients_trained"] == 5 for row in run.rows[1:])
    assert (run.path / "accuracy.png").is_file()
