"""Where a trial's tensors live and in what precision: ``execution.device``,
``training.precision`` and ``execution.deterministic`` turned into torch settings.

Device names: ``auto`` (the first CUDA device when torch finds one, else the CPU), ``cpu``,
``cuda`` (the current CUDA device) and ``cuda:N``. A name that cannot be honoured on this
machine is a :class:`~fedll.errors.ConfigError` naming the key, not a CUDA traceback later.

Precision (autocast around the forward pass and the loss; parameters, gradients and the
optimiser stay fp32): ``fp32`` (no autocast: bit-identical to a build without this module),
``bf16`` (no gradient scaling needed), ``fp16`` (with a gradient scaler on CUDA; on the CPU
fp16 autocast is slow and mostly useful to test the code path), and ``auto`` (the default):
bf16 where the device computes it natively (a CPU with AVX-512 BF16 or AMX, a CUDA device
with bf16 support: :func:`native_bf16`), fp32 elsewhere (emulated bf16 is slower than fp32).
Evaluation in bf16 or fp16 also lays the model's convolution weights out channels-last
(:func:`channels_last`), which oneDNN's reduced-precision kernels prefer.

Arithmetic (:func:`arithmetic`): the same fedll, torch and seed give bit-identical results on
one kind of processor only. Torch (and numpy) pick kernels by the CPU's instruction sets (an
AVX-512 machine rounds differently from an AVX2 one) and by the GPU model, and a training
run is chaotic enough that such last-bit differences move a trial's Dice visibly; a trial's
seal records the arithmetic it ran on.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from fedll.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Resolved = Literal["fp32", "bf16", "fp16"]
"""A precision as it runs: ``auto`` resolved for a device (:func:`resolve_precision`)."""
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (Linux's cpuinfo) of native bf16 arithmetic."""

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_device_name(name: str) -> str:
    """``name`` if it is a device name fedll accepts (it may not exist on this machine)."""
    if name in ("auto", "cpu", "cuda"):
        return name
    kind, sep, index = name.partition(":")
    if kind == "cuda" and sep and index.isdigit():
        return name
    raise ValueError(f"{name!r} is not a device ({DEVICE_HELP})")


def resolve_device(name: str, key: str = "execution.device") -> torch.device:
    """The torch device for ``name`` on this machine; ConfigError naming ``key`` when the
    name is not a device, or asks for CUDA that torch cannot see."""
    try:
        check_device_name(name)
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from None
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise ConfigError(
            f"{key}: {name} asked, but torch ({torch.__version__}, {build}) finds no CUDA "
            "device here; use auto or cpu"
        )
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"{key}: {name} asked, but this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def native_bf16(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA device that supports it, or a CPU
    whose flags (Linux's cpuinfo) name AVX-512 BF16 or AMX (elsewhere: False)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return any(flag in value.split() for flag in BF16_FLAGS)
    except OSError:
        pass
    return False


def resolve_precision(precision: Precision, device: torch.device) -> Resolved:
    """``precision`` as it runs on ``device``: ``auto`` is bf16 where :func:`native_bf16`,
    else fp32; the others are themselves."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[resolved])


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its gradients underflow without one); None otherwise."""
    if resolve_precision(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


@contextlib.contextmanager
def channels_last(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """The model's 4-D parameters and buffers laid out channels-last (NHWC) while the block
    runs, and contiguous again after (the same values: only their order in memory changes,
    so state dicts and saved models are as before). A no-op unless ``enabled``."""
    if not enabled:
        yield
        return
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.dim() == 4]
    with torch.inference_mode(False):  # ordinary tensors, even inside an inference block
        for t in tensors:
            t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        with torch.inference_mode(False):
            for t in tensors:
                t.data = t.data.contiguous()


@contextlib.contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Torch's deterministic algorithms and cuDNN's deterministic, non-benchmarking mode
    while the block runs (``enabled``); restored after.

    Known limits: an operation with no deterministic CUDA implementation raises
    ``RuntimeError`` instead of running; cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before
    CUDA starts (set here when it is not set yet); results are reproducible on one machine,
    one torch and one GPU model, not across them.
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


def arithmetic(
    device: torch.device, training: Precision = "fp32", evaluation: Precision = "fp32"
) -> str:
    """What decides the last bits of a computation on ``device``: for the CPU, torch's kernel
    capability and the processor's model (``cpu AVX512, AMD EPYC``); for CUDA, the GPU's
    name and compute capability (``cuda NVIDIA H100 80GB HBM3, sm_90``); then, where a
    trial's training or evaluation does not run in fp32, the precisions they run in
    (``cpu AVX512, AMD EPYC; training bf16, evaluation bf16``)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        hardware = f"cuda {torch.cuda.get_device_name(device)}, sm_{major}{minor}"
    else:
        hardware = f"cpu {torch.backends.cpu.get_cpu_capability()}, {cpu_model()}"
    ran = (resolve_precision(training, device), resolve_precision(evaluation, device))
    if ran == ("fp32", "fp32"):
        return hardware
    return f"{hardware}; training {ran[0]}, evaluation {ran[1]}"


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name (Linux's cpuinfo; the platform's processor string
    elsewhere, ``unknown`` when neither says)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
