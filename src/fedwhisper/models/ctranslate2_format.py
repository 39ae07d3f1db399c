"""Reader for CTranslate2 ``model.bin`` checkpoints.

The format is little-endian with no padding: u32 binary version, the spec name,
u32 spec revision, u32 variable count, then per variable its name, u8 rank,
rank x u32 dims, u8 dtype id, u32 byte count and the raw row-major bytes, then
u32 alias count and (alias, target) string pairs. A string is u16 (length + 1),
UTF-8 bytes and a NUL.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedwhisper.errors import FedwhisperError

# CTranslate2's DataType enum.
_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16: kept as raw 16-bit words, widened on read
}
_BFLOAT16 = 5
SUPPORTED_BINARY_VERSIONS = (5, 6)


class CheckpointFormatError(FedwhisperError):
    """A model.bin that is not a readable CTranslate2 checkpoint."""


@dataclass
class Checkpoint:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]

    def get(self, name: str) -> np.ndarray:
        """Variable ``name`` (following aliases), int8 weights dequantised to float32."""
        name = self.aliases.get(name, name)
        try:
            value = self.variables[name]
        except KeyError:
            raise CheckpointFormatError(f"checkpoint has no variable {name!r}") from None
        if value.dtype == np.int8 and name.endswith("weight"):  # int8 scalars are flags, not quantised weights
            scale_name = name + "_scale"
            if scale_name not in self.variables:
                raise CheckpointFormatError(f"int8 variable {name!r} has no {scale_name!r}")
            scale = self.variables[scale_name].astype(np.float32)
            return value.astype(np.float32) / scale.reshape(-1, *([1] * (value.ndim - 1)))
        return value

    def scalar(self, name: str) -> int | float:
        return self.get(name).item()

    def has(self, name: str) -> bool:
        return self.aliases.get(name, name) in self.variables


class _Reader:
    def __init__(self, stream: BinaryIO, source: str):
        self.stream = stream
        self.source = source

    def take(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) != size:
            raise CheckpointFormatError(f"{self.source}: truncated (wanted {size} bytes, got {len(data)})")
        return data

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = self.take(length)
        if not raw.endswith(b"\0"):
            raise CheckpointFormatError(f"{self.source}: string is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_checkpoint(stream: BinaryIO, source: str = "model.bin") -> Checkpoint:
    """Parse a CTranslate2 checkpoint from a binary stream."""
    reader = _Reader(stream, source)
    (version,) = reader.unpack("I")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CheckpointFormatError(f"{source}: unsupported CTranslate2 binary version {version}")
    spec = reader.string()
    (revision,) = reader.unpack("I")
    (count,) = reader.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(count):
        name = reader.string()
        (rank,) = reader.unpack("B")
        shape = reader.unpack(f"{rank}I") if rank else ()
        (dtype_id,) = reader.unpack("B")
        if dtype_id not in _DTYPES:
            raise CheckpointFormatError(f"{source}: variable {name!r} has unknown dtype id {dtype_id}")
        (nbytes,) = reader.unpack("I")
        dtype = _DTYPES[dtype_id]
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes != expected:
            raise CheckpointFormatError(f"{source}: variable {name!r} has {nbytes} bytes, shape {shape} needs {expected}")
        array = np.frombuffer(reader.take(nbytes), dtype=dtype).reshape(shape)
        if dtype_id == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    (alias_count,) = reader.unpack("I")
    aliases: dict[str, str] = {}
    for _ in range(alias_count):
        alias = reader.string()
        aliases[alias] = reader.string()
    return Checkpoint(spec=spec, revision=revision, variables=variables, aliases=aliases)


def load_checkpoint(parts: list[Path]) -> Checkpoint:
    """Read a checkpoint stored in one file or split into consecutive parts."""
    from io import BytesIO

    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise FedwhisperError(f"checkpoint part(s) not found: {', '.join(missing)}")
    if len(parts) == 1:
        with open(parts[0], "rb") as stream:
            return read_checkpoint(stream, str(parts[0]))
    data = b"".join(Path(p).read_bytes() for p in parts)
    return read_checkpoint(BytesIO(data), " + ".join(str(p) for p in parts))
