"""The web app end to end in a real headless Chromium: upload a synthesised clip, read the transcript off the page."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from fedwhisper.audio import write_audio
from fedwhisper.data.tts import speaker_voices
from fedwhisper.metrics import word_error_rate
from fedwhisper.serve.app import transcribe_and_translate

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SENTENCE = "The weather today is sunny and warm."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def app_url(session_home):
    from fedwhisper.models.registry import import_packaged_model

    import_packaged_model("tiny.en")  # before the server starts, so its first request only loads the model
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "fedwhisper", "app", "--port", str(port), "--model", "tiny.en"],
                              env=os.environ | {"FEDWHISPER_HOME": str(session_home)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the app did not start:\n{server.stdout.read().decode(errors='replace')[-3000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.weights
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (make setup installs it)")
def test_upload_a_clip_and_read_the_transcript_back(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    voice = next(v for v in speaker_voices(12, "en", 0) if v.engine == "flite")
    clip = tmp_path / "weather.wav"
    write_audio(clip, np.pad(voice.synthesize(SENTENCE), 8000))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(app_url)
            page.locator("#audio input[type=file]").set_input_files(str(clip))
            expect(page.locator("#audio audio, #audio .waveform-container, #audio [data-testid='waveform-Audio']").first).to_be_attached(timeout=30_000)
            page.locator("#run").click()
            transcript = page.locator("#transcript textarea")
            expect(transcript).not_to_have_value("", timeout=120_000)
            text = transcript.input_value()
            expect(page.locator("#timing")).to_contain_text("transcribed in", timeout=10_000)
            page.screenshot(path=str(tmp_path / "app.png"))
        finally:
            browser.close()
    assert text == transcribe_and_translate(str(clip), "tiny.en")[0]  # the page shows what the model says
    assert word_error_rate([SENTENCE], [text]) <= 0.25, text
