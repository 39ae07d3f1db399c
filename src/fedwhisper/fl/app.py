"""`flwr run .`: one Flower app for every federated task. The run config's ``task`` picks it (``kws`` or ``asr``);
that task's options are its ``TASK.*`` keys (pyproject's [tool.flwr.app.config.TASK] table, or
``--run-config 'task="asr" asr.features="…"'``); ``run-dir`` and ``resume`` are shared."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedwhisper.errors import FedwhisperError
from fedwhisper.fl import asr_app, kws_app

TASKS = {"kws": (kws_app.serve, kws_app.build_kws_client_app), "asr": (asr_app.serve, asr_app.build_asr_client_app)}
SHARED = ("run-dir", "resume")


def task_config(run_config: dict) -> tuple[str, dict]:
    """The task's name and its run config: its own ``TASK.*`` keys without the prefix, plus the shared keys."""
    task = str(run_config.get("task", "kws"))
    if task not in TASKS:
        raise FedwhisperError(f"--run-config task must be one of {', '.join(TASKS)} (got {task!r})")
    prefix = f"{task}."
    return task, {key[len(prefix) :]: value for key, value in run_config.items() if key.startswith(prefix)} | {
        key: run_config[key] for key in SHARED if key in run_config
    }


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    task, config = task_config(dict(context.run_config))
    TASKS[task][0](grid, config)


client_app = ClientApp()


def _task_client(message: Message, context: Context) -> Message:
    task, config = task_config(dict(context.run_config))
    return TASKS[task][1](config)(message, context)


client_app.train()(_task_client)
client_app.query()(_task_client)
