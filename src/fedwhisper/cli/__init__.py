"""The ``fedwhisper`` command line: one verb per job, grouped by subject; each command parses its options and makes
one call into the library. A ``FedwhisperError`` is printed in one line; anything else keeps its traceback."""

from __future__ import annotations

import os
import sys

if not sys.stderr.isatty():  # logs and CI: a progress line every 30 s instead of thousands of carriage-return frames
    os.environ.setdefault("TQDM_MININTERVAL", "30")

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from fedwhisper.cli import asr, data, demo, kws, models, serve  # noqa: E402
from fedwhisper.cli.common import fail  # noqa: E402
from fedwhisper.errors import FedwhisperError  # noqa: E402


class _Commands(TyperGroup):
    """The top-level group: a user error raised anywhere below becomes one line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FedwhisperError as error:
            raise fail(str(error)) from None


app = typer.Typer(help="Adapt OpenAI Whisper to private speech without moving the audio.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False, cls=_Commands)
app.add_typer(models.app, name="models")
app.add_typer(data.app, name="data")
app.add_typer(kws.app, name="kws")
app.add_typer(asr.app, name="asr")
app.command()(serve.transcribe)
app.command("app")(serve.web_app)
app.command()(demo.demo)


@app.callback()
def setup() -> None:
    """Adapt OpenAI Whisper to private speech without moving the audio."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # generation-config notices drown the progress bars
    transformers_logging.disable_progress_bar()  # "Loading weights" bars for every model load
