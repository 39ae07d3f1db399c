"""Flower's simulation engine (Ray) in this process: one virtual SuperNode per client, one CPU per running client."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedwhisper.errors import FedwhisperError, Interrupted
from fedwhisper.runs import OPTIONS, RunDirectory


def simulate_run(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    run_dir: str | os.PathLike,
    rounds: int,
    command: str,
    verbose: bool = False,
) -> RunDirectory:
    """Run a federation to ``rounds`` in this process; its run directory, or a one-line error: stopped early, or
    interrupted (Ctrl-C, kill) with the ``command`` that continues it."""
    try:
        run_in_process(server_app, client_app, num_clients, verbose, log_file=Path(run_dir) / "federation.log")
    except KeyboardInterrupt:
        if not (Path(run_dir) / OPTIONS).is_file():
            raise Interrupted("interrupted before the first round; nothing was saved") from None
        raise Interrupted(
            f"interrupted: {RunDirectory(run_dir).last} of {rounds} rounds are saved in {run_dir}; "
            f"continue with `fedwhisper {command} --resume {run_dir}`"
        ) from None
    run = RunDirectory(run_dir)
    if run.last < rounds:
        raise FedwhisperError(
            f"the federation stopped after round {run.last} of {rounds} (see {Path(run_dir) / 'federation.log'})"
        )
    return run


def run_in_process(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    verbose: bool = False,
    log_file: str | os.PathLike | None = None,
) -> None:
    """Run the apps to completion. Unless ``verbose``, Flower's and Ray's own logging (a client's exception is a
    Ray traceback of hundreds of lines) goes only to ``log_file``; the server's one-line round summaries stay."""
    from flwr.common.logger import FLOWER_LOGGER, console_handler
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only; silences Ray's FutureWarning
    cpus = len(os.sched_getaffinity(0))  # the cores this process may use (taskset, cgroups), not the machine's
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": verbose},
    }
    console_level, file_handler = console_handler.level, None
    if not verbose:
        console_handler.setLevel(logging.CRITICAL)
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in (FLOWER_LOGGER.name, "fedwhisper"):
            logging.getLogger(name).addHandler(file_handler)
    try:
        with _callers_sigterm_handler():
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_config=backend_config,
                verbose_logging=verbose,
            )
    finally:
        console_handler.setLevel(console_level)
        if file_handler:
            for name in (FLOWER_LOGGER.name, "fedwhisper"):
                logging.getLogger(name).removeHandler(file_handler)
            file_handler.close()


@contextmanager
def _callers_sigterm_handler() -> Iterator[None]:
    """``ray.init`` replaces the process's SIGTERM handler (exit, or an abort from Ray's C++ core); put the caller's
    back after it, so `kill` stops a federation as the CLI does (the last round kept, the resume line printed)."""
    import ray

    ray_init = ray.init

    def init(*args, **kwargs):
        handler = signal.getsignal(signal.SIGTERM)
        try:
            return ray_init(*args, **kwargs)
        finally:
            if handler is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, handler)

    ray.init = init
    try:
        yield
    finally:
        ray.init = ray_init
