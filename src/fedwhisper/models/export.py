"""Any transformers Whisper model → a CTranslate2 directory that faster-whisper serves (the fast CPU path)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from fedwhisper.constants import TRAINED_WINDOW_FILE
from fedwhisper.errors import FedwhisperError
from fedwhisper.files import atomic_path
from fedwhisper.models.registry import PACKAGED_MODELS, fedwhisper_home, resolve_model

QUANTIZATIONS = ("int8", "int8_float32", "float32")
EXPORT_MARKER = "fedwhisper_export.json"
# beside model.bin: faster-whisper reads tokenizer.json and preprocessor_config.json; the rest lets transformers load
# the processor from the export too (evaluation prepares features with it)
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "normalizer.json",
    "added_tokens.json",
    TRAINED_WINDOW_FILE,
)


def is_ctranslate2_dir(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / "model.bin").is_file()


def _source_identity(location: str) -> dict:
    """What the export was made from: the model directory and its weights' sizes and times (a retrained model differs)."""
    path = Path(location)
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    return {
        "source": str(path.resolve()) if path.is_dir() else location,
        "weights": {w.name: [w.stat().st_size, w.stat().st_mtime_ns] for w in weights},
    }


def export_ctranslate2(model: str, out: str | os.PathLike, quantization: str = "int8", force: bool = False) -> Path:
    """Convert ``model`` (packaged name, transformers directory such as RUN/best, or hub id) with CTranslate2's own
    ``TransformersConverter``, weights quantized to ``quantization``, tokenizer and processor files copied. A finished
    export of the same model and quantization is reused unless ``force``."""
    if quantization not in QUANTIZATIONS:
        raise FedwhisperError(f"--quantization must be one of {', '.join(QUANTIZATIONS)} (got {quantization!r})")
    if is_ctranslate2_dir(model):
        raise FedwhisperError(f"{model} is already a CTranslate2 model")
    location = resolve_model(model)
    out = Path(out)
    identity = _source_identity(location) | {"quantization": quantization}
    marker = out / EXPORT_MARKER
    if out.exists() and not marker.is_file() and (not out.is_dir() or any(out.iterdir())):
        raise FedwhisperError(f"{out} exists and is not a fedwhisper export: choose another --out")  # it would be replaced
    if not force and marker.is_file() and {k: v for k, v in json.loads(marker.read_text()).items() if k in identity} == identity:
        return out
    from ctranslate2.converters import TransformersConverter

    started = time.perf_counter()
    copied = (
        [name for name in PROCESSOR_FILES if (Path(location) / name).is_file()]
        if Path(location).is_dir()
        else ["tokenizer.json", "preprocessor_config.json"]
    )
    with atomic_path(out) as staging:  # an interrupted export never looks finished
        try:
            TransformersConverter(location, copy_files=copied).convert(str(staging), quantization=quantization, force=True)
        except (OSError, ValueError) as error:
            raise FedwhisperError(f"{model}: CTranslate2 could not convert it ({str(error).strip().splitlines()[0]})") from None
        (staging / EXPORT_MARKER).write_text(
            json.dumps(identity | {"model": str(model), "seconds": round(time.perf_counter() - started, 2)}, indent=2)
        )
    return out


def ctranslate2_model_dir(model: str, quantization: str = "int8") -> Path:
    """The CTranslate2 directory the ctranslate2 backend loads for ``model``: ``model`` itself if it is one, else its
    export, made on first use under ``$FEDWHISPER_HOME/ctranslate2`` and reused while the model is unchanged."""
    if is_ctranslate2_dir(model):
        return Path(model).expanduser()
    location = resolve_model(model)
    name = model if model in PACKAGED_MODELS else Path(location).name
    digest = hashlib.sha1(json.dumps(_source_identity(location)["source"]).encode()).hexdigest()[:10]
    return export_ctranslate2(model, fedwhisper_home() / "ctranslate2" / f"{name}-{digest}-{quantization}", quantization)


def export_source(model: str) -> str:
    """The transformers model behind ``model``: itself, or the model a fedwhisper export was made from (its processor
    prepares a corpus's features)."""
    if not is_ctranslate2_dir(model):
        return model
    marker = Path(model).expanduser() / EXPORT_MARKER
    if not marker.is_file():
        raise FedwhisperError(
            f"{model} is a CTranslate2 model not exported by fedwhisper: prepare the corpus with `fedwhisper asr prepare` "
            "for its transformers model, then evaluate those features"
        )
    return json.loads(marker.read_text())["source"]
