"""Word and character error rates after Whisper's text normalisers."""

from __future__ import annotations

import functools

import jiwer

from fedwhisper.errors import FedwhisperError


@functools.cache
def normalizer(language: str | None):
    """Whisper's English normaliser for English, its basic normaliser for every other language."""
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer() if language in (None, "en", "english") else BasicTextNormalizer()


def _normalised_pairs(references: list[str], hypotheses: list[str], language: str | None) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    normalise = normalizer(language)
    pairs = [(normalise(r), normalise(h)) for r, h in zip(references, hypotheses)]
    pairs = [(r, h) for r, h in pairs if r.strip()]  # an empty reference has no defined error rate
    if not pairs:
        raise FedwhisperError("no non-empty reference after normalisation")
    return [r for r, _ in pairs], [h for _, h in pairs]


def word_error_rate(references: list[str], hypotheses: list[str], language: str | None = "en") -> float:
    refs, hyps = _normalised_pairs(references, hypotheses, language)
    return float(jiwer.wer(refs, hyps))


def character_error_rate(references: list[str], hypotheses: list[str], language: str | None = "en") -> float:
    refs, hyps = _normalised_pairs(references, hypotheses, language)
    return float(jiwer.cer(refs, hyps))
