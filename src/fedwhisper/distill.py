"""Distil-Whisper for fedwhisper: a small-decoder student initialised from its teacher, greedy pseudo-labels filtered
by WER, and training on ``0.8·CE + 1.0·KL·T²`` at T = 2 with the (frozen, shared) encoder's outputs computed once.

Facts from huggingface/distil-whisper ``training/``: decoder layers ``linspace(0, L-1, n)`` with the last forced to
L-1; labels from the teacher's greedy output; pairs whose normalised WER exceeds 10 % dropped; the loss weights and
temperature above. The code is ours.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from fedwhisper.errors import FedwhisperError, Interrupted
from fedwhisper.files import atomic_path, write_json

STUDENT_MARKER = "fedwhisper_student.json"
LABELS_REPORT = "labels_report.json"


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers a student keeps: evenly spaced, the first and the last always among them."""
    if not 1 <= student_layers <= teacher_layers:
        raise FedwhisperError(f"a student keeps 1 to {teacher_layers} of its teacher's layers (asked for {student_layers})")
    mapping = np.linspace(0, teacher_layers - 1, student_layers, dtype=int)
    mapping[-1] = teacher_layers - 1
    return mapping.tolist()


def make_student(teacher: str, out: str | os.PathLike, decoder_layers: int = 2, encoder_layers: int | None = None) -> Path:
    """A plain transformers Whisper directory: the teacher with ``decoder_layers`` of its decoder layers (and
    ``encoder_layers`` of its encoder's, all by default), tokenizer, processor and generation config carried over."""
    from transformers import WhisperForConditionalGeneration

    from fedwhisper.models.registry import load_whisper

    whisper, processor = load_whisper(teacher)
    config = whisper.config
    encoder_keep = layer_map(config.encoder_layers, encoder_layers or config.encoder_layers)
    decoder_keep = layer_map(config.decoder_layers, decoder_layers)
    student_config = config.__class__.from_dict(
        config.to_dict() | {"encoder_layers": len(encoder_keep), "decoder_layers": len(decoder_keep)}
    )
    student = WhisperForConditionalGeneration(student_config)
    renamed = {}
    for key, value in whisper.state_dict().items():
        for part, keep in (("encoder", encoder_keep), ("decoder", decoder_keep)):
            prefix = f"model.{part}.layers."
            if key.startswith(prefix):
                index, rest = key[len(prefix) :].split(".", 1)
                key = f"{prefix}{keep.index(int(index))}.{rest}" if int(index) in keep else None
                break
        if key is not None:
            renamed[key] = value
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    if unexpected or [k for k in missing if k != "proj_out.weight"]:  # proj_out is tied to the token embeddings
        raise FedwhisperError(f"student initialisation left weights unset: {(unexpected or missing)[:3]}")
    student.tie_weights()
    student.generation_config = whisper.generation_config
    heads = getattr(whisper.generation_config, "alignment_heads", None)
    if heads:  # word-timestamp heads live in decoder layers: keep those of the kept layers, renumbered
        kept = [[decoder_keep.index(layer), head] for layer, head in heads if layer in decoder_keep]
        student.generation_config.alignment_heads = kept or [
            [len(decoder_keep) - 1, h] for h in range(config.decoder_attention_heads)
        ]
    with atomic_path(out) as staging:
        student.save_pretrained(staging)
        processor.save_pretrained(staging)
        write_json(
            staging / STUDENT_MARKER, {"teacher": str(teacher), "encoder_layers": encoder_keep, "decoder_layers": decoder_keep}
        )
    return Path(out)


@dataclass(frozen=True)
class DistillLoss:
    ce_weight: float = 0.8
    kl_weight: float = 1.0
    temperature: float = 2.0

    def __post_init__(self):
        for name in ("ce_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise FedwhisperError(f"--{name.replace('_', '-')} must be at least 0 (got {getattr(self, name)})")
        if self.temperature <= 0:
            raise FedwhisperError(f"--temperature must be positive (got {self.temperature})")


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, weights: DistillLoss = DistillLoss()
) -> torch.Tensor:
    """``ce_weight · CE(student, labels) + kl_weight · KL(teacher/T ‖ student/T) · T²`` over the label positions
    (padding, marked -100, counts in neither): the plain function a federated client calls too."""
    from fedwhisper.constants import IGNORE_INDEX

    mask = labels != IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(student_logits[mask].float(), labels[mask])
    t = weights.temperature
    student_log_probs = torch.log_softmax(student_logits[mask].float() / t, dim=-1)
    teacher_log_probs = torch.log_softmax(teacher_logits[mask].float() / t, dim=-1)
    kl = torch.nn.functional.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean")
    return weights.ce_weight * ce + weights.kl_weight * kl * t * t


def teacher_loss_fn(teacher, weights: DistillLoss):
    """``loss_fn(student, inputs)`` for ``train_on_batches``: the teacher sees the same encoder outputs (or log-mels)
    and decoder inputs as the student."""

    def loss_fn(student, inputs: dict) -> torch.Tensor:
        student_logits = student(**inputs).logits
        with torch.no_grad():
            teacher_logits = teacher(**inputs).logits
        return distillation_loss(student_logits, teacher_logits, inputs["labels"], weights)

    return loss_fn


