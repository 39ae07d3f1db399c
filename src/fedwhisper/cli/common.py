"""What every command module shares: the console and the one-line failure."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

# Piped to a file or another program, rich would fold every line and fit every table to 80 columns: lines stay whole
# and tables take the width their cells need.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1000)


def fail(message: str) -> typer.Exit:
    """Print ``message`` as the command's one-line error; raise the returned Exit."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=1)


def writable_directory(path: Path) -> None:
    """Fail now, not after the work, if ``path`` cannot be created or written."""
    from fedwhisper.errors import FedwhisperError

    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise FedwhisperError(f"{path}: cannot write there ({error.strerror or error})") from None


def writable_new_file(path: Path, overwrite: bool) -> None:
    """Fail now, not after the work, if ``path`` exists (unless ``overwrite``) or cannot be written."""
    from fedwhisper.errors import FedwhisperError

    if path.exists() and not overwrite:
        raise FedwhisperError(f"{path} already exists; pass --overwrite to replace it, or choose another path")
    writable_directory(path.parent)


def given_options(**options) -> dict:
    """The options given on the command line (None: not given), which override a resumed run's saved ones."""
    return {key: value for key, value in options.items() if value is not None}


def resumable_run(
    prefix: str, resume: Path | None, run_dir: Path | None, data_key: str, data_label: str, **options
) -> tuple[Path, dict]:
    """A federation's run directory and config: a resumed run's saved options, overridden by the options given (None:
    not given); a fresh run needs its data (``data_key``) and gets ``RUNS/PREFIX-TIME`` unless ``run_dir`` is given."""
    from fedwhisper.errors import FedwhisperError
    from fedwhisper.runs import RunDirectory, runs_root

    given = given_options(**options)
    if resume is None and data_key not in given:
        raise FedwhisperError(f"give {data_label} (or --resume RUN_DIR)")
    base = RunDirectory(resume).saved_options() if resume else {}
    run_dir = resume or run_dir or runs_root() / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"run directory: {run_dir}")
    return run_dir, {**base, **given}
