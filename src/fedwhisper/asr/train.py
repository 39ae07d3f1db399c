"""Whisper seq2seq fine-tuning as plain functions.

``train_on_batches`` is one client's unit of work (model + micro-batches + config -> updated weights + metrics) and
knows nothing of files; ``fine_tune`` drives it for a whole run with evaluation, checkpoints, exact resume and the
best model by WER. Modes decide what trains: ``full``; ``encoder-only`` (new acoustics, the decoder's language and
translation untouched); ``frozen-encoder`` (all but the encoder); ``decoder-only`` (the decoder's blocks, not its
embeddings: a small update to send); ``lora`` (peft adapters on the decoder's attention). Whenever the encoder is
frozen its outputs are computed once and reused (see ``batches``).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from fedwhisper.asr.batches import WINDOWS, AsrBatches, EncoderOutputCache, model_inputs
from fedwhisper.asr.run import TrainingRun, whisper_of
from fedwhisper.errors import FedwhisperError, Interrupted, stop_if_requested
from fedwhisper.models.registry import fedwhisper_home

MODES = ("full", "encoder-only", "frozen-encoder", "decoder-only", "lora")
_ENCODER_PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2")
LORA_TARGETS = r"model\.decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|v_proj)"


@dataclass(frozen=True)
class TrainConfig:
    mode: str = "decoder-only"
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    max_steps: int = 300
    epochs: float | None = None  # when set, decides the step count instead of max_steps
    batch_size: int = 16
    gradient_accumulation: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    spec_augment: bool = False  # SpecAugment on the log-mel input (the encoder then runs every step)
    frozen_encoder_layers: int = (
        0  # full/encoder-only: keep the convolution stem and this many bottom blocks fixed, outputs cached
    )
    dropout: float = 0.0
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    lora_targets: str = LORA_TARGETS  # peft target_modules: a regex over module names
    eval_every: int = 100
    save_every: int = 100
    log_every: int = 10
    eval_clips: int | None = 200  # evaluate on the first N clips of the evaluation split (None: all)
    eval_batch_size: int = 16
    max_new_tokens: int = 128
    language: str | None = None  # multilingual models: the corpus language; None: from the prepared features
    task: str = "transcribe"
    seed: int = 0
    precision: str = "auto"  # auto: bf16 (or fp16) autocast on a GPU, fp32 on a CPU
    window: str = "full"  # encoder window: full (Whisper's 30 s) or clip (the clip's length, in 2-s buckets)

    def __post_init__(self):
        if self.mode not in MODES:
            raise FedwhisperError(f"--mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        for name in ("max_steps", "batch_size", "gradient_accumulation", "eval_every", "save_every", "log_every", "lora_rank"):
            if getattr(self, name) < 1:
                raise FedwhisperError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.learning_rate <= 0:
            raise FedwhisperError(f"--learning-rate must be positive (got {self.learning_rate})")
        if self.window not in WINDOWS:
            raise FedwhisperError(f"--window must be one of {', '.join(WINDOWS)} (got {self.window!r})")
        if self.epochs is not None and self.epochs <= 0:
            raise FedwhisperError(f"--epochs must be positive (got {self.epochs})")

    @property
    def cached_encoder_layers(self) -> int | None | bool:
        """What of the encoder is computed once: None for all of it, N for its bottom N blocks, False for nothing."""
        if self.spec_augment:  # masked log-mels: new encoder outputs every step
            return False
        if self.mode == "lora" and any(
            re.fullmatch(self.lora_targets, f"model.encoder.layers.0.{name}") for name in _ENCODER_PROJECTIONS
        ):
            return False  # adapters inside the encoder: its outputs change every step
        if self.mode not in ("full", "encoder-only"):
            return None
        return self.frozen_encoder_layers or False

    def total_steps(self, rows: int) -> int:
        if self.epochs is None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * math.ceil(rows / self.batch_size) / self.gradient_accumulation))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def apply_mode(model, config: TrainConfig):
    """Set what trains; returns the model to train (a peft model for ``lora``)."""
    model.requires_grad_(config.mode == "full")
    if config.mode == "encoder-only":
        model.model.encoder.requires_grad_(True)
    if config.mode in ("full", "encoder-only") and config.frozen_encoder_layers:
        encoder = model.model.encoder
        if config.frozen_encoder_layers >= len(encoder.layers):
            raise FedwhisperError(
                f"frozen_encoder_layers must be below the encoder's {len(encoder.layers)} blocks (use frozen-encoder mode)"
            )
        for part in (encoder.conv1, encoder.conv2, encoder.embed_positions, *encoder.layers[: config.frozen_encoder_layers]):
            part.requires_grad_(False)
    elif config.mode == "frozen-encoder":
        model.model.decoder.requires_grad_(True)
    elif config.mode == "decoder-only":
        decoder = model.model.decoder
        for part in (decoder.layers, decoder.layer_norm):
            part.requires_grad_(True)
    elif config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        adapters = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
            bias="none",
        )
        model = get_peft_model(model, adapters)
    if config.spec_augment:
        # Whisper's own SpecAugment (transformers): time and frequency masks on the log-mel during training
        model.config.apply_spec_augment = True
        model.config.mask_time_prob = max(model.config.mask_time_prob, 0.05)
        model.config.mask_feature_prob = max(model.config.mask_feature_prob, 0.05)
    return model


def make_optimizer(model, config: TrainConfig, total_steps: int):
    from transformers import get_linear_schedule_with_warmup

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return optimizer, get_linear_schedule_with_warmup(optimizer, min(config.warmup_steps, total_steps), total_steps)


def _autocast(model, config: TrainConfig):
    device = next(model.parameters()).device
    if device.type != "cuda" or config.precision == "fp32":
        return torch.autocast("cpu", enabled=False)
    dtype = (
        torch.bfloat16
        if config.precision == "bf16" or (config.precision == "auto" and torch.cuda.is_bf16_supported())
        else torch.float16
    )
    return torch.autocast("cuda", dtype=dtype)


def train_on_batches(
    model, micro_batches: Iterable[dict], config: TrainConfig, optimizer, scheduler=None, extra_loss=None, loss_fn=None
) -> dict:
    """Forward/backward over ``micro_batches``, an optimizer step every ``gradient_accumulation`` of them.
    ``loss_fn(model, inputs)``, when given, replaces the model's cross-entropy (distillation's loss);
    ``extra_loss()`` is added to every micro-batch's objective (FedProx's proximal term) but not to the loss reported.

    Returns {"loss": mean over micro-batches, "steps", "samples", "seconds"}; the model is updated in place.
    """
    model.train()
    started, total_loss, micro, samples, steps = time.perf_counter(), 0.0, 0, 0, 0
    for batch in micro_batches:
        with _autocast(model, config):
            batch = model_inputs(model, batch)
            loss = model(**batch).loss if loss_fn is None else loss_fn(model, batch)
        objective = loss if extra_loss is None else loss + extra_loss()
        (objective / config.gradient_accumulation).backward()
        total_loss += float(loss.detach())
        samples += int(batch["labels"].shape[0])
        micro += 1
        if micro % config.gradient_accumulation == 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return {"loss": total_loss / max(micro, 1), "steps": steps, "samples": samples, "seconds": time.perf_counter() - started}


def encoder_cache_root() -> Path:
    return fedwhisper_home() / "cache" / "asr-encoder"


def batches_for(model, dataset, config: TrainConfig, cache_root: Path | None = None, progress: bool = True) -> AsrBatches:
    """Batches of ``dataset`` for ``model``: with encoder outputs from the on-disk cache when the encoder is frozen."""
    whisper = whisper_of(model)
    cache = None
    layers = config.cached_encoder_layers
    if layers is not False:
        cache = EncoderOutputCache(cache_root or encoder_cache_root(), whisper.model.encoder, dataset, layers, config.window)
        cache.compute(progress=progress)
    return AsrBatches(dataset, whisper.config.decoder_start_token_id, cache, config.window)


class StopTraining(Exception):
    """Raised by an ``on_evaluate`` callback to end a run early (e.g. an Optuna trial being pruned)."""


@dataclass
class TrainResult:
    step: int
    best_wer: float | None
    best_step: int | None
    metrics: list[dict]
    samples_per_second: float
    run_dir: Path | None


def fine_tune(
    model,
    processor,
    train_set,
    config: TrainConfig,
    *,
    eval_set=None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    on_evaluate: Callable[[int, dict], None] | None = None,
    cache_root: Path | None = None,
    progress: bool = True,
    run_info: dict | None = None,
    loss_fn=None,
) -> TrainResult:
    """Fine-tune ``model`` on a prepared split; evaluate every ``eval_every`` steps, checkpoint every ``save_every``.

    With ``run_dir``, ``resume=True`` continues from the last checkpoint exactly (weights, optimizer, scheduler, random
    state, position in the data order) and the best model by WER is kept in ``run_dir/best``. ``on_evaluate(step,
    metrics)`` may raise :class:`StopTraining`. ``run_info`` is stored beside the config in the run's options.json;
    ``loss_fn`` replaces the cross-entropy (see ``train_on_batches``)."""
    from tqdm.auto import tqdm

    from fedwhisper.asr.evaluate import evaluate_batches

    torch.manual_seed(config.seed)
    model = apply_mode(model, config)
    train_batches = batches_for(model, train_set, config, cache_root, progress)
    eval_batches = None
    if eval_set is not None and len(eval_set):
        subset = eval_set.select(range(min(len(eval_set), config.eval_clips))) if config.eval_clips else eval_set
        eval_batches = batches_for(model, subset, config, cache_root, progress)
    total = config.total_steps(len(train_set))
    optimizer, scheduler = make_optimizer(model, config, total)
    run = TrainingRun(run_dir) if run_dir else None
    state = run.begin({"config": asdict(config), **(run_info or {})}, resume, model, optimizer, scheduler) if run else {"step": 0}
    step, best_wer, best_step, elapsed_before = (
        state["step"],
        state.get("best_wer"),
        state.get("best_step"),
        state.get("elapsed_seconds", 0.0),
    )
    rows = list(run.rows) if run else []
    per_epoch = train_batches.batches_per_epoch(config.batch_size)
    started, trained_samples, trained_seconds = time.perf_counter(), 0, 0.0
    bar = tqdm(total=total, initial=step, desc=f"train ({config.mode})", unit="step", disable=not progress)
    while step < total:
        stop_if_requested()
        boundary = min(
            total,
            _next_multiple(step, config.log_every),
            _next_multiple(step, config.eval_every),
            _next_multiple(step, config.save_every),
        )
        micro = train_batches.micro_batches(
            config.batch_size, config.seed, step * config.gradient_accumulation, (boundary - step) * config.gradient_accumulation
        )
        result = train_on_batches(model, micro, config, optimizer, scheduler, loss_fn=loss_fn)
        step = boundary
        bar.update(result["steps"])
        trained_samples += result["samples"]
        trained_seconds += result["seconds"]
        row = {
            "step": step,
            "epoch": round(step * config.gradient_accumulation / per_epoch, 3),
            "loss": round(result["loss"], 5),
            "learning_rate": scheduler.get_last_lr()[0],
            "samples_per_second": round(result["samples"] / result["seconds"], 3),
        }
        evaluated = None
        if eval_batches is not None and (step % config.eval_every == 0 or step == total):
            evaluated = evaluate_batches(model, processor.tokenizer, eval_batches, decoding_options(model, config))
            row |= {
                "eval_loss": round(evaluated["loss"], 5),
                "eval_wer": round(evaluated["wer"], 5),
                "eval_cer": round(evaluated["cer"], 5),
            }
            bar.set_postfix(loss=f"{row['loss']:.3f}", wer=f"{100 * evaluated['wer']:.1f}%")
        row["elapsed_seconds"] = round(elapsed_before + time.perf_counter() - started, 2)
        rows.append(row)
        improved = evaluated is not None and (best_wer is None or evaluated["wer"] < best_wer)
        if improved:
            best_wer, best_step = evaluated["wer"], step
        if run:
            if improved:
                run.save_model(model, processor, config.window)
            run.record(row)  # before the checkpoint: a resume cuts the rows back to the checkpoint's step
            if step % config.save_every == 0 or step == total:
                run.save_checkpoint(
                    step,
                    model,
                    optimizer,
                    scheduler,
                    {"best_wer": best_wer, "best_step": best_step, "elapsed_seconds": row["elapsed_seconds"]},
                )
            if evaluated is not None:
                run.plot()
        if evaluated is not None and on_evaluate is not None:
            on_evaluate(step, row)
    bar.close()
    if run and best_step is None:  # nothing evaluated: the final weights are the model
        run.save_model(model, processor, config.window)
    return TrainResult(
        step, best_wer, best_step, rows, trained_samples / trained_seconds if trained_seconds else 0.0, run.path if run else None
    )


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def decoding_options(model, config: TrainConfig):
    from fedwhisper.transcribe import DecodingOptions, is_multilingual

    return DecodingOptions(
        language=config.language if is_multilingual(whisper_of(model)) else None,
        task=config.task,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.eval_batch_size,
    )


def train_run(
    out: str | os.PathLike,
    *,
    features: str | os.PathLike | None = None,
    model: str | None = None,
    config: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """What `asr train` does: fine-tune ``model`` on prepared ``features`` into run directory ``out``, or (``resume``)
    continue the run in ``out`` with the features, model and config it was started with."""
    from fedwhisper.asr.prepare import load_features
    from fedwhisper.models.registry import load_whisper

    if resume:
        saved = TrainingRun(out).saved_options()
        features, model, config = saved["features"], saved["model"], TrainConfig.from_dict(saved["config"])
    elif features is None:
        raise FedwhisperError("give FEATURES (or --resume RUN)")
    config = config or TrainConfig()
    dataset, manifest = load_features(features)
    if config.language is None:
        config = replace(config, language=manifest["options"]["language"])
    eval_split = "validation" if "validation" in dataset else "test"
    whisper, processor = load_whisper(model, dropout=config.dropout)
    if len(processor.tokenizer) != manifest["vocab_size"]:
        raise FedwhisperError(
            f"{features} was prepared with another tokenizer ({manifest['model']}); prepare it again for {model}"
        )
    with interruption_kept(out, "asr train"):
        return fine_tune(
            whisper,
            processor,
            dataset["train"],
            config,
            eval_set=dataset[eval_split],
            run_dir=out,
            resume=resume,
            progress=progress,
            run_info={"features": str(Path(features).resolve()), "model": model, "eval_split": eval_split},
        )


@contextmanager
def interruption_kept(out: str | os.PathLike, command: str) -> Iterator[None]:
    """Ctrl-C in a training run becomes one line: which checkpoint is kept and the command that continues."""
    try:
        yield
    except KeyboardInterrupt:
        checkpoint = TrainingRun(out).latest_checkpoint()
        kept = (
            f"the last checkpoint is {checkpoint.name}"
            if checkpoint
            else "no checkpoint was saved yet (resuming starts at step 0)"
        )
        raise Interrupted(f"interrupted: {kept} in {out}; continue with `fedwhisper {command} --resume {out}`") from None
