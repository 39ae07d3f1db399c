"""The Gradio web app: upload or record audio, pick a model (packaged, imported or fine-tuned), read the transcript
and its English translation (Whisper's translate task on multilingual models), with the time each took."""

from __future__ import annotations

import functools
import os
import time

from fedwhisper.constants import BACKENDS

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: these machines are offline

LANGUAGES = ("auto", "en", "sv", "de", "fr", "es", "it", "nl", "pl", "pt", "fi", "da", "no", "hi")


def discover_models() -> list[str]:
    """Imported packaged models and the best model of every fine-tuning run under FEDWHISPER_HOME."""
    from fedwhisper.models.registry import PACKAGED_MODELS, is_installed
    from fedwhisper.runs import runs_root

    packaged = [name for name in PACKAGED_MODELS if is_installed(name)]
    runs = sorted(str(p.parent) for p in runs_root().glob("*/best/config.json"))
    return packaged + runs


@functools.lru_cache(maxsize=2)
def _transcriber(model_ref: str, backend: str, assistant: str | None):
    from fedwhisper.backends import load_transcriber

    return load_transcriber(model_ref, backend, assistant=assistant)


def transcribe_and_translate(
    audio_path: str | None, model_ref: str, language: str = "auto", backend: str = "transformers", assistant: str = "none"
) -> tuple[str, str, str]:
    """(transcript, English translation, timing note) for one file; errors come back as messages, not exceptions."""
    from fedwhisper.audio import load_audio
    from fedwhisper.errors import FedwhisperError
    from fedwhisper.transcribe import WHISPER_TEMPERATURES, DecodingOptions

    if not audio_path:
        return "", "", "Upload or record some audio first."
    try:
        audio = load_audio(audio_path)
        started = time.perf_counter()
        assistant = None if assistant in ("none", "", None) else assistant
        transcriber = _transcriber(model_ref, backend, assistant)
        loaded = time.perf_counter() - started
        language = None if language == "auto" else language
        started = time.perf_counter()
        transcript = transcriber(audio, DecodingOptions(language=language, temperatures=WHISPER_TEMPERATURES), timestamps=False)
        transcribe_seconds = time.perf_counter() - started
        if transcriber.multilingual:
            started = time.perf_counter()
            translation = transcriber(
                audio,
                DecodingOptions(language=transcript.language, task="translate", temperatures=WHISPER_TEMPERATURES),
                timestamps=False,
            ).text
            translate_seconds = time.perf_counter() - started
        else:
            translation, translate_seconds = "(English-only model: the transcript is the English text)", 0.0
    except FedwhisperError as error:
        return "", "", f"Error: {error}"
    answered = f"{model_ref} on {backend}" + (f" (assistant {assistant})" if assistant else "")
    timing = (
        f"{answered}: {transcript.duration:.1f} s of audio ({transcript.language}); transcribed in {transcribe_seconds:.1f} s"
        + (f", translated in {translate_seconds:.1f} s" if translate_seconds else "")
        + (f"; model loaded in {loaded:.1f} s" if loaded > 0.5 else "")
    )
    return transcript.text, translation, timing


def build_app(models: list[str]):
    import gradio as gr

    with gr.Blocks(title="fedwhisper", analytics_enabled=False) as blocks:
        gr.Markdown("# fedwhisper\nTranscribe speech, and translate it into English, with packaged or fine-tuned Whisper models.")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Audio", elem_id="audio")
                model = gr.Dropdown(choices=models, value=models[0], label="Model", allow_custom_value=True, elem_id="model")
                language = gr.Dropdown(choices=list(LANGUAGES), value="auto", label="Spoken language", elem_id="language")
                backend = gr.Radio(
                    choices=list(BACKENDS),
                    value="transformers",
                    label="Backend",
                    elem_id="backend",
                    info="ctranslate2: faster-whisper on the model's CTranslate2 export (made on first use)",
                )
                assistant = gr.Dropdown(
                    choices=["none", *models],
                    value="none",
                    label="Assistant (speculative decoding)",
                    elem_id="assistant",
                    allow_custom_value=True,
                    info="a student of the model drafts tokens the model checks: same text",
                )
                run = gr.Button("Transcribe", variant="primary", elem_id="run")
            with gr.Column():
                transcript = gr.Textbox(label="Transcript", lines=6, elem_id="transcript")
                translation = gr.Textbox(label="English translation", lines=6, elem_id="translation")
                timing = gr.Markdown(elem_id="timing")
        run.click(
            transcribe_and_translate,
            inputs=[audio, model, language, backend, assistant],
            outputs=[transcript, translation, timing],
            api_name="transcribe",
        )
    return blocks
