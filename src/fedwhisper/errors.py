"""The one user-facing error type: bad audio, corpus, model, options or run directory. The CLI prints it in one line;
any other exception is a bug and keeps its traceback."""


class FedwhisperError(Exception):
    pass


class Interrupted(FedwhisperError):
    """Ctrl-C or SIGTERM stopped a long job; the message says what was kept and how to continue."""
