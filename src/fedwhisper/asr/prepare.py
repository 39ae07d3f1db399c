"""CPU feature pipeline: any corpus -> log-mel features + tokenised labels, saved once as datasets Arrow.

Features are stored compact: Whisper pads every clip to 30 s, and every padded frame of its log-mel holds the same
value, the clip's floor (Whisper clamps at 8 log10 units under the peak, then scales by 1/4: floor = max - 2), so only
the frames that hold audio are stored ([frames, n_mels] float16) and :func:`full_features` rebuilds the 30-s input.
Work is done in shards that are saved as they finish, so an interrupted run resumes at the first missing shard; clips
a training job must not see are dropped and reported.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedwhisper.audio import AudioError, load_audio
from fedwhisper.constants import HOP_LENGTH, SAMPLE_RATE, is_multilingual
from fedwhisper.errors import FedwhisperError
from fedwhisper.files import atomic_path, write_json

WINDOW_FRAMES = 3000  # Whisper's 30-s input
MAX_SECONDS = 30.0
MAX_LABEL_TOKENS = 448  # the decoder's positions
MANIFEST = "fedwhisper_features.json"
REPORT = "prepare_report.json"


@dataclass(frozen=True)
class PrepareOptions:
    language: str = "en"
    task: str = "transcribe"
    num_proc: int = 1
    shard_size: int = 256
    validation_speakers: int | None = None  # carved from training speakers when the corpus has no validation split; None: ~10 %
    test_speakers: int | None = None  # carved from training speakers when the corpus has no test split; None: none
    seed: int = 0
    keep_untranscribed: bool = False  # keep clips without a transcript (labels: the prompt only), for pseudo-labelling
    # all-capital transcripts (Kaldi and LibriSpeech style) train in sentence case, the style Whisper writes: capitals
    # teach it a new spelling of every word and cost accuracy and other skills (measured: the real suite's recipe part)
    recase: bool = True


def stored_frames(samples: int) -> int:
    """Frames that can hold audio; every later frame of the 30-s log-mel equals the clip's floor value."""
    return min(WINDOW_FRAMES, math.ceil(samples / HOP_LENGTH) + 2)


def sentence_case(text: str) -> str:
    """An all-capital transcript in Whisper's style ("WE CALL IT BEAR" -> "We call it bear"); any other text as it is."""
    if not any(c.isalpha() for c in text) or text != text.upper():
        return text
    lowered = re.sub(r"\bi\b", "I", text.strip().lower())
    return lowered[:1].upper() + lowered[1:]


def label_ids(tokenizer, text: str, multilingual: bool, language: str, task: str) -> list[int]:
    """Decoder targets: Whisper's prompt tokens, the text (with the leading space Whisper's own outputs have), end of text."""
    if multilingual:
        tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return tokenizer(" " + text.strip() if text.strip() else "").input_ids


def _featurise(
    batch: dict, processor, multilingual: bool, language: str, task: str, keep_untranscribed: bool, recase: bool
) -> dict:
    features, labels, reasons, durations = [], [], [], []
    n_mels = processor.feature_extractor.feature_size
    empty = np.zeros((0, n_mels), dtype=np.float16)
    for entry, text in zip(batch["audio"], batch["transcription"]):
        reason, stored, ids, seconds = "", empty, [], 0.0
        try:
            if not (text or "").strip() and not keep_untranscribed:
                raise ValueError("empty transcript")
            text = sentence_case(text or "") if recase else text or ""
            ids = label_ids(processor.tokenizer, text, multilingual, language, task)
            if len(ids) > MAX_LABEL_TOKENS:
                raise ValueError(f"label is {len(ids)} tokens, over {MAX_LABEL_TOKENS}")
            audio = load_audio(entry, max_seconds=MAX_SECONDS)
            seconds = audio.size / SAMPLE_RATE
            full = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
            stored = full[:, : stored_frames(audio.size)].T.astype(np.float16)
        except (AudioError, ValueError) as error:
            reason, ids = str(error), []
        features.append(stored)
        labels.append(ids)
        reasons.append(reason)
        durations.append(round(seconds, 3))
    paths = [entry.get("path") or "" for entry in batch["audio"]]
    return {"input_features": features, "labels": labels, "drop_reason": reasons, "duration": durations, "path": paths}


