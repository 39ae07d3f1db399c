"""`fedwhisper models`: packaged pretrained Whisper checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedwhisper.cli.common import console

app = typer.Typer(
    help="Pretrained Whisper: list and import packaged checkpoints; export any model to CTranslate2.", no_args_is_help=True
)


@app.command("list")
def models_list() -> None:
    """Packaged models, whether their packages are installed, and where they are imported."""
    from fedwhisper.models.registry import IMPORT_MARKER, PACKAGED_MODELS, fedwhisper_home, is_installed, missing_files

    def packages(name: str) -> str:
        if not is_installed(name):
            return "missing"
        lacking = missing_files(name)
        return f"incomplete: no {', '.join(lacking)}" if lacking else "installed"

    table = Table("name", "install with", "packages", "imported at")
    for name, model in PACKAGED_MODELS.items():
        out = fedwhisper_home() / "models" / name
        table.add_row(
            name,
            escape(f"pip install 'fedwhisper[{model.extra}]'"),
            escape(packages(name)),
            str(out) if (out / IMPORT_MARKER).is_file() else "-",
        )
    console.print(table)


@app.command("import")
def models_import(
    name: Annotated[str, typer.Argument(help="tiny.en or base (small: its PyPI packages are incomplete)")],
    out: Annotated[Path | None, typer.Option(help="output directory (default: $FEDWHISPER_HOME/models/NAME)")] = None,
    force: Annotated[bool, typer.Option(help="convert again even if a finished import exists")] = False,
) -> None:
    """Convert a packaged CTranslate2 checkpoint into a Hugging Face transformers model directory."""
    import time

    from fedwhisper.models.registry import import_packaged_model

    started = time.perf_counter()
    with console.status(f"importing {name}"):
        path = import_packaged_model(name, out, force=force)
    console.print(f"{name} -> {path} ({time.perf_counter() - started:.1f} s)")


@app.command("export")
def models_export(
    model: Annotated[
        str, typer.Argument(help="packaged name, transformers model directory (e.g. RUN/best, a student) or hub id")
    ],
    out: Annotated[Path, typer.Option(help="the CTranslate2 directory to write")],
    quantization: Annotated[str, typer.Option(help="int8, int8_float32 or float32")] = "int8",
    force: Annotated[bool, typer.Option(help="convert again even if a finished export of this model exists")] = False,
) -> None:
    """Export to CTranslate2 for faster-whisper (fast CPU serving): use it as --model with --backend ctranslate2."""
    import time

    from fedwhisper.models.export import export_ctranslate2

    started = time.perf_counter()
    with console.status(f"exporting {model}"):
        path = export_ctranslate2(model, out, quantization, force=force)
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e6
    console.print(f"{model} -> {path} ({quantization}, {size:.1f} MB, {time.perf_counter() - started:.1f} s)")
