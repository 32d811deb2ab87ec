"""Dynamic convolution: a per-sample kernel mixed from a bank by attention coefficients.

:class:`DynamicConv2d` only mixes and convolves; the coefficients come from the caller (as in
timm's ``CondConv2d``). :class:`DynamicConvLayer` is the small block that owns an ACP
(:class:`~fedll.models.attention.AttentionCoefficients`) and a :class:`DynamicConv2d`, and keeps
the last forward's coefficients for observation and for the routing regulariser.

Two modes:

* ``"bank"`` (Chen et al., CVPR 2020): K kernels W_k of shape (C_out, C_in, kh, kw); sample b
  gets ``sum_k a[b, k] W_k``; attention (B, K).
* ``"grouped"`` (the poster's DyNet-style variant): per output channel o a group of G fixed
  kernels W[o, g] of shape (C_in, kh, kw); sample b's kernel for channel o is
  ``sum_g a[b, o, g] W[o, g]``; attention (B, C_out, G).

Both aggregate the kernels with one matmul (an einsum for the grouped mode) and run one
grouped convolution over the batch folded into channels, ``x.view(1, B * C_in, H, W)`` with
``groups=B``: no per-sample loop.

Cost on CPU (benchmarks/bench_models.py): a U-Net train step takes about 1.0-1.3x the time of
a static U-Net of equal width. The overhead sits in the low-resolution layers: at 8 x 8 with
128 channels the grouped convolution's backward is ~1.7x a static one, and mixing the kernels
writes B x (kernel size) floats per layer. Channels-last memory and unfold + bmm were slower.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedll.models.attention import AttentionCoefficients
from fedll.models.modality import ModalityBatch, TakesModality
from fedll.models.modality_routing import ModalityCoefficients
from fedll.models.routing import MODES, RoutingSpec, routing_regulariser


class DynamicConv2d(nn.Module):
    """A 2-D convolution whose kernel (and bias) is mixed per sample from a bank.

    Parameters: ``weight_bank`` (K, C_out, C_in, kh, kw) in mode ``"bank"``,
    (C_out, G, C_in, kh, kw) in mode ``"grouped"``; ``bias_bank`` (K, C_out) or (C_out, G) when
    ``bias=True``. Each kernel of the bank is initialised as ``nn.Conv2d`` initialises its one.

    ``forward(x, attention)``: x (B, C_in, H, W), attention (B, K) or (B, C_out, G)
    -> (B, C_out, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        num_kernels: int = 4,
        mode: str = "bank",
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown dynamic mode {mode!r} (known: {MODES})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, kernel_size)
        self.num_kernels = num_kernels
        self.mode = mode
        self.stride = stride
        self.padding = dilation * (kernel_size - 1) // 2 if padding is None else padding
        self.dilation = dilation
        kernel = (in_channels, kernel_size, kernel_size)
        if mode == "bank":
            bank_shape: tuple[int, ...] = (num_kernels, out_channels, *kernel)
            bias_shape: tuple[int, ...] = (num_kernels, out_channels)
        else:
            bank_shape = (out_channels, num_kernels, *kernel)
            bias_shape = (out_channels, num_kernels)
        self.weight_bank = nn.Parameter(torch.empty(bank_shape))
        self.bias_bank = nn.Parameter(torch.empty(bias_shape)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every kernel of the bank like ``nn.Conv2d.reset_parameters``."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            for k in range(self.num_kernels):
                w = self.weight_bank[k] if self.mode == "bank" else self.weight_bank[:, k]
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            if self.bias_bank is not None:
                nn.init.uniform_(self.bias_bank, -bound, bound)

    def mixed_weight(self, attention: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample kernels and biases: (B * C_out, C_in, kh, kw) and (B * C_out,) or None."""
        b = attention.shape[0]
        kernel = (self.in_channels, *self.kernel_size)
        if self.mode == "bank":
            weight = attention @ self.weight_bank.view(self.num_kernels, -1)
            bias = None if self.bias_bank is None else attention @ self.bias_bank
        else:
            bank = self.weight_bank.view(self.out_channels, self.num_kernels, -1)
            weight = torch.einsum("bog,ogn->bon", attention, bank)
            bias = None
            if self.bias_bank is not None:
                bias = (attention * self.bias_bank).sum(-1)
        weight = weight.reshape(b * self.out_channels, *kernel)
        return weight, None if bias is None else bias.reshape(-1)

    def forward(self, x: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        weight, bias = self.mixed_weight(attention.to(x.dtype))
        out = F.conv2d(
            x.reshape(1, b * c, h, w),
            weight,
            bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=b,
        )
        return out.view(b, self.out_channels, out.shape[-2], out.shape[-1])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"mode={self.mode}, num_kernels={self.num_kernels}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias_bank is not None}"
        )


class DynamicConvLayer(TakesModality, nn.Module):
    """A router (``acp``) and a :class:`DynamicConv2d` (``conv``):
    ``conv(x, acp(x, modality).weights)``.

    The router is the ACP (:class:`AttentionCoefficients`, ``spec.routing="learned"``) or, with
    ``"modality-soft"`` / ``"modality-hard"``, a :class:`ModalityCoefficients` that mixes the
    kernels by the case's known modality (it keeps the name ``acp``, so strategies find its
    parameters in the same group).

    After each forward, ``last_attention`` holds a detached copy of the coefficients that
    mixed the kernels, (B, K) or (B, C_out, G), and :meth:`routing_loss` the regulariser,
    weighted by ``spec.routing_loss_weights``, on the soft coefficients of that forward (with
    its graph).

    Args:
        in_channels, out_channels, kernel_size, bias: as for ``nn.Conv2d`` (padding "same").
        num_kernels, mode: see :class:`DynamicConv2d`.
        spec: how the router predicts the coefficients (default :class:`RoutingSpec`'s),
            handed to it unchanged.

    ``forward(x, modality=None)``: (B, C_in, H, W), modality (B,) int64 -> (B, C_out, H, W);
    a modality-routed layer needs ``modality``, a learned one ignores it.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        num_kernels: int = 4,
        mode: str = "bank",
        bias: bool = False,
        spec: RoutingSpec | None = None,
    ) -> None:
        super().__init__()
        spec = spec or RoutingSpec()
        self.spec = spec
        self.acp: AttentionCoefficients | ModalityCoefficients
        if spec.routing == "learned":
            self.acp = AttentionCoefficients(
                in_channels, num_kernels, out_channels=out_channels, mode=mode, spec=spec
            )
        else:
            self.acp = ModalityCoefficients(
                num_kernels, out_channels=out_channels, mode=mode, spec=spec
            )
        self.conv = DynamicConv2d(
            in_channels, out_channels, kernel_size, num_kernels=num_kernels, mode=mode, bias=bias
        )
        self.last_attention: torch.Tensor | None = None
        self._probs: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, modality: torch.Tensor | ModalityBatch | None = None
    ) -> torch.Tensor:
        routing = self.acp(x, modality)
        self.last_attention = routing.weights.detach()
        self._probs = routing.probs if self.spec.routing_loss_weights.active else None
        return self.conv(x, routing.weights)

    def routing_loss(self) -> torch.Tensor | None:
        """The weighted routing regulariser of the last forward, or None if there is none."""
        if self._probs is None:
            return None
        return routing_regulariser(self._probs, self.spec.routing_loss_weights)

    def __getstate__(self) -> dict[str, Any]:
        # The kept soft coefficients are a non-leaf tensor, which deepcopy and pickle refuse.
        state = self.__dict__.copy()
        state["_probs"] = None
        return state