def _held_out_speakers(train, count: int, seed: int) -> set[str]:
    """``count`` training speakers drawn with ``seed``, from each age group (where the corpus gives them) in proportion
    to its size and at least one from each while ``count`` allows, so that children and adults are in every part."""
    from fedwhisper.data.corpus import GROUP_COLUMNS, speaker_values

    group_of = speaker_values(train, GROUP_COLUMNS[0])
    groups: dict[str, list[str]] = {}
    for speaker in sorted(set(train["speaker_id"])):
        groups.setdefault(group_of.get(speaker, ""), []).append(speaker)
    total = sum(len(members) for members in groups.values())
    floor = 1 if count >= len(groups) else 0
    quota = {group: max(floor, round(count * len(members) / total)) for group, members in groups.items()}
    while sum(quota.values()) != count:  # rounding: take from, or give to, the largest group
        largest = max(groups, key=lambda group: len(groups[group]) - quota[group])
        quota[largest] += 1 if sum(quota.values()) < count else -1
    rng = np.random.default_rng(seed)
    return {
        speaker
        for group, members in sorted(groups.items())
        for speaker in rng.choice(members, size=min(quota[group], len(members)), replace=False).tolist()
    }


def _with_held_out_splits(corpus, validation: int | None, test: int | None, seed: int):
    """Hold out whole training speakers as a test split (``test`` of them, when asked and the corpus has none) and as a
    validation split (for checkpoint choice and tuning; ``validation`` of them, None: ~10 %, when the corpus has none)."""
    import datasets

    if "train" not in corpus or "speaker_id" not in corpus["train"].column_names:
        return corpus
    splits = dict(corpus)
    for split, count, salt in (("test", test, 1), ("validation", validation, 0)):
        train = splits["train"]
        speakers = sorted(set(train["speaker_id"]))
        if split in splits or len(speakers) < 2 or (split == "test" and not count):
            continue
        count = max(1, round(0.1 * len(speakers))) if count is None else count
        if count <= 0:
            continue
        held = _held_out_speakers(train, min(count, len(speakers) - 1), seed + salt)
        in_held = [speaker in held for speaker in train["speaker_id"]]
        splits["train"] = train.select([i for i, held_row in enumerate(in_held) if not held_row])
        splits[split] = train.select([i for i, held_row in enumerate(in_held) if held_row])
    return datasets.DatasetDict(splits)


