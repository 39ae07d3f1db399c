"""The converted transformers model decodes exactly like faster-whisper on the same packaged checkpoint."""

import shutil

import numpy as np
import pytest
import torch

from fedwhisper.data.tts import speaker_voices
from fedwhisper.models.registry import PACKAGED_MODELS, _locate, load_whisper

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "It is easier to fight for one's principles than to live up to them.",
    "Put things back where you found them.",
    "Six spoons of fresh snow peas and five thick slabs of blue cheese.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags.",
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "Rice is often served in round bowls.",
]


def ctranslate2_dir(name: str, tmp_path):
    """The packaged checkpoint as a directory faster-whisper opens (parts joined into one model.bin)."""
    model = PACKAGED_MODELS[name]
    out = tmp_path / name
    out.mkdir()
    with open(out / "model.bin", "wb") as joined:
        for part in model.parts:
            joined.write(_locate(model, part).read_bytes())
    shutil.copy(_locate(model, model.config), out / "config.json")
    shutil.copy(_locate(model, model.tokenizer), out / "tokenizer.json")
    for vocabulary in _locate(model, model.config).parent.glob("vocabulary.*"):
        shutil.copy(vocabulary, out / vocabulary.name)
    return out


@pytest.mark.weights
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_greedy_transcripts_match_faster_whisper(session_home, tmp_path, name):
    import ctranslate2
    from faster_whisper import WhisperModel
    from faster_whisper.audio import pad_or_trim

    voices = speaker_voices(len(SENTENCES), "en", seed=7)
    clips = [voice.synthesize(text) for voice, text in zip(voices, SENTENCES)]
    reference = WhisperModel(str(ctranslate2_dir(name, tmp_path)), device="cpu", compute_type="float32")
    # Both engines get faster-whisper's own log-mel features, so any difference is the model's.
    features = np.stack([pad_or_trim(reference.feature_extractor(clip)) for clip in clips]).astype(np.float32)

    model, processor = load_whisper(name)
    tokenizer = processor.tokenizer
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    kwargs = {}
    if model.generation_config.is_multilingual:
        prompt = ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
        kwargs = {"language": "en", "task": "transcribe"}
    with torch.inference_mode():
        ours = processor.batch_decode(
            model.generate(torch.from_numpy(features), num_beams=1, do_sample=False, **kwargs), skip_special_tokens=True
        )
    results = reference.model.generate(
        ctranslate2.StorageView.from_array(features),
        [tokenizer.convert_tokens_to_ids(prompt)] * len(clips),
        beam_size=1,
        suppress_blank=True,
        suppress_tokens=[-1],
        max_length=448,
    )
    theirs = [tokenizer.decode(result.sequences_ids[0]) for result in results]

    agree = sum(a.strip() == b.strip() for a, b in zip(ours, theirs))
    assert agree >= 9, list(zip(ours, theirs))
    assert sum(bool(text.strip()) for text in ours) == len(ours)  # real transcripts, not empty agreement
