"""What every command module shares: the console and the one-line failure."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def fail(message: str) -> typer.Exit:
    """Print ``message`` as the command's one-line error; raise the returned Exit."""
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=1)