def prepare_features(source, model: str, out: str | Path, options: PrepareOptions = PrepareOptions()) -> dict:
    """Write ``out`` (a datasets DatasetDict on disk) and return the report of kept and dropped clips per split."""
    import datasets
    from transformers import WhisperConfig, WhisperProcessor

    from fedwhisper.data.corpus import load_corpus
    from fedwhisper.models.registry import from_pretrained, resolve_model

    out = Path(out)
    location = resolve_model(model)
    processor = from_pretrained(WhisperProcessor, location)
    multilingual = is_multilingual(from_pretrained(WhisperConfig, location).vocab_size)
    corpus = load_corpus(source)
    if any("transcription" not in dataset.column_names for dataset in corpus.values()):
        raise FedwhisperError(
            f"{source}: no transcriptions (a keyword corpus?); asr prepare needs an audiofolder with metadata.csv "
            "or a Common Voice directory"
        )
    if not options.keep_untranscribed and not any(
        text.strip() for dataset in corpus.values() for text in dataset["transcription"]
    ):
        raise FedwhisperError(
            f"{source}: no clip has a transcript; training needs them (`fedwhisper distill label` labels "
            "untranscribed audio with a teacher)"
        )
    corpus = _with_held_out_splits(corpus, options.validation_speakers, options.test_speakers, options.seed)
    manifest = {
        "source": str(source),
        "model": str(model),
        "vocab_size": len(processor.tokenizer),
        "n_mels": processor.feature_extractor.feature_size,
        "multilingual": multilingual,
        # parallelism does not change the result; later options are named only when set (earlier features stay valid)
        "options": {k: v for k, v in asdict(options).items() if k not in ("keep_untranscribed", "test_speakers", "recase") or v}
        | {"num_proc": None},
    }
    work = out / ".shards"
    manifest_path = out / MANIFEST
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) != manifest:
        raise FedwhisperError(
            f"{out} holds features prepared from other inputs ({manifest_path}); choose a new directory or delete it"
        )
    if manifest_path.is_file() and (out / REPORT).is_file() and (out / "dataset_dict.json").is_file():
        return json.loads((out / REPORT).read_text())  # finished before with the same inputs
    out.mkdir(parents=True, exist_ok=True)
    write_json(manifest_path, manifest)

    report: dict = {"splits": {}}
    finished = {}
    for split, dataset in corpus.items():
        shards = []
        for index, start in enumerate(range(0, len(dataset), options.shard_size)):
            shard_dir = work / split / f"shard-{index:05d}"
            if not (shard_dir / "dataset_info.json").is_file():
                rows = dataset.select(range(start, min(start + options.shard_size, len(dataset))))
                processes = min(options.num_proc, len(rows))
                featurised = rows.map(
                    _featurise,
                    batched=True,
                    batch_size=16,
                    remove_columns=["audio"],
                    fn_kwargs={
                        "processor": processor,
                        "multilingual": multilingual,
                        "language": options.language,
                        "task": options.task,
                        "keep_untranscribed": options.keep_untranscribed,
                        "recase": options.recase,
                    },
                    num_proc=processes if processes > 1 else None,
                    features=_feature_types(rows, manifest["n_mels"]),
                    desc=f"prepare {split} {start}-{start + len(rows)} of {len(dataset)}",
                    load_from_cache_file=False,
                )
                with atomic_path(shard_dir) as partial:
                    featurised.save_to_disk(str(partial))
            shards.append(datasets.load_from_disk(str(shard_dir)))
        combined = datasets.concatenate_datasets(shards) if shards else dataset.remove_columns(["audio"])
        reasons = combined["drop_reason"] if len(combined) else []
        dropped = [
            {"path": path, "reason": reason} for path, reason in zip(combined["path"] if len(combined) else [], reasons) if reason
        ]
        kept = combined.filter(lambda reason: not reason, input_columns="drop_reason").remove_columns("drop_reason")
        finished[split] = kept
        report["splits"][split] = {
            "kept": len(kept),
            "dropped": len(dropped),
            "hours": round(sum(kept["duration"]) / 3600, 3) if len(kept) else 0.0,
            "speakers": len(set(kept["speaker_id"])) if "speaker_id" in kept.column_names else None,
            "dropped_by_reason": _count_reasons(dropped),
            "dropped_clips": dropped[:200],
        }
    for split, kept in finished.items():  # the layout DatasetDict.save_to_disk writes, one split at a time
        with atomic_path(out / split) as partial:
            kept.save_to_disk(str(partial))
    write_json(out / "dataset_dict.json", {"splits": list(finished)})
    shutil.rmtree(work, ignore_errors=True)
    write_json(out / REPORT, report)
    return report


def _count_reasons(dropped: list[dict]) -> dict[str, int]:
    """Drop reasons grouped by kind (the text after the file name)."""
    counts: dict[str, int] = {}
    for row in dropped:
        kind = row["reason"].split(": ", 1)[-1]
        kind = "longer than 30 s" if "longer than" in kind else kind
        kind = f"label over {MAX_LABEL_TOKENS} tokens" if kind.startswith("label is") else kind
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _feature_types(rows, n_mels: int):
    import datasets

    kept = {name: feature for name, feature in rows.features.items() if name != "audio"}
    return datasets.Features(
        kept
        | {
            "input_features": datasets.Array2D(shape=(None, n_mels), dtype="float16"),
            "labels": datasets.Sequence(datasets.Value("int32")),
            "drop_reason": datasets.Value("string"),
            "duration": datasets.Value("float32"),
            "path": datasets.Value("string"),
        }
    )


def load_features(path: str | Path):
    """(DatasetDict, manifest) of a prepared feature directory, with a clear error for anything else."""
    import datasets

    path = Path(path)
    manifest_path = path / MANIFEST
    if not (path / "dataset_dict.json").is_file() or not manifest_path.is_file():
        raise FedwhisperError(f"{path}: not a prepared feature directory (run `fedwhisper asr prepare` first)")
    return datasets.load_from_disk(str(path)), json.loads(manifest_path.read_text())


def full_features(stored: np.ndarray, frames: int = WINDOW_FRAMES) -> np.ndarray:
    """The ``[n_mels, frames]`` float32 input (30 s by default) from stored ``[frames, n_mels]`` features, padded as
    Whisper's feature extractor pads: with the clip's maximum minus 2 (log-mel of silence after its normalisation)."""
    stored = np.asarray(stored, dtype=np.float32)[:frames]
    full = np.full((stored.shape[1], frames), stored.max() - 2.0, dtype=np.float32)
    full[:, : stored.shape[0]] = stored.T
    return full
