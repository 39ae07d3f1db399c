"""The one user-facing error type: bad audio, corpus, model, options or run directory. The CLI prints it in one line;
any other exception is a bug and keeps its traceback."""

import threading

# Set by the CLI's Ctrl-C/SIGTERM handler. The KeyboardInterrupt it raises can be swallowed when the signal lands in a
# finalizer ("Exception ignored in ..."), so long loops also check this at each step.
STOP_REQUESTED = threading.Event()


def stop_if_requested() -> None:
    if STOP_REQUESTED.is_set():
        raise KeyboardInterrupt


class FedwhisperError(Exception):
    pass


class Interrupted(FedwhisperError):
    """Ctrl-C or SIGTERM stopped a long job; the message says what was kept and how to continue."""
