import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedwhisper.cli import app
from fedwhisper.errors import FedwhisperError, Interrupted


def test_students_keep_evenly_spaced_teacher_layers_first_and_last_included():
    from fedwhisper.distill import layer_map

    assert layer_map(4, 2) == [0, 3] and layer_map(6, 2) == [0, 5] and layer_map(32, 2) == [0, 31]  # tiny, base, large
    assert layer_map(12, 3) == [0, 5, 11] and layer_map(2, 1) == [1] and layer_map(4, 4) == [0, 1, 2, 3]
    with pytest.raises(FedwhisperError, match="keeps 1 to 4"):
        layer_map(4, 5)


@pytest.fixture(scope="module")
def student_dir(tiny_asr_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "student"
    result = CliRunner().invoke(
        app, ["distill", "student", "--teacher", str(tiny_asr_model), "--decoder-layers", "1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def test_a_student_is_its_teacher_with_fewer_decoder_layers(tiny_asr_model, student_dir):
    from fedwhisper.models.registry import load_whisper

    teacher, _ = load_whisper(str(tiny_asr_model))
    student, processor = load_whisper(str(student_dir))
    assert student.config.decoder_layers == 1 and student.config.encoder_layers == teacher.config.encoder_layers
    kept = teacher.model.decoder.layers[1].state_dict()  # the last layer, as Distil-Whisper keeps it
    for name, value in student.model.decoder.layers[0].state_dict().items():
        torch.testing.assert_close(value, kept[name])
    for name, value in student.model.encoder.state_dict().items():
        torch.testing.assert_close(value, teacher.model.encoder.state_dict()[name])
    torch.testing.assert_close(student.proj_out.weight, teacher.model.decoder.embed_tokens.weight)
    assert processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>") == 50257
    assert student.generation_config.decoder_start_token_id == teacher.generation_config.decoder_start_token_id


def test_the_distillation_loss_is_ce_plus_tempered_kl_over_label_positions():
    from fedwhisper.distill import DistillLoss, distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[1, 3:] = -100
    mask = labels != -100
    ce = torch.nn.functional.cross_entropy(student[mask], labels[mask])
    p_teacher = torch.softmax(teacher[mask] / 2, -1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student[mask] / 2, -1))).sum(-1).mean()
    torch.testing.assert_close(distillation_loss(student, teacher, labels), 0.8 * ce + 1.0 * kl * 4)
    torch.testing.assert_close(distillation_loss(student, student, labels), 0.8 * ce)  # no KL against itself
    padded = student.clone()
    padded[1, 4] += 100  # a padding position counts in neither term
    torch.testing.assert_close(distillation_loss(padded, teacher, labels), distillation_loss(student, teacher, labels))
    torch.testing.assert_close(
        distillation_loss(student, teacher, labels, DistillLoss(ce_weight=0, kl_weight=1, temperature=1)),
        (torch.softmax(teacher[mask], -1) * (torch.log_softmax(teacher[mask], -1) - torch.log_softmax(student[mask], -1)))
        .sum(-1)
        .mean(),
    )
    with pytest.raises(FedwhisperError, match="--temperature must be positive"):
        DistillLoss(temperature=0)


@pytest.fixture(scope="module")
def small_features(tiny_features, tmp_path_factory):
    """12 training and 4 validation clips of the tiny features (pseudo-labelling decodes every clip)."""
    from fedwhisper.asr.prepare import MANIFEST, load_features

    dataset, _ = load_features(tiny_features)
    out = tmp_path_factory.mktemp("small") / "features"
    for split, rows in (("train", 12), ("validation", 4)):
        dataset[split].select(range(rows)).save_to_disk(str(out / split))
    (out / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    shutil.copy(tiny_features / MANIFEST, out / MANIFEST)
    return out


def test_pseudo_labels_are_the_teachers_greedy_text_filtered_by_wer_and_resumable(
    tiny_asr_model, small_features, tmp_path, monkeypatch
):
    from fedwhisper import distill
    from fedwhisper.asr import evaluate
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.models.registry import load_processor

    report = distill.pseudo_label(
        small_features, str(tiny_asr_model), tmp_path / "all", wer_threshold=None, chunk_rows=8, progress=False
    )
    labelled, _ = load_features(tmp_path / "all")
    assert report["splits"]["train"]["kept"] == len(labelled["train"]) == 12 - report["splits"]["train"]["dropped"]
    original = load_features(small_features)[0]
    assert set(labelled["train"]["reference"]) <= set(original["train"]["transcription"])
    assert labelled["validation"]["transcription"] == original["validation"]["transcription"]  # chosen against real text
    tokenizer = load_processor(str(tiny_asr_model)).tokenizer
    first = labelled["train"][0]
    assert tokenizer.decode(first["labels"], skip_special_tokens=True).strip() == first["transcription"].strip()
    assert first["transcription"] != first["reference"]  # a random teacher's words, not the reference's

    filtered = distill.pseudo_label(
        small_features, str(tiny_asr_model), tmp_path / "filtered", wer_threshold=10, chunk_rows=8, progress=False, window="clip"
    )
    assert filtered["window"] == "clip"
    dropped = filtered["splits"]["train"]["dropped_clips"]
    assert dropped and all(row["wer"] > 0.10 for row in dropped)  # a random teacher's labels are far from the references

    # the decoded chunks are kept: a rerun after an interruption decodes nothing again
    shutil.rmtree(tmp_path / "all" / "train")
    calls = []
    monkeypatch.setattr(evaluate, "evaluate_batches", lambda *a, **k: calls.append(1))
    distill.pseudo_label(small_features, str(tiny_asr_model), tmp_path / "all", wer_threshold=None, chunk_rows=8, progress=False)
    assert calls == [] and len(load_features(tmp_path / "all")[0]["train"]) == len(labelled["train"])


def test_pseudo_labels_on_the_ctranslate2_backend_are_faster_whispers_text_of_the_teachers_export(
    tiny_asr_model, small_features, tmp_path
):
    from fedwhisper import distill
    from fedwhisper.asr.evaluate import evaluate_data
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.transcribe import DecodingOptions

    report = distill.pseudo_label(
        small_features,
        str(tiny_asr_model),
        tmp_path / "ct2",
        wer_threshold=None,
        progress=False,
        window="clip",
        backend="ctranslate2",
    )
    assert report["backend"] == "ctranslate2"
    labelled = load_features(tmp_path / "ct2")[0]["train"]
    same_batches = DecodingOptions(batch_size=16)  # a batch's token cap follows its longest clip: the same batches as the labels'
    decoded = evaluate_data(
        small_features, str(tiny_asr_model), "train", same_batches, window="clip", backend="ctranslate2", progress=False
    )["rows"]
    kept = [row["hypothesis"] for row in decoded if row["hypothesis"].strip()]
    assert labelled["transcription"] == kept and len(kept) + report["splits"]["train"]["dropped"] == 12
    with pytest.raises(FedwhisperError, match="holds labels of other inputs"):  # a rerun cannot mix the backends' labels
        distill.pseudo_label(
            small_features, str(tiny_asr_model), tmp_path / "ct2", wer_threshold=None, progress=False, window="clip"
        )
    with pytest.raises(FedwhisperError, match="--backend must be one of"):
        distill.pseudo_label(small_features, str(tiny_asr_model), tmp_path / "other", backend="onnx")


def test_distillation_trains_the_students_decoder_and_resumes_exactly(
    tiny_asr_model, student_dir, small_features, tmp_path, monkeypatch
):
    from fedwhisper import distill
    from fedwhisper.asr import evaluate, train
    from fedwhisper.asr.train import TrainConfig

    distill.pseudo_label(small_features, str(tiny_asr_model), tmp_path / "labelled", wer_threshold=None, progress=False)
    # "full" asks to train the encoder too, but the student shares its teacher's: it stays frozen (frozen-encoder mode)
    config = TrainConfig(
        mode="full",
        max_steps=4,
        batch_size=4,
        learning_rate=1e-3,
        warmup_steps=0,
        eval_every=2,
        save_every=2,
        log_every=1,
        eval_clips=4,
        max_new_tokens=8,
        window="clip",
    )
    args = dict(
        labelled=tmp_path / "labelled", student=str(student_dir), teacher=str(tiny_asr_model), config=config, progress=False
    )
    result = distill.distill_run(tmp_path / "whole", **args)
    assert result.step == 4 and (tmp_path / "whole" / "best" / "config.json").is_file()
    options = json.loads((tmp_path / "whole" / "options.json").read_text())
    assert options["config"]["mode"] == "frozen-encoder" and options["loss"] == {
        "ce_weight": 0.8,
        "kl_weight": 1.0,
        "temperature": 2.0,
    }
    final = "checkpoints/step-000004/trainable.safetensors"
    trained = load_file(tmp_path / "whole" / final)
    assert trained and not any(name.startswith("model.encoder.") for name in trained)  # the shared encoder stays the teacher's
    # the student records its clip windows, and evaluation uses them unless told otherwise
    assert (
        evaluate.evaluate_data(small_features, str(tmp_path / "whole" / "best"), "validation", limit=2, progress=False)["window"]
        == "clip"
    )
    assert evaluate.evaluate_data(small_features, str(tiny_asr_model), "validation", limit=2, progress=False)["window"] == "full"

    real_step, calls = train.train_on_batches, []

    def interrupted_at_step_3(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(train, "train_on_batches", interrupted_at_step_3)
    with pytest.raises(Interrupted, match="distill train --resume"):
        distill.distill_run(tmp_path / "killed", **args)
    monkeypatch.setattr(train, "train_on_batches", real_step)
    resumed = CliRunner().invoke(app, ["distill", "train", "--resume", str(tmp_path / "killed")])
    assert resumed.exit_code == 0 and "finished at step 4" in resumed.output, resumed.output
    resumed = load_file(tmp_path / "killed" / final)
    assert resumed.keys() == trained.keys() and all(torch.equal(value, trained[name]) for name, value in resumed.items())


def test_speculative_decoding_with_a_student_gives_the_teachers_greedy_text(
    tiny_asr_model, student_dir, small_features, monkeypatch
):
    from fedwhisper.asr import evaluate
    from fedwhisper.transcribe import DecodingOptions, load_assistant

    drafts = []

    def counted(ref):
        assistant = load_assistant(ref)
        assistant.register_forward_hook(lambda *args: drafts.append(1))
        return assistant

    monkeypatch.setattr(evaluate, "load_assistant", counted)
    options = DecodingOptions(max_new_tokens=12, batch_size=4)
    alone = evaluate.evaluate_data(small_features, str(tiny_asr_model), "train", options, limit=6, progress=False)
    assisted = evaluate.evaluate_data(
        small_features, str(tiny_asr_model), "train", options, limit=6, progress=False, assistant=str(student_dir)
    )
    assert drafts  # the student drafted; the teacher's checks keep its own text
    assert [r["hypothesis"] for r in assisted["rows"]] == [r["hypothesis"] for r in alone["rows"]]
    with pytest.raises(FedwhisperError, match="runs on the transformers backend"):
        evaluate.evaluate_data(small_features, str(tiny_asr_model), backend="ctranslate2", assistant=str(student_dir))


def test_an_untranscribed_corpus_is_labelled_whole_by_the_teacher(tiny_asr_model, tiny_asr_corpus, tmp_path):
    """Private data has no transcripts: every clip keeps the teacher's label (no filter applies), and a split with no
    reference at all (validation carved from the training speakers) is labelled too, so a student can be chosen on it."""
    import csv

    from fedwhisper import distill
    from fedwhisper.asr.prepare import load_features

    corpus = tmp_path / "private"
    for split, rows in (("train", 12), ("test", 3)):
        with open(tiny_asr_corpus / split / "metadata.csv", newline="") as stream:
            kept = list(csv.DictReader(stream))[:rows]
        (corpus / split).mkdir(parents=True)
        with open(corpus / split / "metadata.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=["file_name", "speaker_id"], extrasaction="ignore")
            writer.writeheader()
            for row in kept:
                (corpus / split / row["file_name"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(tiny_asr_corpus / split / row["file_name"], corpus / split / row["file_name"])
                writer.writerow(row)
    report = distill.pseudo_label(
        corpus, str(tiny_asr_model), tmp_path / "labelled", wer_threshold=10, progress=False, window="clip"
    )
    labelled, _ = load_features(tmp_path / "labelled")
    for split in ("train", "validation", "test"):
        entry = report["splits"][split]
        assert entry["without_reference"] == entry["kept"] + entry["dropped"] > 0
        assert entry["kept"] == len(labelled[split])
        # only a clip the teacher said nothing about is dropped: the WER filter has no reference to apply
        assert all(row["teacher"] == "" for row in entry["dropped_clips"])
        assert all(text.strip() for text in labelled[split]["transcription"]) and not any(labelled[split]["reference"])
    assert sum(report["splits"][split]["without_reference"] for split in ("train", "validation")) == 12
