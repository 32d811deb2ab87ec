"""A kept model: a trial's final weights in safetensors, with what it takes to use them.

A model file (``RUN_DIR/models/<trial id>.safetensors``) holds the state dict of the trial's
final global model and, in the safetensors metadata under the key ``fedll`` (a JSON string,
:class:`ModelMetadata`), the format name and version, the fedll version that wrote it, the
builder and its arguments (:class:`~fedll.config.schema.ModelConfig`), the slice recipe the
model was trained on (:class:`~fedll.config.schema.SliceConfig`), the trial id, its
fingerprint and the SHA-256 of the weights (:func:`weights_digest`: a file cannot hold the
digest of its own bytes, so it holds that of its tensors). :func:`decode_model` refuses, before
building anything, a model whose builder and arguments measure more parameters than a scenario
may hold (``execution.max_parameters``' default, measured by :func:`fedll.models.registry.
footprint` as the scenario loader measures it); refuses weights that are NaN or infinite (such
a model predicts an empty mask) or that differ from the digest; then rebuilds the model with
:func:`fedll.models.build_model` and loads the weights strictly, so a file whose state does not
fit its builder is refused. Files of an earlier fedll carry no digest and still load.
:func:`read_model` also compares the file with the size and SHA-256 its trial's seal lists,
when the caller has them (:func:`fedll.run.store.sealed_model`).

Every problem with a file is a :class:`~fedll.errors.DataError` of one line that names it.
"""

from __future__ import annotations

import hashlib
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
from fedll.config.schema import ExecutionConfig, ModelConfig, SliceConfig
from fedll.errors import DataError
from fedll.models.registry import build_model, footprint

FORMAT = "fedll-model"
FORMAT_VERSION = 1
"""Bump when a file of the old version can no longer be read as written (a new required
field, a changed meaning); :func:`decode_model` refuses any version but this one. (The
optional ``weights_sha256`` needed no bump: files without it still read as written.)"""
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
    weights_sha256: str | None = None  # weights_digest; None in files of an earlier fedll


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


def weights_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """The SHA-256 of a state: each tensor's name, dtype, shape and bytes, in name order
    (what the weights are, whatever the order or padding of a file holding them)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes(order="C"))
    return digest.hexdigest()


def encode_model(
    state: Mapping[str, np.ndarray],
    model: ModelConfig,
    slices: SliceConfig,
    trial_id: str,
    fingerprint: str,
) -> bytes:
    """The safetensors bytes of ``state`` with its :class:`ModelMetadata`."""
    arrays = {name: np.ascontiguousarray(array) for name, array in state.items()}
    metadata = ModelMetadata(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        fedll=fedll.__version__,
        model=model,
        slices=slices,
        trial=trial_id,
        fingerprint=fingerprint,
        weights_sha256=weights_digest(arrays),
    )
    text = json.dumps(metadata.model_dump(mode="json"), sort_keys=True)
    return save_arrays(arrays, metadata={METADATA_KEY: text})


def decode_model(data: bytes, source: str) -> SavedModel:
    """The model of a file's bytes (``source`` names it in errors); DataError when the bytes
    are not safetensors, carry no fedll metadata, come from an incompatible format version,
    name a model larger than a scenario may hold, hold NaN or infinite weights or weights
    that differ from their digest, or a state that does not fit the named builder."""
    metadata = _metadata(data, source)
    _check_size(metadata, source)
    try:
        arrays = load_arrays(data)
    except SafetensorError as error:
        raise DataError(f"{source}: not a safetensors file ({_first_line(error)})") from None
    _check_weights(arrays, metadata, source)
    try:
        module = build_model(metadata.model.name, **metadata.model.kwargs())
        module.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    except (RuntimeError, ValueError, TypeError) as error:
        raise DataError(
            f"{source}: its weights do not fit model {metadata.model.name!r} ({_first_line(error)})"
        ) from None
    return SavedModel(module=module.eval(), metadata=metadata, source=source)


def read_model(path: Path, sealed: tuple[int, str] | None = None) -> SavedModel:
    """The model file at ``path`` (see :func:`decode_model`); ``sealed``: the (size,
    SHA-256) its trial's seal lists for it (:func:`fedll.run.store.sealed_model`), which the
    file's bytes must match."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    data = path.read_bytes()
    if sealed is not None and (len(data), hashlib.sha256(data).hexdigest()) != tuple(sealed):
        raise DataError(
            f"{path}: differs from the size and SHA-256 its trial's seal lists (cut short or "
            "edited)"
        )
    return decode_model(data, str(path))


def _check_size(metadata: ModelMetadata, source: str) -> None:
    """DataError when the named builder and arguments measure more parameters than a
    scenario may hold by default (the scenario loader's check, on the meta device)."""
    limit = ExecutionConfig.model_fields["max_parameters"].default
    model = metadata.model
    parameters, _ = footprint(model.name, model.kwargs(), 1, metadata.slices.size)
    if parameters > limit:
        raise DataError(
            f"{source}: its metadata names a model {model.name!r} of {parameters:.3g} "
            f"parameters, over execution.max_parameters ({limit:.3g}); not built"
        )


def _check_weights(arrays: Mapping[str, np.ndarray], metadata: ModelMetadata, source: str) -> None:
    """DataError when a tensor holds NaN or infinite values (named), or the weights differ
    from the digest in the metadata (when it has one)."""
    for name in sorted(arrays):
        array = arrays[name]
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            non_finite = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise DataError(
                f"{source}: tensor {name!r} holds {non_finite} NaN or infinite value(s)"
            )
    expected = metadata.weights_sha256
    if expected is not None and weights_digest(arrays) != expected:
        raise DataError(
            f"{source}: its weights differ from the SHA-256 in its metadata (damaged or edited)"
        )


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
