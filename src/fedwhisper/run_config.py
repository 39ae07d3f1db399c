"""Run options as Flower run configs: frozen dataclasses of flat scalars, built from a mapping whose keys are spelt
``num_clients`` or ``num-clients`` (pyproject, ``--run-config``, a ConfigRecord, a resumed run's options.json)."""

from __future__ import annotations

from dataclasses import asdict, fields

from fedwhisper.errors import FedwhisperError

# How a run-config value (TOML scalar or ConfigRecord entry) becomes each field's type.
_COERCE = {"int": int, "float": float, "str": str, "bool": lambda v: v if isinstance(v, bool) else str(v).lower() == "true"}


class RunConfigOptions:
    """Mixin for a frozen dataclass of run options: ``from_config`` (unknown keys ignored) and ``to_config``."""

    @classmethod
    def from_config(cls, config):
        known = {f.name: f.type for f in fields(cls)}
        values = {}
        for key, value in dict(config).items():
            name = key.replace("-", "_")
            if name in known:
                try:
                    values[name] = _COERCE[known[name]](value)
                except ValueError:
                    raise FedwhisperError(f"--{name.replace('_', '-')} must be {known[name]} (got {value!r})") from None
        return cls(**values)

    def to_config(self) -> dict:
        return asdict(self)


def require(ok: bool, field: str, rule: str, value) -> None:
    """An option check whose error names the option as the CLI spells it."""
    if not ok:
        raise FedwhisperError(f"--{field.replace('_', '-')} {rule} (got {value!r})")
