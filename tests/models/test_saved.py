"""Kept model files: a round trip gives the same weights and the same outputs, and every kind
of bad file is one DataError line that names it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

import fedll
from fedll.config.schema import ModelConfig, SliceConfig
from fedll.errors import DataError
from fedll.models import build_model
from fedll.models.saved import (
    FORMAT_VERSION,
    METADATA_KEY,
    decode_model,
    encode_model,
    model_state,
    read_model,
    weights_digest,
)


def images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 1, 24, 24, generator=torch.Generator().manual_seed(seed))


DYCNN = ModelConfig(name="dycnn", base_width=4, depth=2)
SLICES = SliceConfig(size=24, axis=1, empty_fraction=0.5, seed=7)


def trained(spec: ModelConfig) -> torch.nn.Module:
    """A model whose weights and BatchNorm statistics differ from a fresh build's."""
    torch.manual_seed(1)
    model = build_model(spec.name, **spec.kwargs())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train()
    model(images(4, seed=0))  # moves the running statistics
    return model.eval()


def encoded(spec: ModelConfig = DYCNN) -> tuple[torch.nn.Module, bytes]:
    model = trained(spec)
    return model, encode_model(model_state(model), spec, SLICES, "trial-7", "fp-7")


@pytest.mark.parametrize(
    "spec",
    [DYCNN, ModelConfig(name="static", base_width=4, depth=2, norm="instance")],
    ids=["dycnn", "static-instance"],
)
def test_a_round_trip_gives_equal_weights_and_equal_outputs(spec):
    model, data = encoded(spec)
    saved = decode_model(data, "m.safetensors")
    assert saved.model == spec and saved.slices == SLICES
    assert (saved.metadata.trial, saved.metadata.fingerprint) == ("trial-7", "fp-7")
    assert saved.metadata.fedll == fedll.__version__
    assert saved.metadata.format_version == FORMAT_VERSION
    before, after = model.state_dict(), saved.module.state_dict()
    assert list(before) == list(after)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert not saved.module.training
    batch = images(3, seed=5)
    with torch.no_grad():
        assert torch.equal(model(batch), saved.module(batch))


def test_read_model_reads_a_file(tmp_path):
    _, data = encoded()
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert read_model(path).source == str(path)
    assert encode_model(model_state(read_model(path).module), DYCNN, SLICES, "trial-7", "fp-7") == (
        data
    )  # deterministic bytes: the same state and metadata encode the same


def metadata_of(data: bytes) -> dict:
    length = int.from_bytes(data[:8], "little")
    return json.loads(json.loads(data[8 : 8 + length])["__metadata__"][METADATA_KEY])


def with_metadata(data: bytes, change) -> bytes:
    """``data`` re-encoded with its fedll metadata changed by ``change(dict)``."""
    meta = metadata_of(data)
    change(meta)
    return save_arrays(load_arrays(data), metadata={METADATA_KEY: json.dumps(meta)})


def other_builder(meta: dict) -> None:
    meta["model"] = {"name": "static", "base_width": 4, "depth": 2}


def wider(meta: dict) -> None:
    meta["model"]["base_width"] = 8


def future_format(meta: dict) -> None:
    meta["format_version"] = FORMAT_VERSION + 1
    meta["fedll"] = "9.0.0"


def unknown_builder(meta: dict) -> None:
    meta["model"]["name"] = "unet9000"


def no_slices(meta: dict) -> None:
    del meta["slices"]


