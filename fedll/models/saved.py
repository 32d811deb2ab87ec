"""A kept model: a trial's final weights in safetensors, with what it takes to use them.

A model file (``RUN_DIR/models/<trial id>.safetensors``) holds the state dict of the trial's
final global model and, in the safetensors metadata under the key ``fedll`` (a JSON string,
:class:`ModelMetadata`), the format name and version, the fedll version that wrote it, the
builder and its arguments (:class:`~fedll.config.schema.ModelConfig`), the slice recipe the
model was trained on (:class:`~fedll.config.schema.SliceConfig`), the trial id and its
fingerprint. :func:`decode_model` rebuilds the model with :func:`fedll.models.build_model` and
loads the weights strictly, so a file whose state does not fit its builder is refused.

Every problem with a file is a :class:`~fedll.errors.DataError` of one line that names it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from torch import nn

import fedll
from fedll.config.schema import ModelConfig, SliceConfig
from fedll.errors import DataError
from fedll.models.registry import build_model

FORMAT = "fedll-model"
FORMAT_VERSION = 1
"""Bump when a file of the old version can no longer be read as written (a new required
field, a changed meaning); :func:`decode_model` refuses any version but this one."""
METADATA_KEY = "fedll"
_HEADER_SIZE = struct.Struct("<Q")  # safetensors: the JSON header's length, u64 little-endian


class ModelMetadata(BaseModel):
    """What a model file says about its weights (the ``fedll`` metadata entry)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    format: Literal["fedll-model"]
    format_version: int
    fedll: str
    model: ModelConfig
    slices: SliceConfig
    trial: str
    fingerprint: str


@dataclass(frozen=True, eq=False)
class SavedModel:
    """A decoded model file: the built module (weights loaded, eval mode, on the CPU) and its
    metadata; ``source`` names the file in messages."""

    module: nn.Module
    metadata: ModelMetadata
    source: str

    @property
    def model(self) -> ModelConfig:
        return self.metadata.model

    @property
    def slices(self) -> SliceConfig:
        return self.metadata.slices


def model_state(module: nn.Module) -> dict[str, np.ndarray]:
    """A copy of ``module``'s state dict (parameters and buffers) as numpy arrays."""
    return {name: t.detach().cpu().numpy().copy() for name, t in module.state_dict().items()}


def encode_model(
    state: Mapping[str, np.ndarray],
    model: ModelConfig,
    slices: SliceConfig,
    trial_id: str,
    fingerprint: str,
) -> bytes:
    """The safetensors bytes of ``state`` with its :class:`ModelMetadata`."""
    metadata = ModelMetadata(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        fedll=fedll.__version__,
        model=model,
        slices=slices,
        trial=trial_id,
        fingerprint=fingerprint,
    )
    text = json.dumps(metadata.model_dump(mode="json"), sort_keys=True)
    arrays = {name: np.ascontiguousarray(array) for name, array in state.items()}
    return save_arrays(arrays, metadata={METADATA_KEY: text})


def decode_model(data: bytes, source: str) -> SavedModel:
    """The model of a file's bytes (``source`` names it in errors); DataError when the bytes
    are not safetensors, carry no fedll metadata, come from an incompatible format version,
    or hold a state that does not fit the named builder."""
    metadata = _metadata(data, source)
    try:
        arrays = load_arrays(data)
    except SafetensorError as error:
        raise DataError(f"{source}: not a safetensors file ({_first_line(error)})") from None
    try:
        module = build_model(metadata.model.name, **metadata.model.kwargs())
        module.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    except (RuntimeError, ValueError, TypeError) as error:
        raise DataError(
            f"{source}: its weights do not fit model {metadata.model.name!r} ({_first_line(error)})"
        ) from None
    return SavedModel(module=module.eval(), metadata=metadata, source=source)


def read_model(path: Path) -> SavedModel:
    """The model file at ``path`` (see :func:`decode_model`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    return decode_model(path.read_bytes(), str(path))


def _metadata(data: bytes, source: str) -> ModelMetadata:
    """The file's fedll metadata, read from the safetensors header."""
    header = _header(data, source)
    entries = header.get("__metadata__")
    text = entries.get(METADATA_KEY) if isinstance(entries, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{source}: a safetensors file without fedll metadata (not a fedll model)")
    try:
        raw = json.loads(text)
    except ValueError:
        raise DataError(f"{source}: its fedll metadata is not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise DataError(f"{source}: its metadata is not a {FORMAT} (format {FORMAT_VERSION})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{source}: written by fedll {raw.get('fedll', '?')} in model format version "
            f"{raw.get('format_version')!r}; this fedll ({fedll.__version__}) reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        return ModelMetadata.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "metadata"
        raise DataError(f"{source}: bad fedll metadata at {where}: {first['msg']}") from None


def _header(data: bytes, source: str) -> dict:
    """The safetensors JSON header (8-byte length, then JSON), or DataError."""
    if len(data) < _HEADER_SIZE.size:
        raise DataError(f"{source}: not a safetensors file (too short)")
    (length,) = _HEADER_SIZE.unpack_from(data)
    end = _HEADER_SIZE.size + length
    try:
        if end > len(data):
            raise ValueError("header length past the end")
        header = json.loads(data[_HEADER_SIZE.size : end].decode())
    except (ValueError, UnicodeError):
        raise DataError(f"{source}: not a safetensors file (no readable header)") from None
    if not isinstance(header, dict):
        raise DataError(f"{source}: not a safetensors file (no readable header)")
    return header


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
