"""A fine-tuning run directory: the shared ``RunDirectory`` (options.json with the config, metrics.json/.csv by step)
plus ``checkpoints/step-N/`` resume points (trainable weights, optimizer, scheduler, random state), ``best/`` (a plain
transformers model) and ``curves.png``; and the model-state helpers a checkpoint (or a federated client) needs."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedwhisper.asr.batches import WINDOWS
from fedwhisper.constants import TRAINED_WINDOW_FILE
from fedwhisper.errors import FedwhisperError
from fedwhisper.files import atomic_path, write_json
from fedwhisper.runs import RunDirectory

log = logging.getLogger("fedwhisper.asr")
CHECKPOINTS_KEPT = 2


def whisper_of(model):
    """The WhisperForConditionalGeneration inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The weights this mode trains: what a checkpoint stores and what a federated client would send."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    unknown = sorted(set(state) - set(parameters))
    if unknown:
        raise FedwhisperError(f"checkpoint holds weights this model lacks: {unknown[:3]}…")
    with torch.no_grad():
        for name, value in state.items():
            parameters[name].copy_(value)


def save_plain_model(model, processor, path: Path, window: str = "full") -> None:
    """A plain transformers Whisper directory (LoRA merged into a copy), so every command can load it as a model, with
    the encoder window it was trained on (evaluation defaults to it)."""
    whisper = whisper_of(model)
    if whisper is not model:  # peft: merge a copy, keep training the adapters
        whisper = copy.deepcopy(model).merge_and_unload()
    with atomic_path(path) as partial:
        whisper.save_pretrained(partial)
        processor.save_pretrained(partial)
        write_json(partial / TRAINED_WINDOW_FILE, {"window": window})


def trained_window(model: str | os.PathLike) -> str:
    """The encoder window a model directory was fine-tuned on (clip or full); full for any other model: pretrained
    Whisper on clip windows loops."""
    marker = Path(model).expanduser() / TRAINED_WINDOW_FILE
    try:
        window = json.loads(marker.read_text())["window"] if marker.is_file() else "full"
    except (ValueError, KeyError, TypeError):
        raise FedwhisperError(f"{marker}: not a valid window record (delete it to use 30-s windows)") from None
    if window not in WINDOWS:
        raise FedwhisperError(f"{marker}: unknown window {window!r}")
    return window


class TrainingRun(RunDirectory):
    def __init__(self, path):
        super().__init__(path, key="step")
        self.checkpoints = self.path / "checkpoints"
        self.best = self.path / "best"

    def checkpoints_newest_first(self) -> list[Path]:
        return sorted(
            (p for p in self.checkpoints.glob("step-*") if (p / "state.json").is_file() and not p.name.endswith(".partial")),
            reverse=True,
        )

    def latest_checkpoint(self) -> Path | None:
        done = self.checkpoints_newest_first()
        return done[0] if done else None

    def begin(self, options: dict, resume: bool, model, optimizer, scheduler) -> dict:
        """Fresh: record ``options`` (refusing a directory that holds a run). Resume: restore the newest intact checkpoint
        (a damaged one is named and passed over) into model, optimizer, scheduler and torch's random state, and cut the
        metrics back to it, so the steps after it are recorded once; a run stopped before its first checkpoint starts
        again at step 0. Returns the checkpoint's state (step, best_wer, best_step, elapsed_seconds)."""
        if not resume:
            if self.latest_checkpoint() is not None or self.rows:
                raise FedwhisperError(f"{self.path} already holds a run; pass --resume to continue it or choose a new directory")
            self.start(options, resume=False)
            return {"step": 0}
        saved, current = self.saved_options().get("config") or {}, json.loads(json.dumps(options["config"]))
        if any(current.get(key) != value for key, value in saved.items()):  # a setting added since then keeps its default
            raise FedwhisperError(f"{self.path}: the run was started with other settings; resume it with the same ones")
        for checkpoint in self.checkpoints_newest_first():
            try:
                state = self._restore(checkpoint, model, optimizer, scheduler)
            except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
                log.warning("%s is damaged (%s: %s); trying the checkpoint before it", checkpoint, type(error).__name__, error)
                continue
            self.keep_until(state["step"])
            return state
        log.warning("%s: no intact checkpoint; the run starts again at step 0", self.path)
        self.keep_until(0)
        return {"step": 0}

    @staticmethod
    def _restore(checkpoint: Path, model, optimizer, scheduler) -> dict:
        state = json.loads((checkpoint / "state.json").read_text())
        trainable = load_file(checkpoint / "trainable.safetensors")
        states = torch.load(checkpoint / "optimizer.pt", weights_only=False)
        load_trainable_state(model, trainable)
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
        torch.set_rng_state(states["rng"])
        return state

    def save_checkpoint(self, step: int, model, optimizer, scheduler, state: dict) -> None:
        with atomic_path(self.checkpoints / f"step-{step:06d}") as partial:
            partial.mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in trainable_state(model).items()}, partial / "trainable.safetensors")
            torch.save(
                {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},
                partial / "optimizer.pt",
            )
            (partial / "state.json").write_text(json.dumps(state | {"step": step}, indent=2))
        for old in sorted(self.checkpoints.glob("step-*"))[:-CHECKPOINTS_KEPT]:
            shutil.rmtree(old, ignore_errors=True)

    def save_model(self, model, processor, window: str) -> None:
        save_plain_model(model, processor, self.best, window)

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.rows if r.get("loss") is not None]
        evals = [r for r in self.rows if r.get("eval_wer") is not None]
        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
        left.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
        left.set(xlabel="step", ylabel="loss", title="loss")
        left.legend()
        right.plot([r["step"] for r in evals], [100 * r["eval_wer"] for r in evals], "o-", label="WER")
        right.plot([r["step"] for r in evals], [100 * r["eval_cer"] for r in evals], "s--", label="CER")
        right.set(xlabel="step", ylabel="%", title="evaluation")
        right.legend()
        figure.tight_layout()
        figure.savefig(self.path / "curves.png", dpi=110)
        plt.close(figure)
