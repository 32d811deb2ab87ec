"""One 2-D U-Net (Ronneberger et al. 2015) built from a 3x3 convolution factory.

Static and dynamic-convolution U-Nets are the same :class:`UNet` with a different ``conv``
factory (as MONAI's ``BasicUNet`` takes its layers from factories): the factory makes every
3x3 convolution; pooling, upsampling (parameter-free, bilinear), normalisation, activations and
the final 1x1 head are the same in both.

Shapes: (B, C_in, H, W) -> (B, C_out, H, W) for any H, W >= 1. Max pooling uses
``ceil_mode=True`` and the decoder upsamples each feature map to its skip connection's exact
size, so odd sizes (e.g. 37 x 45) need no padding.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedll.models.modality import ModalityBatch, TakesModality
from fedll.models.norms import NORMS, NormSpec


class ConvFactory(Protocol):
    """Makes a 3x3, stride-1, "same"-padded convolution module: (B, in, H, W) -> (B, out, H, W)."""

    def __call__(self, in_channels: int, out_channels: int, *, bias: bool) -> nn.Module: ...


static_conv: ConvFactory = partial(nn.Conv2d, kernel_size=3, padding=1)
"""The plain 3x3 convolution factory."""


class TwoConv(nn.Sequential):
    """(conv 3x3 -> norm -> ReLU) x 2: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        conv: ConvFactory,
        norm: NormSpec,
        first_conv: ConvFactory | None = None,
    ) -> None:
        bias = norm.conv_bias
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv1"] = (first_conv or conv)(in_channels, out_channels, bias=bias)
        layers["norm1"] = norm.layer(out_channels)
        layers["act1"] = nn.ReLU(inplace=True)
        layers["conv2"] = conv(out_channels, out_channels, bias=bias)
        layers["norm2"] = norm.layer(out_channels)
        layers["act2"] = nn.ReLU(inplace=True)
        super().__init__(layers)

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None = None
    ) -> torch.Tensor:
        for layer in self:
            x = layer(x, modality) if isinstance(layer, TakesModality) else layer(x)
        return x


class MaxPool(nn.MaxPool2d):
    """2x2 max pooling (ceil mode). Without autograd on the CPU it pools a channels-last copy
    of a contiguous (NCHW) input and gives the result back contiguous: max pooling is exact, so
    the values are the same, and torch's CPU inference kernel for NCHW inputs is several times
    slower than its channels-last one (at 48 px, 128 slices and 8 channels: 19 ms against 7 ms
    with both copies; benchmarks/bench_arithmetic.py)."""

    def __init__(self) -> None:
        super().__init__(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = torch.channels_last
        if x.device.type != "cpu" or torch.is_grad_enabled() or x.dim() != 4:
            return super().forward(x)
        if x.is_contiguous(memory_format=channels_last):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=channels_last)).contiguous()


class Down(nn.Module):
    """2x2 max pooling (ceil mode), :class:`TwoConv`: (B, in, H, W) -> (B, out, ⌈H/2⌉, ⌈W/2⌉)."""

    def __init__(
        self, in_channels: int, out_channels: int, conv: ConvFactory, norm: NormSpec
    ) -> None:
        super().__init__()
        self.pool = MaxPool()
        self.convs = TwoConv(in_channels, out_channels, conv, norm)

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None = None
    ) -> torch.Tensor:
        return self.convs(self.pool(x), modality)


