"""Every command's --help, generated from the typer tree: a command added later is covered without editing this file."""

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from fedwhisper.cli import app


def _paths(command: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            paths += _paths(sub, prefix + (name,))
    return paths


PATHS = _paths(get_command(app))


def test_the_tree_holds_every_sub_app():
    assert {p[0] for p in PATHS if p} >= {"models", "data", "kws", "asr", "transcribe", "app", "demo"}
    assert len(PATHS) > 20


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "fedwhisper")
def test_help_exits_zero(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
