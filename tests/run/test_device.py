"""Devices and precision: names checked at parse time, CUDA that is not there refused in one
line, autocast training on the CPU, deterministic mode restored, and (on a machine with CUDA
only) a trial's training on the GPU agreeing with the CPU's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedll.config import TrainingConfig, load_scenario
from fedll.errors import ConfigError, FedllError
from fedll.models import build_model
from fedll.run.device import (
    arithmetic,
    autocast,
    channels_last,
    check_device_name,
    deterministic,
    grad_scaler,
    native_bf16,
    resolve_device,
    resolve_precision,
)
from fedll.training.continual import EWC
from fedll.training.train import train_local

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_names_fedll_accepts(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "mps", "CPU", ""])
def test_a_bad_device_name_is_refused_at_parse_time(write_scenario, name):
    with pytest.raises(FedllError, match=r"execution\.device"):
        load_scenario(write_scenario({"execution": {"device": name}}))


def test_auto_is_the_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_where_there_is_none_is_one_line_naming_the_key(name):
    with pytest.raises(ConfigError, match=rf"^execution\.device: {name} asked, but torch .* "
                       "finds no CUDA device here; use auto or cpu$"):  # fmt: skip
        resolve_device(name)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_run_with_cuda_where_there_is_none_exits_2_before_any_trial(write_scenario, tmp_path,
                                                                    run_fedll):  # fmt: skip
    path = write_scenario()
    for local in (["--local"], []):
        done = run_fedll("run", path, "--out", tmp_path / "run", "--set",
                         "execution.device=cuda", *local, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "execution.device: cuda asked" in done.stderr
        assert not (tmp_path / "run" / "trials").exists()


def _data(n: int = 12, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 1, size, size)).astype(np.float32)
    masks = (images > 0.5).astype(np.uint8)
    return images, masks


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_training_on_the_cpu_moves_the_weights_and_stays_finite(precision):
    torch.manual_seed(0)
    model = build_model("dycnn", base_width=4, depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, masks = _data()
    cfg = TrainingConfig(epochs=2, batch_size=4, lr=0.01, precision=precision)
    result = train_local(model, images, masks, cfg, seed=0)
    assert np.isfinite(result.loss) and result.steps == 6
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype for k in before)  # parameters stay fp32
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_autocast_and_scaler_follow_the_precision():
    cpu = torch.device("cpu")
    assert grad_scaler(cpu, "fp32") is None and grad_scaler(cpu, "bf16") is None
    assert grad_scaler(cpu, "fp16") is not None
    with autocast(cpu, "bf16"):
        out = torch.nn.Linear(3, 2)(torch.ones(1, 3))
    assert out.dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert torch.nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.float32


def test_deterministic_mode_is_on_inside_and_restored_after():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() == before
    with deterministic(False):
        assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
def test_training_on_cuda_agrees_with_the_cpu():
    images, masks = _data()
    cfg = TrainingConfig(epochs=1, batch_size=4, lr=0.01, precision="fp32")
    states = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = build_model("dycnn", base_width=4, depth=2).to(device)
        ewc = EWC({}, seed=0)
        train_local(model, images, masks, cfg, seed=0, hooks=[ewc])
        train_local(model, images, masks, cfg, seed=1, hooks=[ewc])  # with the Fisher on it
        states.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
    for key, value in states[0].items():
        assert torch.allclose(value.float(), states[1][key].float(), atol=1e-3), key


def test_auto_is_bf16_where_the_cpu_has_it_natively(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    for flags, native in [("fpu sse avx2 avx512f", False), ("avx2 avx512f avx512_bf16", True),
                          ("avx2 amx_bf16 amx_tile", True)]:  # fmt: skip
        info = tmp_path / f"cpuinfo-{native}-{len(flags)}"
        info.write_text(f"processor\t: 0\nmodel name\t: A CPU\nflags\t\t: {flags}\n")
        assert native_bf16(cpu, info) is native, flags
    assert native_bf16(cpu, tmp_path / "missing") is False
    import fedll.run.device

    monkeypatch.setattr(fedll.run.device, "native_bf16", lambda device: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert grad_scaler(cpu, "auto") is None
    with autocast(cpu, "auto"):
        assert torch.nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.float32
    assert arithmetic(cpu, "auto", "auto") == arithmetic(cpu)  # fp32: the string as before
    monkeypatch.setattr(fedll.run.device, "native_bf16", lambda device: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp16" and resolve_precision("fp32", cpu) == "fp32"
    with autocast(cpu, "auto"):
        assert torch.nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.bfloat16
    assert arithmetic(cpu, "auto", "fp32") == f"{arithmetic(cpu)}; training bf16, evaluation fp32"


def test_channels_last_lays_the_weights_out_and_gives_them_back_unchanged():
    torch.manual_seed(0)
    model = build_model("dycnn", base_width=4, depth=2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convs = [p for p in model.parameters() if p.dim() == 4]
    with torch.inference_mode(), channels_last(model):
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        model(torch.zeros(2, 1, 16, 16))
    after = model.state_dict()
    assert all(v.is_contiguous() and torch.equal(v, before[k]) for k, v in after.items())
    assert not any(p.is_inference() for p in model.parameters())  # still trainable
    model.train()
    model(torch.zeros(2, 1, 16, 16)).sum().backward()
    with channels_last(model, enabled=False):
        assert all(p.is_contiguous() for p in convs)
