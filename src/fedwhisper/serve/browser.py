"""Drive the web app in a headless Chromium as a user would: start `fedwhisper app`, upload a clip, press Transcribe,
read the page. The app's end-to-end test and the Swedish benchmark's screenshot use it. Needs playwright (extra
`test`) and Debian's chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Offline machines: no update checks, sync or QUIC probes; no sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(models: list[str], startup_timeout: float = 120) -> Iterator[str]:
    """`fedwhisper app --model …` in a subprocess on a free port; yields its URL and stops it afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "fedwhisper", "app", "--port", str(port)] + [arg for m in models for arg in ("--model", m)]
    server = subprocess.Popen(command, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the app did not start:\n{server.stdout.read().decode(errors='replace')[-3000:]}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def use_app(url: str, clip: str | Path, screenshot: str | Path | None = None, timeout_seconds: float = 300) -> dict[str, str]:
    """Upload ``clip`` to the app at ``url`` (default model, language auto), press Transcribe; the page's transcript,
    translation and timing line."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#audio input[type=file]").set_input_files(str(clip))
            expect(
                page.locator("#audio audio, #audio .waveform-container, #audio [data-testid='waveform-Audio']").first
            ).to_be_attached(timeout=30_000)
            page.locator("#run").click()
            # the callback fills all three outputs at once; the timing line is the last to render
            expect(page.locator("#timing")).to_contain_text("transcribed in", timeout=timeout_seconds * 1000)
            result = {
                "transcript": page.locator("#transcript textarea").input_value(),
                "translation": page.locator("#translation textarea").input_value(),
                "timing": page.locator("#timing").inner_text().strip(),
            }
            if screenshot:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return result