class UpCat(nn.Module):
    """Bilinear upsampling to the skip's size, concatenation, :class:`TwoConv`.

    ``forward(x, skip, modality=None)``: x (B, in, h, w), skip (B, skip, H, W)
    -> (B, out, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        conv: ConvFactory,
        norm: NormSpec,
    ) -> None:
        super().__init__()
        self.convs = TwoConv(in_channels + skip_channels, out_channels, conv, norm)

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor,
        modality: torch.Tensor | ModalityBatch | None = None,
    ) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([skip, x], dim=1), modality)


class UNet(nn.Module):
    """Encoder-decoder with skip connections; every 3x3 convolution comes from ``conv``.

    Widths are ``base_width * 2**level`` for levels 0..depth (the bottleneck at ``depth``).

    Args:
        conv: the 3x3 convolution factory (static or dynamic).
        in_channels, out_channels: image channels in, logit channels out.
        depth: the number of 2x down-samplings.
        base_width: channels at full resolution.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"`` (then convs have a bias).
        first_conv: factory for the very first convolution only (e.g. static in a Dy-CNN,
            where the pooled statistics of a z-scored slice carry little information).
        head_prior: if given, the head's bias starts at ``log(p / (1 - p))`` for this foreground
            probability ``p`` (the prior initialisation of Lin et al. 2017), instead of
            ``nn.Conv2d``'s uniform draw. The head reads post-ReLU (non-negative) features, so
            its logit is at most its bias wherever every head weight is <= 0; with a default
            draw whose weights are all about <= 0 (rare, e.g. ``dycnn`` seed 2 at width 8), the
            background-dominated loss keeps them negative and lowers the bias, and the model
            never predicts foreground (Dice 0). Starting near the prior removes that push.
        norm_modalities: if given, every normalisation layer is a :class:`ModalityNorm` of
            that many modalities (one layer each, picked by the sample's modality).

    ``forward(x, modality=None)``: (B, in_channels, H, W) -> (B, out_channels, H, W) logits;
    ``modality`` (B,) int64 (indices into :data:`fedll.data.MODALITIES`) reaches every
    layer that takes it (:class:`TakesModality`: convolutions, per-modality normalisation); a
    U-Net whose layers route or normalise by modality needs it, the others ignore it.
    """

    def __init__(
        self,
        conv: ConvFactory,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 3,
        base_width: int = 16,
        norm: str = "batch",
        first_conv: ConvFactory | None = None,
        head_prior: float | None = None,
        norm_modalities: int | None = None,
    ) -> None:
        super().__init__()
        if head_prior is not None and not 0.0 < head_prior < 1.0:
            raise ValueError(f"head_prior: must be in (0, 1), got {head_prior}")
        if depth < 0:
            raise ValueError(f"depth: must be >= 0, got {depth}")
        if base_width < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(
                "base_width/in_channels/out_channels: must be >= 1, got "
                f"{base_width}, {in_channels}, {out_channels}"
            )
        if norm not in NORMS:
            raise ValueError(f"norm: unknown normalisation {norm!r} (known: {NORMS})")
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.depth = depth
        norm_spec = NormSpec(norm, norm_modalities)
        self.stem = TwoConv(in_channels, widths[0], conv, norm_spec, first_conv)
        self.down = nn.ModuleList(
            Down(widths[level], widths[level + 1], conv, norm_spec) for level in range(depth)
        )
        self.up = nn.ModuleList(
            UpCat(widths[level + 1], widths[level], widths[level], conv, norm_spec)
            for level in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        if head_prior is not None:
            assert self.head.bias is not None
            nn.init.constant_(self.head.bias, math.log(head_prior / (1.0 - head_prior)))

    def forward(self, x: torch.Tensor, modality: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(modality, torch.Tensor):  # looked up once, for every layer that takes it
            modality = ModalityBatch.of(modality, x.device)
        skips = [self.stem(x, modality)]
        for down in self.down:
            skips.append(down(skips[-1], modality))
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop(), modality)
        return self.head(y)


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def static_unet_parameters(
    base_width: int,
    *,
    in_channels: int = 1,
    out_channels: int = 1,
    depth: int = 3,
    norm: str = "batch",
) -> int:
    """Parameter count of a static :class:`UNet`, in closed form (no model is built)."""
    affine = 0 if norm == "none" else 2  # norm weight + bias, or conv bias (counted below)
    bias = 1 if norm == "none" else 0
    total = 0

    def two_conv(cin: int, cout: int) -> int:
        return (cin * 9 + bias + affine) * cout + (cout * 9 + bias + affine) * cout

    widths = [base_width * 2**level for level in range(depth + 1)]
    total += two_conv(in_channels, widths[0])
    for level in range(depth):
        total += two_conv(widths[level], widths[level + 1])
        total += two_conv(widths[level + 1] + widths[level], widths[level])
    total += widths[0] * out_channels + out_channels
    return total


def equal_param_width(
    target_parameters: int,
    *,
    in_channels: int = 1,
    out_channels: int = 1,
    depth: int = 3,
    norm: str = "batch",
) -> int:
    """The static :class:`UNet` ``base_width`` whose parameter count is closest to the target.

    For equal-parameter comparisons (a static U-Net as large as a Dy-CNN); ties go to the
    smaller width.
    """

    def count(width: int) -> int:
        return static_unet_parameters(
            width, in_channels=in_channels, out_channels=out_channels, depth=depth, norm=norm
        )

    # The count grows roughly with width**2 * 4**depth: start near that and walk.
    per_width2 = max(count(1), 1)
    width = max(1, int(math.sqrt(target_parameters / per_width2)))
    while width > 1 and count(width) > target_parameters:
        width -= 1
    while count(width + 1) <= target_parameters:
        width += 1
    below, above = width, width + 1
    if abs(count(above) - target_parameters) < abs(count(below) - target_parameters):
        return above
    return below
