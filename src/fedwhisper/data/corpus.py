"""Corpora as ``datasets`` objects, and detection of which real layout a directory follows."""

from __future__ import annotations

import logging
from pathlib import Path

from fedwhisper.errors import FedwhisperError

AUDIO_COLUMN = "audio"
log = logging.getLogger("fedwhisper.data")


def with_skipped(corpus, skipped: dict[str, str], source: str | Path, what: str):
    """``corpus`` with ``skipped`` ({file or utterance: why}, what ``data info`` and ``data check`` list), and one
    warning line naming what was left out: a reader never drops a row in silence."""
    corpus.skipped = skipped
    if skipped:
        named = [f"{name} ({why})" for name, why in skipped.items()]
        shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        log.warning("%s: %d %s left out: %s", source, len(skipped), what, shown)
    return corpus


# Speaker metadata columns that readers fill where the corpus says (Kaldi's spk2gender and spk2age): what `data info`
# counts and evaluation reports WER by.
GROUP_COLUMNS = ("age_group", "gender")


def speaker_values(dataset, column: str) -> dict[str, str]:
    """Each speaker's value of a speaker-level ``column`` (one of ``GROUP_COLUMNS``); {} when the split lacks it."""
    return dict(zip(dataset["speaker_id"], dataset[column])) if column in dataset.column_names else {}


def audio_dataset(columns: dict[str, list], value_types: dict[str, str]):
    """A ``datasets.Dataset`` whose ``audio`` column holds file paths as a datasets Audio feature.

    The column is kept undecoded (``decode=False``): datasets' own decoder needs torchcodec, which has no
    CPU build here, so :func:`fedwhisper.audio.load_audio` decodes the {path, bytes} entries instead.
    Building it as a struct and casting avoids datasets' encoder, which needs torchcodec even for paths.
    """
    import datasets

    features = datasets.Features(
        {AUDIO_COLUMN: {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}}
        | {name: datasets.Value(kind) for name, kind in value_types.items()}
    )
    data = dict(columns)
    data[AUDIO_COLUMN] = [{"bytes": None, "path": str(path)} for path in columns[AUDIO_COLUMN]]
    dataset = datasets.Dataset.from_dict(data, features=features)
    return dataset.cast_column(AUDIO_COLUMN, datasets.Audio(sampling_rate=16_000, decode=False))


def undecoded_audio(dataset):
    """``dataset`` (or DatasetDict) with its audio column switched to {path, bytes} entries."""
    import datasets

    return dataset.cast_column(AUDIO_COLUMN, datasets.Audio(sampling_rate=16_000, decode=False))


# Hub datasets name the same things differently: Common Voice has sentence/client_id,
# google/speech_commands a ClassLabel label and utterance_id.
_RENAMES = {"sentence": "transcription", "text": "transcription", "client_id": "speaker_id", "utterance_id": "utterance"}


def standardise_columns(corpus):
    """Rename hub columns to ours (transcription, speaker_id, utterance) and turn a ClassLabel ``label`` into strings."""
    import datasets

    def standardise(dataset):
        renames = {old: new for old, new in _RENAMES.items() if old in dataset.column_names and new not in dataset.column_names}
        dataset = dataset.rename_columns(renames)
        label = dataset.features.get("label")
        if isinstance(label, datasets.ClassLabel):
            dataset = dataset.cast_column("label", datasets.Value("string")).map(
                lambda row: {"label": label.int2str(int(row["label"]))}
            )
        return dataset

    return datasets.DatasetDict({split: standardise(dataset) for split, dataset in corpus.items()})


def corpus_kind(source: str | Path) -> str:
    """Which reader fits ``source``: speech_commands, common_voice, kaldi, audiofolder, or hub (a dataset id)."""
    from fedwhisper.data.audiofolder import is_audiofolder
    from fedwhisper.data.common_voice import is_common_voice
    from fedwhisper.data.kaldi import is_kaldi
    from fedwhisper.data.speech_commands import is_speech_commands

    path = Path(source)
    if path.is_dir():
        for kind, matches in (
            ("speech_commands", is_speech_commands),
            ("common_voice", is_common_voice),
            ("kaldi", is_kaldi),
            ("audiofolder", is_audiofolder),
        ):
            if matches(path):
                return kind
        raise FedwhisperError(f"{path}: not a Speech Commands, Common Voice, Kaldi or audiofolder directory")
    if path.exists():
        raise FedwhisperError(f"{source}: a file, not a corpus directory (give the folder that holds the corpus)")
    if str(source).startswith((".", "/", "~")):
        raise FedwhisperError(f"{source}: corpus directory not found")
    return "hub"


def load_corpus(source: str | Path, hub_config: str | None = None):
    """Read any supported corpus into a ``datasets.DatasetDict`` with an undecoded ``audio`` column.

    Directories in the Speech Commands, Common Voice, Kaldi or audiofolder layouts are read directly; anything else
    is taken as a Hugging Face hub dataset id (e.g. ``google/speech_commands``), which needs a network.
    """
    from fedwhisper.data.audiofolder import read_audiofolder
    from fedwhisper.data.common_voice import read_common_voice
    from fedwhisper.data.kaldi import read_kaldi
    from fedwhisper.data.speech_commands import read_speech_commands

    kind = corpus_kind(source)
    if kind == "hub":
        import datasets

        try:
            hub = datasets.load_dataset(str(source), hub_config)
        except Exception as error:  # no network, no such dataset, no access: the hub's many error types say the same to a user
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise FedwhisperError(f"{source}: not a corpus directory, and not loadable as a hub dataset ({reason})") from None
        return standardise_columns(undecoded_audio(hub))
    readers = {
        "speech_commands": read_speech_commands,
        "common_voice": read_common_voice,
        "kaldi": read_kaldi,
        "audiofolder": read_audiofolder,
    }
    return readers[kind](source)
