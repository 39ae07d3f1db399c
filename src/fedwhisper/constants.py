"""Whisper's fixed numbers, in one place."""

SAMPLE_RATE = 16_000  # Hz: every model input
HOP_LENGTH = 160  # samples per log-mel frame
IGNORE_INDEX = -100  # label positions the loss skips
BACKENDS = ("transformers", "ctranslate2")  # inference: torch, or faster-whisper on a CTranslate2 export
MULTILINGUAL_VOCAB_SIZE = 51_865  # English-only Whisper models have 51,864 tokens; multilingual 51,865 (51,866 for large-v3)


def is_multilingual(vocab_size: int) -> bool:
    """The one rule for "is this Whisper multilingual": its vocabulary size (config.vocab_size)."""
    return vocab_size >= MULTILINGUAL_VOCAB_SIZE


TRAINED_WINDOW_FILE = "fedwhisper_window.json"  # in a fine-tuned model directory: the encoder window it was trained on
