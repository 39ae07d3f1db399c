"""The web app end to end in a real headless Chromium: upload a synthesised clip, read the transcript off the page."""

import os

import numpy as np
import pytest

from fedwhisper.audio import write_audio
from fedwhisper.data.tts import speaker_voices
from fedwhisper.metrics import word_error_rate
from fedwhisper.serve.app import transcribe_and_translate
from fedwhisper.serve.browser import CHROMIUM, running_app, use_app

SENTENCE = "The weather today is sunny and warm."


@pytest.mark.weights
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make setup installs it)")
def test_upload_a_clip_and_read_the_transcript_back(session_home, tmp_path):
    from fedwhisper.models.registry import import_packaged_model

    import_packaged_model("tiny.en")  # before the server starts, so its first request only loads the model
    voice = next(v for v in speaker_voices(12, "en", 0) if v.engine == "flite")
    clip = tmp_path / "weather.wav"
    write_audio(clip, np.pad(voice.synthesize(SENTENCE), 8000))
    with running_app(["tiny.en"]) as url:
        page = use_app(url, clip, screenshot=tmp_path / "app.png", timeout_seconds=120)
    assert "transcribed in" in page["timing"]
    assert page["transcript"] == transcribe_and_translate(str(clip), "tiny.en")[0]  # the page shows what the model says
    assert word_error_rate([SENTENCE], [page["transcript"]]) <= 0.25, page["transcript"]