def pseudo_label(
    source: str | os.PathLike,
    teacher: str,
    out: str | os.PathLike,
    wer_threshold: float | None = 10.0,
    batch_size: int = 16,
    chunk_rows: int = 256,
    progress: bool = True,
    window: str = "full",
    language: str = "en",
    backend: str = "transformers",
) -> dict:
    """Prepared features whose training labels are ``teacher``'s greedy transcripts (on ``window``: full, Whisper's
    30 s, or clip, for a teacher trained on clip windows; tokens capped by the clip's length), written to ``out`` with
    the same layout. ``source`` is prepared features, or a corpus (prepared in ``out`` first for the teacher, in
    ``language``, clips without a transcript kept: the usual private data). A training pair whose normalised WER against
    its reference exceeds ``wer_threshold`` % is dropped (None: all kept; a clip without a reference is always kept);
    the report counts and lists what was dropped. Other splits keep their references, so the student is chosen and
    tested against real text; a split with no reference at all takes the teacher's labels too. Rows are decoded
    ``chunk_rows`` at a time and each chunk is saved at once, so a rerun continues where an interrupted one stopped.
    ``backend`` ctranslate2 decodes with faster-whisper on the teacher's int8 CTranslate2 export (made on first use)."""
    import datasets

    from fedwhisper.asr.batches import WINDOWS
    from fedwhisper.asr.prepare import MANIFEST, REPORT, PrepareOptions, label_ids, load_features, prepare_features
    from fedwhisper.backends import check_backend, load_ctranslate2
    from fedwhisper.models.export import ctranslate2_model_dir
    from fedwhisper.models.registry import load_processor, load_whisper

    check_backend(backend)
    if wer_threshold is not None and wer_threshold < 0:
        raise FedwhisperError(f"--wer-threshold must be at least 0 (got {wer_threshold})")
    if window not in WINDOWS:
        raise FedwhisperError(f"--window must be one of {', '.join(WINDOWS)} (got {window!r})")
    out = Path(out)
    work = out / ".labels"
    job = {
        "features": str(Path(source).resolve()),
        "teacher": str(teacher),
        "wer_threshold": wer_threshold,
        "window": window,
        "backend": backend,
    }
    if (work / "job.json").is_file() and json.loads((work / "job.json").read_text()) != job:
        raise FedwhisperError(f"{out} holds labels of other inputs; choose a new directory or delete it")
    features = Path(source)
    if not (features / MANIFEST).is_file():  # a corpus: its features first (resumable, like the labels)
        features = work / "features"
        prepare_features(source, teacher, features, PrepareOptions(language=language, keep_untranscribed=True))
    dataset, manifest = load_features(features)
    whisper, processor = (
        (load_ctranslate2(ctranslate2_model_dir(teacher)), load_processor(teacher))
        if backend == "ctranslate2"
        else load_whisper(teacher)
    )
    if len(processor.tokenizer) != manifest["vocab_size"]:
        raise FedwhisperError(
            f"{source} was prepared with another tokenizer ({manifest['model']}); prepare it again for {teacher}"
        )
    if "train" not in dataset:
        raise FedwhisperError(f"{source} has no train split to label")
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "job.json", job)
    report = {"teacher": str(teacher), "wer_threshold": wer_threshold, "window": window, "backend": backend, "splits": {}}
    labelled = dict(dataset)
    for name, split in dataset.items():
        if name != "train" and any(text.strip() for text in split["transcription"]):
            continue  # references to choose and test the student against
        hypotheses, wers = _teacher_labels(
            whisper, processor, split, manifest, work / name, batch_size, chunk_rows, window, progress
        )
        references = split["transcription"]
        keep = [
            bool(h.strip()) and (name != "train" or wer_threshold is None or w is None or 100 * w <= wer_threshold)
            for h, w in zip(hypotheses, wers)
        ]
        relabelled = split.add_column("reference", references).remove_columns(["transcription", "labels"])
        relabelled = relabelled.add_column("transcription", hypotheses)
        language, task = manifest["options"]["language"], manifest["options"]["task"]
        relabelled = relabelled.add_column(
            "labels", [label_ids(processor.tokenizer, h, manifest["multilingual"], language, task) for h in hypotheses]
        )
        labelled[name] = relabelled.select([i for i, k in enumerate(keep) if k])
        dropped = [
            {"path": p, "reference": r, "teacher": h, "wer": w}
            for p, r, h, w, k in zip(split["path"], references, hypotheses, wers, keep)
            if not k
        ]
        report["splits"][name] = {
            "kept": len(labelled[name]),
            "dropped": len(dropped),
            "without_reference": sum(w is None for w in wers),
            "dropped_clips": dropped[:200],
        }
    for name, rows in labelled.items():
        with atomic_path(out / name) as partial:
            rows.cast_column("labels", datasets.Sequence(datasets.Value("int32"))).save_to_disk(str(partial))
    write_json(out / "dataset_dict.json", {"splits": list(labelled)})
    write_json(out / MANIFEST, manifest | {"pseudo_labels": job})
    write_json(out / REPORT, json.loads((features / REPORT).read_text()) if (features / REPORT).is_file() else {})
    write_json(out / LABELS_REPORT, report)
    return report


