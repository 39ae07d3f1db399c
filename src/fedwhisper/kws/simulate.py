"""Run the Flower apps in-process with Flower's simulation engine (Ray): one virtual SuperNode per client."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from fedwhisper.kws.runlog import RunLog
from fedwhisper.kws.task import KwsOptions, with_recipe


class FederationFailed(RuntimeError):
    pass


def simulate(options: KwsOptions, run_dir: str | Path, resume: bool = False, on_round: Callable[[dict], None] | None = None,
             verbose: bool = False) -> RunLog:
    from flwr.simulation import run_simulation

    from fedwhisper.fl.kws_app import build_server_app, client_app

    if not verbose:
        # run_simulation's deprecation notice and the fraction_evaluate=0 notice are expected here.
        logging.getLogger("flwr").setLevel(logging.ERROR)
    options = with_recipe(options)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only; silences Ray's FutureWarning
    cpus = os.cpu_count() or 1
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": verbose},
    }
    overrides = {**options.to_config(), "run-dir": str(run_dir), "resume": resume}
    run_simulation(server_app=build_server_app(overrides, on_round), client_app=client_app,
                   num_supernodes=options.num_clients, backend_config=backend_config, verbose_logging=verbose)
    runlog = RunLog(run_dir)
    if runlog.last_round < options.rounds:
        raise FederationFailed(f"the federation stopped after round {runlog.last_round} of {options.rounds} (see the log above)")
    return runlog
