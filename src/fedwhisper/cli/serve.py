"""`fedwhisper transcribe` and `fedwhisper app`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedwhisper.cli.common import console, fail


def transcribe(
    files: Annotated[list[Path], typer.Argument(help="audio files of any length (wav, flac, ogg, mp3)")],
    model: Annotated[str, typer.Option(help="packaged name, model directory (e.g. RUN/best) or hub id")] = "tiny.en",
    language: Annotated[str | None, typer.Option(help="spoken language [detected]")] = None,
    task: Annotated[str, typer.Option(help="transcribe, or translate into English (multilingual models)")] = "transcribe",
    output_format: Annotated[list[str], typer.Option("--format", "-f", help="txt, srt, vtt, json (repeat for several)")] = ["txt"],  # noqa: B006
    out_dir: Annotated[Path, typer.Option(help="where the transcripts go")] = Path("."),
    batch_size: Annotated[int, typer.Option(help="30-s chunks decoded together")] = 8,
    num_beams: Annotated[int, typer.Option()] = 1,
    temperature_fallback: Annotated[bool, typer.Option(help="Whisper's fallback: decode a repetitive or improbable chunk again at "
                                                            "temperatures 0.2 … 1.0")] = True,
) -> None:
    """Transcribe (or translate) audio of any length: 30-s chunks with overlap, segment timestamps, txt/srt/vtt/json."""
    from tqdm.auto import tqdm

    from fedwhisper.audio import AudioError
    from fedwhisper.models.registry import load_whisper
    from fedwhisper.transcribe import (
        OUTPUT_FORMATS,
        WHISPER_TEMPERATURES,
        DecodingOptions,
        LongFormTranscriber,
        generation_kwargs,
        transcribe_file,
        write_transcript,
    )

    unknown = [f for f in output_format if f not in OUTPUT_FORMATS]
    if unknown:
        raise fail(f"unknown format {', '.join(unknown)}; choose from {', '.join(OUTPUT_FORMATS)}")
    model_obj, processor = load_whisper(model)
    options = DecodingOptions(language=language, task=task, batch_size=batch_size, num_beams=num_beams,
                              temperatures=WHISPER_TEMPERATURES if temperature_fallback else (0.0,))
    generation_kwargs(model_obj, options)  # refuse an impossible language/task before any audio is read
    transcriber = LongFormTranscriber(model_obj, processor, batch_size=batch_size)
    failed, audio_seconds, started = 0, 0.0, time.perf_counter()
    for file in tqdm(files, desc="transcribe", unit="file", disable=len(files) < 2):
        try:
            transcript = transcribe_file(transcriber, file, options)
        except AudioError as error:
            console.print(f"[red]skipped[/red] {escape(str(error))}")
            failed += 1
            continue
        audio_seconds += transcript.duration
        written = write_transcript(transcript, out_dir, output_format)
        console.print(f"[bold]{escape(str(file))}[/bold] ({transcript.language}, {transcript.duration:.1f} s): {escape(transcript.text)}")
        console.print(f"  -> {', '.join(str(p) for p in written)}")
    seconds = time.perf_counter() - started
    if audio_seconds:
        console.print(f"{audio_seconds:.1f} s of audio in {seconds:.1f} s ({audio_seconds / seconds:.1f} audio seconds per second)")
    if failed:
        raise typer.Exit(code=1)


def web_app(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 7860,
    model: Annotated[list[str] | None, typer.Option(help="models offered (repeat); default: imported models and fine-tuned runs")] = None,
) -> None:
    """A Gradio web app: upload or record audio, pick a model, get the transcript and an English translation."""
    from fedwhisper.serve.app import build_app, discover_models

    choices = model or discover_models()
    if not choices:
        raise fail("no models found: import one (`fedwhisper models import tiny.en`) or pass --model")
    console.print(f"models: {', '.join(choices)}")
    build_app(choices).launch(server_name=host, server_port=port)
