"""Kaldi data directories: ``wav.scp`` and ``utt2spk``, with ``text`` (absent: untranscribed audio) and optionally
``segments``, ``spk2gender`` and ``spk2age``. A corpus is one data directory (read as its train split) or a directory
whose train/, dev/ (or validation/) and test/ are data directories.

A small reader, not lhotse's ``load_kaldi_data_dir``: lhotse asserts that utt2spk covers every recording and gives up
when a fifth of the audio is unreadable (the rule here: leave out what is broken, name it, keep the rest), resolves
relative paths against the process's working directory, and reads no spk2age."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fedwhisper.data.corpus import audio_dataset, with_skipped
from fedwhisper.errors import FedwhisperError

SPLIT_DIRS = {"train": "train", "dev": "validation", "validation": "validation", "valid": "validation", "test": "test"}
ADULT_AGE = 18  # spk2age: younger speakers are in age_group "child", the rest "adult"


def is_kaldi(root: Path) -> bool:
    root = Path(root)
    return (root / "wav.scp").is_file() or any((root / name / "wav.scp").is_file() for name in SPLIT_DIRS)


def _table(path: Path) -> dict[str, str]:
    """A Kaldi table file as {key: rest of the line}; {} when the file is absent. Fields are separated by spaces or tabs
    (speechocean762 uses tabs)."""
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split(maxsplit=1)
        if fields:
            rows[fields[0]] = fields[1].strip() if len(fields) > 1 else ""
    return rows


def _base(data_dir: Path, paths: list[str]) -> Path:
    """Where wav.scp's relative paths start: the data directory, its parent or its grandparent, whichever holds the
    first of them that exists (Kaldi recipes write paths relative to the recipe's root, e.g. WAVE/... beside train/)."""
    candidates = [data_dir, data_dir.parent, data_dir.parent.parent]
    for path in paths:
        if not Path(path).is_absolute():
            return next((base for base in candidates if (base / path).is_file()), data_dir)
    return data_dir


def _cut(recording: Path, start: float, end: float, out: Path) -> None:
    """One ``segments`` line as its own audio file (what Kaldi's extract-segments does), written once."""
    import soundfile

    from fedwhisper.files import atomic_path

    if out.is_file():
        return
    rate = soundfile.info(str(recording)).samplerate
    stop = None if end < 0 else round(end * rate)  # end -1: to the end of the recording
    samples, rate = soundfile.read(str(recording), start=round(start * rate), stop=stop, dtype="float32")
    if samples.size == 0:
        raise ValueError(f"segment {start:g}-{end:g} s is empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as partial:
        soundfile.write(str(partial), samples, rate, format="WAV")


def _read_data_dir(data_dir: Path, skipped: dict[str, str]) -> dict[str, list]:
    """Columns of one data directory: audio, transcription, speaker_id, utterance, gender, age, age_group."""
    from fedwhisper.models.registry import fedwhisper_home

    wav = _table(data_dir / "wav.scp")
    speakers = _table(data_dir / "utt2spk")
    if not wav or not speakers:
        raise FedwhisperError(f"{data_dir}: a Kaldi data directory needs a non-empty wav.scp and utt2spk")
    texts, genders, ages = _table(data_dir / "text"), _table(data_dir / "spk2gender"), _table(data_dir / "spk2age")
    segments = {
        utterance: value.split() for utterance, value in _table(data_dir / "segments").items()
    }  # utterance: [recording, start, end]
    base = _base(data_dir, [entry for entry in wav.values() if not entry.endswith("|")])
    cut_dir = fedwhisper_home() / "kaldi-segments" / hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:16]
    columns: dict[str, list] = {
        n: [] for n in ("audio", "transcription", "speaker_id", "utterance", "gender", "age", "age_group")
    }
    for utterance in segments or wav:
        name = f"{data_dir}/{utterance}"
        recording = segments[utterance][0] if segments else utterance
        entry = wav.get(recording)
        try:
            if entry is None:
                raise ValueError(f"recording {recording!r} is not in wav.scp")
            if entry.endswith("|"):
                raise ValueError("wav.scp gives a command, not a file (fedwhisper reads audio files)")
            path = Path(entry) if Path(entry).is_absolute() else base / entry
            if not path.is_file():
                raise ValueError(f"{path} not found")
            if utterance not in speakers:
                raise ValueError("no speaker in utt2spk")
            if segments:
                _, start, end = segments[utterance]
                cut = cut_dir / f"{utterance}.wav"
                _cut(path, float(start), float(end), cut)
                path = cut
        except (ValueError, RuntimeError) as error:  # soundfile raises RuntimeError for audio it cannot open
            skipped[name] = str(error)
            continue
        speaker = speakers[utterance]
        age = ages.get(speaker, "")
        columns["audio"].append(str(path))
        columns["transcription"].append(texts.get(utterance, ""))
        columns["speaker_id"].append(speaker)
        columns["utterance"].append(utterance)
        columns["gender"].append(genders.get(speaker, ""))
        columns["age"].append(age)
        columns["age_group"].append(("child" if int(age) < ADULT_AGE else "adult") if age.isdigit() else "")
    return columns


def read_kaldi(root: str | Path):
    """A ``datasets.DatasetDict`` (train / validation / test, those present) with columns ``audio``, ``transcription``,
    ``speaker_id``, ``utterance``, ``gender``, ``age`` and ``age_group`` (empty where the directory does not say).
    Utterances whose audio is missing or that have no speaker are left out and named in ``.skipped``; one without a text
    is kept with an empty one (``asr prepare`` reports it, or keeps it for pseudo-labelling)."""
    import datasets

    root = Path(root)
    if not is_kaldi(root):
        raise FedwhisperError(f"{root}: not a Kaldi data directory (wav.scp, utt2spk, text) nor one with train/ and test/ ones")
    if (root / "wav.scp").is_file():
        data_dirs = {"train": root}
    else:
        data_dirs = {split: root / name for name, split in SPLIT_DIRS.items() if (root / name / "wav.scp").is_file()}
    corpus, skipped = {}, {}
    for split, data_dir in data_dirs.items():
        columns = _read_data_dir(data_dir, skipped)
        corpus[split] = audio_dataset(columns, {name: "string" for name in columns if name != "audio"})
    return with_skipped(datasets.DatasetDict(corpus), skipped, root, "utterances")
