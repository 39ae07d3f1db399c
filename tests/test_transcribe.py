import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedwhisper.audio import write_audio
from fedwhisper.cli import app
from fedwhisper.errors import FedwhisperError
from fedwhisper.transcribe import Transcript, format_transcript


def test_subtitle_formats():
    transcript = Transcript(
        text="Hello there. General Kenobi.",
        duration=75.5,
        source="a.wav",
        segments=[{"start": 0.0, "end": 1.25, "text": "Hello there."}, {"start": 61.0, "end": 3725.5, "text": "General Kenobi."}],
    )
    srt = format_transcript(transcript, "srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,250\nHello there.\n\n2\n00:01:01,000 --> 01:02:05,500\nGeneral Kenobi.")
    vtt = format_transcript(transcript, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHello there.")
    assert json.loads(format_transcript(transcript, "json"))["segments"][1]["end"] == 3725.5
    with pytest.raises(FedwhisperError, match="unknown output format"):
        format_transcript(transcript, "docx")


@pytest.mark.weights
def test_long_form_audio_is_chunked_and_timestamped(session_home, tmp_path):
    from fedwhisper.data.tts import speaker_voices
    from fedwhisper.metrics import word_error_rate

    voice = next(v for v in speaker_voices(12, "en", 0) if v.engine == "flite")
    # distinct sentences: repeated ones would compress so well that every window falls back to sampling
    sentences = [
        "The weather today is sunny and warm.",
        "Please close the door when you leave.",
        "We will meet again next week.",
        "My brother bought a new bicycle yesterday.",
        "The library opens at nine in the morning.",
        "She planted tomatoes behind the old house.",
        "Our train was late because of the snow.",
        "He forgot his umbrella at the station.",
        "The children played football after school.",
        "Dinner will be ready in twenty minutes.",
        "They painted the kitchen a bright yellow.",
        "I read the whole newspaper on the bus.",
        "The museum was full of tourists on Sunday.",
        "Turn left at the bakery and walk straight on.",
        "The doctor asked him to drink more water.",
        "We listened to the radio during the long drive.",
    ]
    audio = np.concatenate([np.pad(voice.synthesize(s), (4000, 8000)) for s in sentences])
    assert audio.size / 16_000 > 35  # longer than one 30-s window
    write_audio(tmp_path / "long.wav", audio)
    write_audio(tmp_path / "silent.wav", np.zeros(16_000, dtype=np.float32))
    result = CliRunner().invoke(
        app,
        [
            "transcribe",
            str(tmp_path / "long.wav"),
            str(tmp_path / "silent.wav"),
            "--model",
            "tiny.en",
            "-f",
            "srt",
            "-f",
            "json",
            "--out-dir",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1 and "silent" in result.output  # the bad file is reported, the good one still transcribed
    transcript = json.loads((tmp_path / "out" / "long.json").read_text())
    assert word_error_rate([" ".join(sentences)], [transcript["text"]]) < 0.3, transcript["text"]
    assert len(transcript["segments"]) >= 2 and transcript["segments"][-1]["end"] > 30
    assert (tmp_path / "out" / "long.srt").read_text().startswith("1\n00:00:")


@pytest.mark.weights
def test_english_only_models_refuse_translation(session_home, tmp_path):
    write_audio(tmp_path / "a.wav", 0.1 * np.sin(np.arange(16_000) / 5.0).astype(np.float32))
    result = CliRunner().invoke(app, ["transcribe", str(tmp_path / "a.wav"), "--model", "tiny.en", "--task", "translate"])
    assert result.exit_code == 1 and "English-only" in result.output


def test_a_hallucination_loop_stops_at_a_length_set_by_the_audio(tiny_asr_model):
    # A random model never emits end-of-text: each chunk decodes until the cap, which must follow the audio's length.
    from fedwhisper.models.registry import load_whisper
    from fedwhisper.transcribe import MAX_TOKENS_PER_SECOND, LongFormTranscriber

    model, processor = load_whisper(str(tiny_asr_model))
    transcriber = LongFormTranscriber(model, processor)
    generated = []
    generate = model.generate
    model.generate = lambda *args, **kwargs: generated.append(tokens := generate(*args, **kwargs)) or tokens
    for seconds in (2, 40):
        generated.clear()
        transcriber(np.random.default_rng(0).normal(0, 0.1, 16_000 * seconds).astype(np.float32), timestamps=False)
        longest = max(t.shape[-1] for t in generated)
        window = min(seconds, 30)
        assert 8 * window < longest <= 16 + MAX_TOKENS_PER_SECOND * window + 4, (seconds, longest)  # + the 4 prompt tokens


def test_temperature_fallback_reaches_generate_and_is_reproducible(tiny_asr_model):
    import torch

    from fedwhisper.models.registry import load_whisper
    from fedwhisper.transcribe import WHISPER_TEMPERATURES, DecodingOptions, LongFormTranscriber, decode_batch, generation_kwargs

    model, processor = load_whisper(str(tiny_asr_model))
    assert generation_kwargs(model, DecodingOptions())["do_sample"] is False  # evaluation stays greedy
    fallback = DecodingOptions(temperatures=WHISPER_TEMPERATURES)
    assert generation_kwargs(model, fallback)["temperature"] == WHISPER_TEMPERATURES
    transcriber = LongFormTranscriber(model, processor)
    audio = np.random.default_rng(1).normal(0, 0.1, 16_000 * 2).astype(np.float32)
    calls = []
    generate = model.generate
    model.generate = lambda *args, **kwargs: calls.append(kwargs) or generate(*args, **kwargs)
    first = transcriber(audio, fallback, timestamps=False).text
    assert calls[0]["temperature"] == WHISPER_TEMPERATURES and calls[0]["compression_ratio_threshold"] == 1.35
    # one pass a window would make transformers stack a batch's rows unpadded, and rows decoded again differ in length
    assert "force_unique_generate_call" not in calls[0]
    assert transcriber(audio, fallback, timestamps=False).text == first
    # batched decoding from encoder outputs cannot decode again (transformers' fallback needs input_features): refused
    with pytest.raises(FedwhisperError, match="temperature fallback runs in transcription"):
        decode_batch(model, processor.tokenizer, {"input_features": torch.zeros(1, 80, 3000)}, fallback)


def test_suppression_masks_built_once_suppress_what_transformers_suppresses(tiny_asr_model):
    # generation_kwargs swaps transformers' suppression processors (they rebuild the vocabulary masks every step) for
    # ours: every step's scores and the tokens must stay exactly what transformers' own processors give
    import torch

    from fedwhisper.models.registry import load_whisper
    from fedwhisper.transcribe import DecodingOptions, generation_kwargs

    model, _ = load_whisper(str(tiny_asr_model))
    features = torch.from_numpy(np.random.default_rng(2).normal(0, 1, (2, 80, 3000)).astype(np.float32))
    common = {"max_new_tokens": 6, "return_dict_in_generate": True, "output_scores": True}
    with torch.inference_mode():
        theirs = model.generate(features, num_beams=1, do_sample=False, force_unique_generate_call=True, **common)
        ours = model.generate(features, **(generation_kwargs(model, DecodingOptions()) | common))
    assert torch.equal(theirs.sequences, ours.sequences)
    begin, suppressed = model.generation_config.begin_suppress_tokens, model.generation_config.suppress_tokens
    for step, (a, b) in enumerate(zip(theirs.scores, ours.scores, strict=True)):
        assert torch.equal(a, b), step
        assert torch.isinf(b[:, suppressed]).all() and torch.isinf(b[:, begin]).all() == (step == 0)
