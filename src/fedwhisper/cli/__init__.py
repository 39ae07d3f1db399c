"""The ``fedwhisper`` command line: one verb per job, grouped by subject; each command parses its options and makes
one call into the library. A ``FedwhisperError`` is printed in one line; anything else keeps its traceback."""

from __future__ import annotations

import os
import signal
import sys
import threading

if not sys.stderr.isatty():  # logs and CI: a progress line every 30 s instead of thousands of carriage-return frames
    os.environ.setdefault("TQDM_MININTERVAL", "30")
# torch's OpenMP threads spin while they wait for each other: with another process on one of the cores, the spinning
# thread and the straggler make every op ~2x slower. Sleeping waits cost a few % on a quiet machine and recover much of
# that (`benchmarks/run.py distill:threads`). OpenMP reads this once, when torch loads: so before any import of torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402
import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from fedwhisper.cli import asr, data, demo, distill, kws, models, serve  # noqa: E402
from fedwhisper.cli.common import fail  # noqa: E402
from fedwhisper.errors import STOP_REQUESTED, FedwhisperError, Interrupted  # noqa: E402

INTERRUPTED_EXIT = 130  # the shell's code for a job stopped by SIGINT


def _stop(signum, frame):
    STOP_REQUESTED.set()
    raise KeyboardInterrupt  # `kill` stops a job the way Ctrl-C does: what is done is kept, the resume line is printed


class _Commands(TyperGroup):
    """The top-level group: a user error raised anywhere below becomes one line and exit code 1 (2 for a bad option),
    an interruption one line and exit code 130."""

    def invoke(self, ctx):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop)
            # a job started from a background shell inherits SIGINT ignored, and Python then never raises
            # KeyboardInterrupt: Ctrl-C (or `kill -INT`) must stop every job the same way
            signal.signal(signal.SIGINT, _stop)
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # a bad option value: one line naming the option, not click's boxed usage text
            hint = f" (see {error.ctx.command_path} --help)" if error.ctx else ""
            fail(error.format_message() + hint)
            raise typer.Exit(code=2) from None
        except (Interrupted, KeyboardInterrupt) as error:
            fail(str(error) if isinstance(error, Interrupted) else "interrupted")
            # Flower's server thread and Ray's helpers may still be waiting on clients that are gone: leave now.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(INTERRUPTED_EXIT)
        except FedwhisperError as error:
            raise fail(str(error)) from None


app = typer.Typer(
    help="Adapt OpenAI Whisper to private speech without moving the audio.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=_Commands,
)
app.add_typer(models.app, name="models")
app.add_typer(data.app, name="data")
app.add_typer(kws.app, name="kws")
app.add_typer(asr.app, name="asr")
app.add_typer(distill.app, name="distill")
app.command()(serve.transcribe)
app.command("app")(serve.web_app)
app.command()(demo.demo)


@app.callback()
def setup() -> None:
    """Adapt OpenAI Whisper to private speech without moving the audio."""
    import logging

    from transformers.utils import logging as transformers_logging

    library = logging.getLogger("fedwhisper")  # the library's warnings, one line each on this command's stderr
    handler = next((h for h in library.handlers if h.get_name() == "fedwhisper-cli"), None)
    if handler is None:
        handler = logging.StreamHandler()
        handler.set_name("fedwhisper-cli")
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        library.addHandler(handler)
        library.setLevel(logging.INFO)  # the run's log file also gets the library's INFO lines
    handler.setStream(sys.stderr)  # a command invoked again in one process (tests) may have another stderr

    transformers_logging.set_verbosity_error()  # generation-config notices drown the progress bars
    transformers_logging.disable_progress_bar()  # "Loading weights" bars for every model load
    if not sys.stderr.isatty():  # in a log file datasets' bars ("Saving the dataset", map) are a frame per shard
        import datasets

        datasets.disable_progress_bars()
