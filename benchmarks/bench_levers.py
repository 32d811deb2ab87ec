"""The speed levers issue 32 asked to try, each against what fedll ships, side by side.

For the static U-Net and the Dy-CNN of a scenario's size (default: paper.yaml's, 48 px, base
width 8, depth 3), 1 thread, in bf16 autocast (the default arithmetic where the CPU has it):

- training, one Adam step on a batch: the shipped multi-tensor Adam against fused Adam and
  against channels-last training (the input and every 4-D parameter laid out NHWC), with
  whether the parameters after 3 steps stay bit-identical;
- evaluation, one forward of 128 slices as :func:`fedll.evaluation.evaluate.evaluate_cases`
  runs it (inference mode, channels-last, bf16): against batch norm folded into the kernels
  (the shift as a bias), ``torch.compile`` (its first call timed apart) and, where the
  ``onnxruntime`` and ``onnx`` packages are installed, ONNX Runtime in fp32.

Times are medians of interleaved repeats; ratios are lever / shipped (below 1: faster).

    .venv/bin/python benchmarks/bench_levers.py [--size 48] [--width 8] [--depth 3]
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_arithmetic import interleaved
from torch import nn

from fedll.models import advance_schedule, build_model
from fedll.models.dynamic_conv import DynamicConvLayer
from fedll.models.unet import TwoConv
from fedll.run.device import channels_last


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="training batch")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    return parser.parse_args()


def medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, interleaved (:func:`bench_arithmetic.interleaved`)."""
    return {name: statistics.median(t) for name, t in interleaved(runs, repeats).items()}


def to_channels_last(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        if param.dim() == 4:
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return model


def trainer(
    model: nn.Module, x: torch.Tensor, fused: bool, layout: bool
) -> tuple[Callable[[], None], nn.Module]:
    """One bf16 Adam step of a copy of ``model`` (the closure) and that copy."""
    model = copy.deepcopy(model).train()
    if layout:
        model = to_channels_last(model)
        x = x.contiguous(memory_format=torch.channels_last)
    kind = {"fused": True} if fused else {"foreach": True}
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3, **kind)
    target = (x > 1.0).float()

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.binary_cross_entropy_with_logits(model(x).float(), target)
        loss.backward()
        optimiser.step()
        advance_schedule(model)

    return step, model


class Shifted(nn.Module):
    """A convolution followed by a per-channel shift (batch norm folded into it)."""

    def __init__(self, conv: nn.Module, shift: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor, modality: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, modality) if isinstance(self.conv, DynamicConvLayer) else self.conv(x)
        return out + self.shift.view(1, -1, 1, 1).to(out.dtype)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every (conv, BatchNorm2d) pair of its
    :class:`TwoConv` blocks folded: the norm's scale multiplies the kernels (every kernel of a
    dynamic bank, which mixing keeps linear), its shift becomes a bias after the conv."""
    model = copy.deepcopy(model).eval()
    for block in (m for m in model.modules() if isinstance(m, TwoConv)):
        for i in (1, 2):
            conv, norm = block._modules[f"conv{i}"], block._modules[f"norm{i}"]
            if not isinstance(norm, nn.BatchNorm2d):
                continue
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            with torch.no_grad():
                if isinstance(conv, nn.Conv2d):
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                else:
                    bank = conv.conv.weight_bank
                    shape = (1, -1, 1, 1, 1) if conv.conv.mode == "bank" else (-1, 1, 1, 1, 1)
                    bank.mul_(scale.view(shape))
            block._modules[f"conv{i}"] = Shifted(conv, shift.detach())
            block._modules[f"norm{i}"] = nn.Identity()
    return model


def evaluator(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The evaluation forward as fedll ships it: inference mode, channels-last, bf16."""

    def forward() -> torch.Tensor:
        with channels_last(model), torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            return model(x)

    return forward


def onnx_runtime(model: nn.Module, x: torch.Tensor) -> Callable[[], object] | str:
    """An ONNX Runtime session's forward of ``x`` in fp32 (1 thread), or why there is none."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime not installed"
    buffer = io.BytesIO()
    try:
        torch.onnx.export(copy.deepcopy(model).eval(), (x,), buffer, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    except Exception as error:  # noqa: BLE001 - the exporter's failures are the finding
        return f"does not export: {type(error).__name__}: {str(error).splitlines()[0][:90]}"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options)
    inputs = {"x": x.numpy()}
    return lambda: session.run(None, inputs)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, args.size, args.size, generator=generator)
    print(f"torch {torch.__version__}, {args.size} px, width {args.width}, depth {args.depth}, "
          f"1 thread, bf16; ratios: lever / shipped")  # fmt: skip
    for name in ("static", "dycnn"):
        model = build_model(name, seed=0, base_width=args.width, depth=args.depth)
        batch = x[: args.batch]
        steps = {"shipped": trainer(model, batch, False, False),
                 "fused Adam": trainer(model, batch, True, False),
                 "channels-last": trainer(model, batch, False, True)}  # fmt: skip
        times = medians({k: step for k, (step, _) in steps.items()}, args.repeats)
        fresh = {k: trainer(model, batch, fused=k == "fused Adam", layout=k == "channels-last")
                 for k in steps}  # fmt: skip
        for step, _ in fresh.values():
            for _ in range(3):
                step()
        shipped = [p.detach().contiguous() for p in fresh["shipped"][1].parameters()]
        line = f"{name:7s} training: shipped {times['shipped'] * 1e3:.1f} ms"
        for lever in ("fused Adam", "channels-last"):
            params = [p.detach().contiguous() for p in fresh[lever][1].parameters()]
            same = all(torch.equal(a, b) for a, b in zip(shipped, params, strict=True))
            line += (f"; {lever} {times[lever] / times['shipped']:.2f}x "
                     f"({'bit-identical' if same else 'other bits'})")  # fmt: skip
        print(line, flush=True)
        trained = fresh["shipped"][1].eval()  # batch-norm statistics of a few steps
        runs: dict[str, Callable[[], object]] = {
            "shipped": evaluator(trained, x),
            "BN folded": evaluator(fold_batch_norm(trained), x),
        }
        notes = {}
        if not args.no_compile:
            compiled = torch.compile(copy.deepcopy(trained))
            start = time.perf_counter()
            evaluator(compiled, x)()
            notes["compiled"] = f"first call {time.perf_counter() - start:.1f} s"
            runs["compiled"] = evaluator(compiled, x)
        ort = onnx_runtime(trained, x)
        if isinstance(ort, str):
            notes["ONNX Runtime fp32"] = ort
        else:
            runs["ONNX Runtime fp32"] = ort
        times = medians(runs, max(args.repeats // 2, 3))
        line = f"{name:7s} evaluation of 128 slices: shipped {times['shipped'] * 1e3:.1f} ms"
        for lever in [k for k in runs if k != "shipped"]:
            line += f"; {lever} {times[lever] / times['shipped']:.2f}x"
            if lever in notes:
                line += f" ({notes.pop(lever)})"
        line += "".join(f"; {lever}: {note}" for lever, note in notes.items())
        print(line, flush=True)


if __name__ == "__main__":
    main()