def _teacher_labels(
    whisper, processor, split, manifest: dict, chunks: Path, batch_size: int, chunk_rows: int, window: str, progress: bool
) -> tuple[list[str], list[float | None]]:
    """The teacher's greedy text for every row of ``split`` and its WER against the row's reference (None without
    one), decoded ``chunk_rows`` at a time, each chunk saved in ``chunks`` as it finishes and reused by a rerun."""
    from tqdm.auto import tqdm

    from fedwhisper.asr.batches import AsrBatches
    from fedwhisper.asr.evaluate import evaluate_batches
    from fedwhisper.transcribe import DecodingOptions

    language, task = manifest["options"]["language"], manifest["options"]["task"]
    options = DecodingOptions(language=language if manifest["multilingual"] else None, task=task, batch_size=batch_size)
    start_token = processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    chunks.mkdir(parents=True, exist_ok=True)
    hypotheses, wers = [], []
    with tqdm(total=len(split), desc=f"pseudo-label {chunks.name}", unit="clip", disable=not progress) as bar:
        try:
            for index, start in enumerate(range(0, len(split), chunk_rows)):
                saved = chunks / f"{index:05d}.json"
                rows = split.select(range(start, min(start + chunk_rows, len(split))))
                if not saved.is_file():
                    result = evaluate_batches(whisper, processor.tokenizer, AsrBatches(rows, start_token, window=window), options)
                    write_json(saved, [[row["hypothesis"], row["wer"]] for row in result["rows"]])
                chunk = json.loads(saved.read_text())
                hypotheses += [h for h, _ in chunk]
                wers += [w for _, w in chunk]
                bar.update(len(rows))
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted: the finished chunks are kept in {chunks.parent}; run the same command again to continue"
            ) from None
    return hypotheses, wers


def distill_run(
    out: str | os.PathLike,
    *,
    labelled: str | os.PathLike | None = None,
    student: str | None = None,
    teacher: str | None = None,
    config=None,
    loss: DistillLoss = DistillLoss(),
    resume: bool = False,
    progress: bool = True,
):
    """What `distill train` does: train ``student`` on ``labelled`` features against ``teacher`` into run directory
    ``out`` (the layout of `asr train`: checkpoints, exact resume, best/ by WER, curves), or (``resume``) continue it.
    The student's encoder trains only if it differs from the teacher's; otherwise it is frozen and its outputs, on
    ``config.window``, are computed once (the encoder-output cache) and feed both decoders."""
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.asr.run import TrainingRun
    from fedwhisper.asr.train import TrainConfig, fine_tune, interruption_kept
    from fedwhisper.features.encoder import weights_fingerprint
    from fedwhisper.models.registry import load_whisper

    if resume:
        saved = TrainingRun(out).saved_options()
        labelled, student, teacher = saved["features"], saved["student"], saved["teacher"]
        config, loss = TrainConfig.from_dict(saved["config"]), DistillLoss(**saved["loss"])
    elif labelled is None or student is None or teacher is None:
        raise FedwhisperError("give LABELLED, --student and --teacher (or --resume RUN)")
    dataset, manifest = load_features(labelled)
    student_model, processor = load_whisper(student)
    teacher_model, _ = load_whisper(teacher)
    if len(processor.tokenizer) != manifest["vocab_size"] or teacher_model.config.vocab_size != student_model.config.vocab_size:
        raise FedwhisperError(f"{student}, {teacher} and {labelled} must share one tokenizer")
    shared = weights_fingerprint(student_model.model.encoder) == weights_fingerprint(teacher_model.model.encoder)
    config = config or TrainConfig(mode="frozen-encoder")
    # a shared encoder stays frozen: the decoder trains (frozen-encoder), or only its blocks (decoder-only: the token
    # embeddings, tied to the output projection and most of a small decoder's weights, stay the teacher's)
    config = replace(
        config,
        mode=(config.mode if config.mode in ("frozen-encoder", "decoder-only") else "frozen-encoder") if shared else "full",
        language=config.language or manifest["options"]["language"],
    )
    teacher_model.requires_grad_(False)
    eval_split = "validation" if "validation" in dataset else "test"
    with interruption_kept(out, "distill train"):
        return fine_tune(
            student_model,
            processor,
            dataset["train"],
            config,
            eval_set=dataset[eval_split],
            run_dir=out,
            resume=resume,
            progress=progress,
            loss_fn=teacher_loss_fn(teacher_model, loss),
            run_info={
                "features": str(Path(labelled).resolve()),
                "student": str(student),
                "teacher": str(teacher),
                "loss": asdict(loss),
                "eval_split": eval_split,
            },
        )
