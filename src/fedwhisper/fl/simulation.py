"""Flower's simulation engine (Ray) in this process: one virtual SuperNode per client, one CPU per running client."""

from __future__ import annotations

import logging
import os

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


def run_in_process(server_app: ServerApp, client_app: ClientApp, num_clients: int, verbose: bool = False) -> None:
    from flwr.simulation import run_simulation

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)  # run_simulation's deprecation notice and per-round INFO lines
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU only; silences Ray's FutureWarning
    cpus = os.cpu_count() or 1
    backend_config = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": verbose},
    }
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients, backend_config=backend_config,
                   verbose_logging=verbose)