def test_the_metadata_says_what_the_brief_asks():
    _, data = encoded()
    meta = metadata_of(data)
    assert meta == {
        "format": "fedll-model",
        "format_version": FORMAT_VERSION,
        "fedll": fedll.__version__,
        "model": {"name": "dycnn", "base_width": 4, "depth": 2},
        "slices": {"size": 24, "empty_fraction": 0.5, "axis": 1, "seed": 7},
        "trial": "trial-7",
        "fingerprint": "fp-7",
        "weights_sha256": weights_digest(load_arrays(data)),  # of the tensors it holds
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda d: b"", "not a safetensors file (too short)", id="empty"),
        pytest.param(lambda d: b"\x00" * 3 + d, "not a safetensors file", id="shifted"),
        pytest.param(lambda d: b"hello, I am a CSV file\n", "not a safetensors file", id="text"),
        pytest.param(lambda d: d[: len(d) // 2], "not a safetensors file", id="cut-short"),
        pytest.param(
            lambda d: save_arrays({"w": np.zeros(3, np.float32)}),
            "without fedll metadata",
            id="plain-safetensors",
        ),
        pytest.param(
            lambda d: save_arrays({"w": np.zeros(3, np.float32)}, metadata={METADATA_KEY: "{"}),
            "fedll metadata is not JSON",
            id="metadata-not-json",
        ),
        pytest.param(
            lambda d: with_metadata(d, future_format),
            f"written by fedll 9.0.0 in model format version {FORMAT_VERSION + 1}; this fedll "
            f"({fedll.__version__}) reads version {FORMAT_VERSION}",
            id="incompatible-fedll",
        ),
        pytest.param(
            lambda d: with_metadata(d, no_slices), "bad fedll metadata at slices", id="no-slices"
        ),
        pytest.param(
            lambda d: with_metadata(d, unknown_builder),
            "bad fedll metadata at model",
            id="unknown-builder",
        ),
        pytest.param(
            lambda d: with_metadata(d, other_builder),
            "its weights do not fit model 'static'",
            id="other-builder",
        ),
        pytest.param(
            lambda d: with_metadata(d, wider),
            "its weights do not fit model 'dycnn'",
            id="other-arguments",
        ),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path, make, message):
    _, data = encoded()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(make(data))
    with pytest.raises(DataError) as caught:
        read_model(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert message in text, text


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(DataError, match="model file not found"):
        read_model(tmp_path / "none.safetensors")


# ---------------------------------------------------------------- weights that lie


def test_the_digest_is_of_the_weights_by_name_dtype_shape_and_bytes():
    """Worked by hand for two tensors: the SHA-256 of, in name order, each one's
    JSON [name, dtype, shape] and its bytes."""
    a = np.array([1.0, -2.0], np.float32)
    b = np.array(7, np.int64)
    expected = hashlib.sha256(
        b'["a", "<f4", [2]]' + a.tobytes() + b'["b", "<i8", []]' + b.tobytes()
    ).hexdigest()
    assert weights_digest({"b": b, "a": a}) == expected
    assert weights_digest({"a": a.astype(np.float64), "b": b}) != expected  # dtype counts
    assert weights_digest({"a": a.reshape(2, 1), "b": b}) != expected  # and the shape


def state_with(value: float, name: str = "head.weight") -> dict[str, np.ndarray]:
    state = model_state(trained(DYCNN))
    assert name in state, sorted(state)
    state[name].flat[3] = value
    return state


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_model_with_one_non_finite_weight_is_refused_naming_the_tensor(tmp_path, value):
    """Such a model predicts NaN logits, which threshold to an empty mask: refused when read,
    whether its digest vouches for the NaN (written so) or it has none (an earlier fedll)."""
    path = tmp_path / "nan.safetensors"
    path.write_bytes(encode_model(state_with(value), DYCNN, SLICES, "trial-7", "fp-7"))
    message = f"{path}: tensor 'head.weight' holds 1 NaN or infinite value(s)"
    with pytest.raises(DataError) as caught:
        read_model(path)
    assert str(caught.value) == message
    path.write_bytes(with_metadata(path.read_bytes(), lambda m: m.pop("weights_sha256")))
    with pytest.raises(DataError) as caught:
        read_model(path)
    assert str(caught.value) == message


def test_a_weight_changed_in_the_file_no_longer_matches_its_digest(tmp_path):
    """One float of one tensor changed in place (still finite): the file still parses and
    fits its builder, and only the digest in its metadata tells."""
    _, data = encoded()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    begin, _ = header["head.weight"]["data_offsets"]
    at = 8 + length + begin + 4 * 3
    changed = bytearray(data)
    changed[at : at + 4] = np.float32(0.25).tobytes()
    path = tmp_path / "edited.safetensors"
    path.write_bytes(bytes(changed))
    with pytest.raises(DataError) as caught:
        read_model(path)
    assert str(caught.value) == (
        f"{path}: its weights differ from the SHA-256 in its metadata (damaged or edited)"
    )


def test_a_file_of_an_earlier_fedll_without_a_digest_still_loads(tmp_path):
    model, data = encoded()
    path = tmp_path / "old.safetensors"
    path.write_bytes(with_metadata(data, lambda m: m.pop("weights_sha256")))
    saved = read_model(path)
    assert saved.metadata.weights_sha256 is None
    batch = images(2, seed=3)
    with torch.no_grad():
        assert torch.equal(model(batch), saved.module(batch))


def test_a_model_too_large_to_build_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    """Metadata asking for base_width 10**6 (some 1e15 parameters): measured on the meta
    device and refused by the scenario loader's bound (execution.max_parameters), before a
    tensor is allocated: build_model is never called."""
    import fedll.models.saved as saved_module

    def never(*args, **kwargs):
        raise AssertionError("built a model the file's metadata makes too large")

    _, data = encoded()
    path = tmp_path / "huge.safetensors"
    path.write_bytes(with_metadata(data, lambda m: m["model"].update(base_width=10**6)))
    monkeypatch.setattr(saved_module, "build_model", never)
    with pytest.raises(DataError) as caught:
        read_model(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: its metadata names a model 'dycnn' of 1.86e+15 parameters")
    assert text.endswith("over execution.max_parameters (5e+08); not built"), text


def test_read_model_checks_the_size_and_sha256_of_the_seal(tmp_path):
    _, data = encoded()
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert read_model(path, sealed=(len(data), digest)).source == str(path)
    for sealed in ((len(data) + 1, digest), (len(data), "0" * 64)):
        with pytest.raises(DataError) as caught:
            read_model(path, sealed=sealed)
        assert str(caught.value) == (
            f"{path}: differs from the size and SHA-256 its trial's seal lists (cut short or "
            "edited)"
        )
