"""`fedwhisper transcribe` and `fedwhisper app`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedwhisper.cli.common import console, fail, writable_directory


def transcribe(
    files: Annotated[list[Path], typer.Argument(help="audio files of any length (wav, flac, ogg, mp3)")],
    model: Annotated[str, typer.Option(help="packaged name, model directory (e.g. RUN/best) or hub id")] = "tiny.en",
    language: Annotated[str | None, typer.Option(help="spoken language [detected]")] = None,
    task: Annotated[str, typer.Option(help="transcribe, or translate into English (multilingual models)")] = "transcribe",
    output_format: Annotated[list[str], typer.Option("--format", "-f", help="txt, srt, vtt, json (repeat for several)")] = [
        "txt"
    ],
    out_dir: Annotated[Path, typer.Option(help="where the transcripts go")] = Path("."),
    overwrite: Annotated[bool, typer.Option(help="replace transcripts that already exist")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="30-s chunks decoded together")] = 8,
    num_beams: Annotated[int, typer.Option(min=1)] = 1,
    temperature_fallback: Annotated[
        bool, typer.Option(help="Whisper's fallback: decode a repetitive or improbable chunk again at temperatures 0.2 … 1.0")
    ] = True,
    backend: Annotated[
        str,
        typer.Option(
            help="transformers, or ctranslate2 (faster-whisper on the model's CTranslate2 export, "
            "made on first use; or a `models export` directory as --model)"
        ),
    ] = "transformers",
    assistant: Annotated[
        str | None,
        typer.Option(
            help="a student of --model (`distill`) drafting tokens that --model checks: speculative decoding, same transcript"
        ),
    ] = None,
) -> None:
    """Transcribe (or translate) audio of any length: 30-s chunks with overlap, segment timestamps, txt/srt/vtt/json.
    Long files are decoded block by block and each block is saved at once: run the same command again after an
    interruption and it continues where it stopped."""
    from tqdm.auto import tqdm

    from fedwhisper.audio import AudioError
    from fedwhisper.backends import check_backend, load_transcriber
    from fedwhisper.errors import FedwhisperError, Interrupted
    from fedwhisper.transcribe import OUTPUT_FORMATS, WHISPER_TEMPERATURES, DecodingOptions, transcribe_file, write_transcript

    unknown = [f for f in output_format if f not in OUTPUT_FORMATS]
    if unknown:
        raise fail(f"unknown format {', '.join(unknown)}; choose from {', '.join(OUTPUT_FORMATS)}")
    options = DecodingOptions(
        language=language,
        task=task,
        batch_size=batch_size,
        num_beams=num_beams,
        temperatures=WHISPER_TEMPERATURES if temperature_fallback else (0.0,),
    )
    check_backend(backend)
    planned = _planned_outputs(files, out_dir, output_format, overwrite)
    transcriber = load_transcriber(model, backend, batch_size, assistant)
    transcriber.check(options)  # refuse an impossible language/task before any audio is read
    failed, audio_seconds, started = 0, 0.0, time.perf_counter()
    for file in tqdm(files, desc="transcribe", unit="file", disable=len(files) < 2):
        partial = planned[file]
        try:
            transcript = transcribe_file(
                transcriber,
                file,
                options,
                partial=partial,
                progress=True,
                on_resume=lambda seconds, file=file, partial=partial: console.print(
                    f"{escape(str(file))}: continuing after {seconds:.1f} s saved by an earlier run ({partial})"
                ),
            )
        except AudioError as error:
            console.print(f"[red]skipped[/red] {escape(str(error))}")
            failed += 1
            continue
        except KeyboardInterrupt:
            kept = f"the finished blocks are kept in {partial}; " if partial.is_file() else ""
            raise Interrupted(f"interrupted in {file}: {kept}run the same command again to continue") from None
        audio_seconds += transcript.duration
        written = write_transcript(transcript, out_dir, output_format)
        partial.unlink(missing_ok=True)
        console.print(
            f"[bold]{escape(str(file))}[/bold] ({transcript.language}, {transcript.duration:.1f} s): {escape(transcript.text)}"
        )
        console.print(f"  -> {', '.join(str(p) for p in written)}")
    seconds = time.perf_counter() - started
    if audio_seconds:
        console.print(
            f"{audio_seconds:.1f} s of audio in {seconds:.1f} s ({audio_seconds / seconds:.1f} audio seconds per second)"
        )
    if failed == len(files):
        raise FedwhisperError(
            f"nothing was transcribed: {'the file was' if failed == 1 else f'all {failed} files were'} skipped (see above)"
        )
    if failed:
        raise FedwhisperError(f"{failed} of {len(files)} files skipped (see above); the others were transcribed")


def _planned_outputs(files: list[Path], out_dir: Path, formats: list[str], overwrite: bool) -> dict[Path, Path]:
    """Before any decoding: the output directory exists and is writable, no two inputs share an output name, and no
    finished transcript is replaced without ``overwrite``. Returns each file's partial-progress file."""
    from fedwhisper.errors import FedwhisperError
    from fedwhisper.transcribe import transcript_paths

    writable_directory(out_dir)
    owners: dict[Path, Path] = {}
    for file in files:
        for path in transcript_paths(file, out_dir, formats):
            if path in owners and owners[path] != file:
                raise FedwhisperError(
                    f"{owners[path]} and {file} would both be written to {path}; transcribe them into different --out-dir"
                )
            owners[path] = file
    partials = {file: out_dir / f".{file.stem or 'transcript'}.partial.json" for file in files}
    existing = [path for path, file in owners.items() if path.exists() and not partials[file].exists()]
    if existing and not overwrite:
        raise FedwhisperError(
            f"{existing[0]} already exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}; "
            "pass --overwrite to replace, or choose another --out-dir"
        )
    return partials


def web_app(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 7860,
    model: Annotated[
        list[str] | None, typer.Option(help="models offered (repeat); default: imported models and fine-tuned runs")
    ] = None,
) -> None:
    """A Gradio web app: upload or record audio, pick a model, get the transcript and an English translation."""
    from transformers import WhisperConfig

    from fedwhisper.errors import FedwhisperError
    from fedwhisper.models.export import is_ctranslate2_dir
    from fedwhisper.models.registry import from_pretrained, resolve_model
    from fedwhisper.serve.app import build_app, discover_models

    choices = model or discover_models()
    if not choices:
        raise fail("no models found: import one (`fedwhisper models import tiny.en`) or pass --model")
    for choice in model or []:  # before the server starts: a request must not be the first to find a model missing
        if not is_ctranslate2_dir(choice):
            from_pretrained(WhisperConfig, resolve_model(choice))
    console.print(f"models: {', '.join(choices)}")
    try:
        build_app(choices).launch(server_name=host, server_port=port)
    except OSError as error:
        raise FedwhisperError(f"cannot serve on {host}:{port} ({str(error).strip().splitlines()[0]})") from None
