"""Natural sentences for ASR synthesis, from text that ships with an installed package.

English: Debian's ``fortunes`` package (quotations and sayings); more English, everyday usage, in WordNet's example
sentences (Debian's ``wordnet-base``, ``wordnet_sentences``). Swedish: the ``journal-digital`` PyPI package (transcripts
of Swedish newsreel speech, CC BY-NC 4.0). ``--text FILE`` (one sentence a line) replaces both.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from fedwhisper.errors import FedwhisperError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
_LETTERS = {"en": "A-Za-z", "sv": "A-Za-zÅÄÖåäöÉé"}
MIN_WORDS, MAX_WORDS = 4, 16


class TextSourceError(FedwhisperError):
    pass


def _clean(candidates, language: str) -> list[str]:
    """Single sentences of MIN..MAX words made only of letters and light punctuation, deduplicated and sorted."""
    letters = _LETTERS[language]
    pattern = re.compile(rf"^[{letters}][{letters}' ,\-]+[.?!]$")
    keep = set()
    for text in candidates:
        # A line break between a letter and a capital is a verse or heading break, not a sentence gap:
        # mark it so the pieces fail the end-punctuation test instead of merging into a run-on sentence.
        text = re.sub(r"(?<=[^\W\d_])\n(?=[A-ZÅÄÖ])", " \x00 ", text)
        for sentence in re.split(r"(?<=[.?!])\s+|\s*\x00\s*", " ".join(text.split())):
            if MIN_WORDS <= len(sentence.split()) <= MAX_WORDS and pattern.match(sentence) and "--" not in sentence:
                keep.add(sentence)
    return sorted(keep)


def english_sentences() -> list[str]:
    files = (
        [p for p in FORTUNES_DIR.glob("*") if p.is_file() and not p.suffix and not p.is_symlink()]
        if FORTUNES_DIR.is_dir()
        else []
    )
    if not files:
        raise TextSourceError(
            f"no English text source: install the Debian package 'fortunes' ({FORTUNES_DIR}) or pass --text FILE"
        )
    entries = []
    for path in sorted(files):
        for entry in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            entries.append(entry.split("\t\t--")[0].split(" -- ")[0])  # drop attributions
    return _clean(entries, "en")


def wordnet_sentences() -> list[str]:
    """WordNet 3.0's usage examples (the quoted parts of its glosses, ~3x the fortunes' sentences), capitalised and
    ended with a full stop where WordNet leaves them bare."""
    files = sorted(WORDNET_DIR.glob("data.*"))
    if not files:
        raise TextSourceError(f"no WordNet text source: install the Debian package 'wordnet-base' ({WORDNET_DIR})")
    examples = []
    for path in files:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if "|" in line and not line.startswith("  "):  # a synset line; the licence header is indented
                for quoted in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    text = quoted.strip()
                    examples.append(text[:1].upper() + text[1:] + ("" if text[-1:] in ".?!" else "."))
    return [s for s in _clean(examples, "en") if s[0].isupper()]  # not the tail of an example cut at an abbreviation


def swedish_sentences() -> list[str]:
    spec = importlib.util.find_spec("journal_digital")
    if spec is None or not spec.submodule_search_locations:
        raise TextSourceError("no Swedish text source: pip install 'fedwhisper[sv]' (journal-digital) or pass --text FILE")
    root = Path(list(spec.submodule_search_locations)[0]) / "corpus" / "speech"
    lines = []
    for srt in sorted(root.rglob("*.srt")):
        for block in srt.read_text(encoding="utf-8", errors="replace").split("\n\n"):
            parts = block.strip().split("\n")
            if len(parts) >= 3 and "-->" in parts[1]:
                lines.append(" ".join(parts[2:]))
    return _clean(lines, "sv")


def sentences_from_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise TextSourceError(f"{path}: text file not found")
    lines = [" ".join(line.split()) for line in path.read_text(encoding="utf-8").splitlines()]
    unique = sorted({line for line in lines if line})
    if not unique:
        raise TextSourceError(f"{path}: no sentences (one a line expected)")
    return unique


def load_sentences(language: str, text_file: str | Path | None = None) -> list[str]:
    if text_file is not None:
        return sentences_from_file(text_file)
    sources = {"en": english_sentences, "sv": swedish_sentences}
    if language not in sources:
        raise TextSourceError(f"no built-in text source for language {language!r}; pass --text FILE")
    return sources[language]()
