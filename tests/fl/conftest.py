"""Strategy and server tests build Flower Messages outside a ServerApp."""

import pytest


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages are stamped with the run they belong to, as inside a ServerApp."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
