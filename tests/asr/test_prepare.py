import csv
import json
import shutil

import numpy as np
import pytest

from fedwhisper.asr import prepare as prepare_module
from fedwhisper.asr.prepare import PrepareOptions, full_features, load_features, prepare_features, stored_frames
from fedwhisper.audio import write_audio
from fedwhisper.errors import FedwhisperError
from fedwhisper.models.registry import load_whisper


def test_compact_features_rebuild_the_30_s_input(tiny_features, tiny_asr_corpus):
    from transformers import WhisperFeatureExtractor

    from fedwhisper.audio import load_audio

    dataset, manifest = load_features(tiny_features)
    row = dataset["test"][0]
    audio = load_audio(row["path"])
    expected = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16_000, return_tensors="np").input_features[0]
    stored = np.asarray(row["input_features"])
    assert stored.shape == (stored_frames(audio.size), 80) and stored.shape[0] < 3000 / 4  # a few seconds, not 30
    np.testing.assert_allclose(full_features(stored), expected, atol=4e-3)


def test_splits_labels_and_held_out_validation_speakers(tiny_features):
    dataset, manifest = load_features(tiny_features)
    assert set(dataset) == {"train", "validation", "test"}
    speakers = {split: set(dataset[split]["speaker_id"]) for split in dataset}
    assert len(speakers["validation"]) == 1
    assert not speakers["validation"] & speakers["train"] and not speakers["test"] & speakers["train"]
    labels = dataset["train"][0]["labels"]
    assert labels[0] == 50257 and labels[-1] == 50256  # <|startoftranscript|> … <|endoftext|>
    assert manifest["vocab_size"] > 50_000 and not manifest["multilingual"]


def _corpus_with_bad_clips(tmp_path, tiny_asr_corpus):
    """A copy of the training split plus an empty transcript, a corrupt file and a 31-s clip."""
    out = tmp_path / "corpus"
    train = out / "train"
    train.mkdir(parents=True)
    with open(tiny_asr_corpus / "train" / "metadata.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))[:6]
    for row in rows:
        (train / row["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        (train / row["file_name"]).write_bytes((tiny_asr_corpus / "train" / row["file_name"]).read_bytes())
    write_audio(train / "long.wav", 0.1 * np.sin(np.arange(31 * 16_000) / 10.0).astype(np.float32))
    (train / "corrupt.wav").write_bytes(b"RIFF not really a wave file")
    rows += [dict(rows[0], file_name="long.wav"), dict(rows[0], file_name="corrupt.wav"), dict(rows[1], transcription="  ")]
    with open(train / "metadata.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_bad_clips_are_dropped_and_reported(tmp_path, tiny_asr_corpus, tiny_asr_model):
    corpus = _corpus_with_bad_clips(tmp_path, tiny_asr_corpus)
    report = prepare_features(corpus, str(tiny_asr_model), tmp_path / "features", PrepareOptions(validation_speakers=0))
    train = report["splits"]["train"]
    assert train["kept"] == 6 and train["dropped"] == 3
    assert set(train["dropped_by_reason"]) == {
        "longer than 30 s",
        "empty transcript",
        next(k for k in train["dropped_by_reason"] if "not readable" in k),
    }
    assert json.loads((tmp_path / "features" / "prepare_report.json").read_text())["splits"]["train"]["dropped"] == 3


def test_an_interrupted_preparation_resumes_at_the_first_missing_shard(tmp_path, tiny_asr_corpus, tiny_asr_model, monkeypatch):
    calls = []
    real = prepare_module._featurise

    def failing_after_first_shard(batch, *args, **kwargs):
        calls.append(len(batch["audio"]))
        if len(calls) > 1:
            raise KeyboardInterrupt  # the process is stopped while the second shard is being made
        return real(batch, *args, **kwargs)

    options = PrepareOptions(shard_size=8, validation_speakers=0)
    monkeypatch.setattr(prepare_module, "_featurise", failing_after_first_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare_features(tiny_asr_corpus, str(tiny_asr_model), tmp_path / "features", options)
    assert (tmp_path / "features" / ".shards" / "train" / "shard-00000").is_dir()
    calls.clear()
    monkeypatch.setattr(
        prepare_module, "_featurise", lambda batch, *a, **k: calls.append(len(batch["audio"])) or real(batch, *a, **k)
    )
    report = prepare_features(tiny_asr_corpus, str(tiny_asr_model), tmp_path / "features", options)
    total = sum(split["kept"] for split in report["splits"].values())
    assert sum(calls) == total - 8  # the finished shard was not made again
    assert not (tmp_path / "features" / ".shards").exists()


def test_other_inputs_into_the_same_directory_are_refused(tmp_path, tiny_asr_corpus, tiny_asr_model):
    out = tmp_path / "features"
    prepare_features(tiny_asr_corpus, str(tiny_asr_model), out, PrepareOptions(validation_speakers=0))
    with pytest.raises(FedwhisperError, match="other inputs"):
        prepare_features(tiny_asr_corpus, str(tiny_asr_model), out, PrepareOptions(validation_speakers=2))
    with pytest.raises(FedwhisperError, match="asr prepare"):
        load_features(tmp_path)


def test_all_capital_transcripts_train_in_whisper_style(tmp_path, tiny_asr_corpus, tiny_asr_model):
    assert prepare_module.sentence_case("I THINK I'M OK") == "I think I'm ok"
    assert prepare_module.sentence_case("Hello World") == "Hello World" and prepare_module.sentence_case("123") == "123"
    corpus = tmp_path / "caps"
    shutil.copytree(tiny_asr_corpus, corpus)
    metadata = corpus / "train" / "metadata.csv"
    rows = list(csv.DictReader(metadata.open()))
    with metadata.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(row | {"transcription": row["transcription"].upper()} for row in rows)
    tokenizer = load_whisper(str(tiny_asr_model))[1].tokenizer

    def first_label(options: PrepareOptions, out: str) -> tuple[str, str]:
        prepare_features(corpus, str(tiny_asr_model), tmp_path / out, options)
        train = load_features(tmp_path / out)[0]["train"]
        return train["transcription"][0], tokenizer.decode(train["labels"][0], skip_special_tokens=True).strip()

    reference, label = first_label(PrepareOptions(validation_speakers=0), "recased")
    assert reference.isupper() and label == prepare_module.sentence_case(reference) != reference  # WER still reads the reference
