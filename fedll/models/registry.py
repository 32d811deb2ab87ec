"""Model registry keyed by the names used in scenario YAML, and model-level helpers.

Builders differ only in arguments (as timm's registered model functions do):

* ``"static"``: :class:`~fedll.models.unet.UNet` with plain 3x3 convolutions.
* ``"static-wide"``: the static U-Net whose width gives it the parameter count of a Dy-CNN
  built with the same common kwargs plus ``match_kwargs`` (equal-parameter comparison).
* ``"dycnn"``: every 3x3 convolution dynamic, Chen et al. (CVPR 2020), attention (B, K).
* ``"dycnn-grouped"``: the poster's DyNet-style variant, attention (B, C_out, G).

The helpers below work on any model: :func:`parameter_groups` tells strategies which state
keys are kernel banks, ACP, normalisation, integer counters or other, and
:func:`kernel_banks` which layer's attention mixes each bank; :func:`last_attention`
and :func:`routing_loss` read the last forward; :func:`advance_schedule` steps the temperature.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from fedll.errors import ConfigError
from fedll.models.attention import AttentionCoefficients, RoutingLossWeights
from fedll.models.dynamic_conv import DynamicConv2d, DynamicConvLayer
from fedll.models.unet import UNet, count_parameters, equal_param_width, static_conv

logger = logging.getLogger(__name__)

PARAMETER_GROUPS: tuple[str, ...] = ("kernel_bank", "acp", "norm", "counter", "other")


def static_unet(
    *,
    in_channels: int = 1,
    out_channels: int = 1,
    depth: int = 3,
    base_width: int = 16,
    norm: str = "batch",
    match_model: str | None = None,
    match_kwargs: Mapping[str, Any] | None = None,
    head_prior: float | None = None,
) -> UNet:
    """A static U-Net; with ``match_model``, as wide as needed to match that model's size.

    With ``match_model`` (e.g. ``"dycnn"``), ``base_width`` is the width of the matched model,
    built from the same common kwargs plus ``match_kwargs``, and the static width is
    :func:`~fedll.models.unet.equal_param_width` of its parameter count.
    """
    common = dict(in_channels=in_channels, out_channels=out_channels, depth=depth, norm=norm)
    if match_model is not None:
        clash = sorted(set(match_kwargs or {}) & {"base_width", *common})
        if clash:
            raise ConfigError(f"model.match_kwargs: {clash} are common keys; set them on model")
        with torch.device("meta"):
            reference = build_model(
                match_model, base_width=base_width, **common, **(match_kwargs or {})
            )
        target = count_parameters(reference)
        base_width = equal_param_width(target, **common)
        logger.info(
            "static U-Net width %d matches %s (%d parameters)", base_width, match_model, target
        )
    elif match_kwargs:
        raise ConfigError("model.match_kwargs: given without model.match_model")
    return UNet(static_conv, base_width=base_width, head_prior=head_prior, **common)


def dynamic_unet(
    *,
    mode: str = "bank",
    in_channels: int = 1,
    out_channels: int = 1,
    depth: int = 3,
    base_width: int = 16,
    norm: str = "batch",
    num_kernels: int = 4,
    acp_stats: Sequence[str] | str = ("mean",),
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    hidden_ratio: float = 0.25,
    min_hidden: int = 4,
    temperature_start: float = 30.0,
    temperature_end: float = 1.0,
    anneal_steps: int = 100,
    top_k: int | None = None,
    routing_loss_weights: Mapping[str, float] | RoutingLossWeights | None = None,
    first_layer_static: bool = False,
    head_prior: float | None = None,
) -> UNet:
    """A U-Net whose 3x3 convolutions are :class:`DynamicConvLayer` s (the 1x1 head is static).

    ``mode="bank"``: K = ``num_kernels`` kernels per layer (Chen et al. 2020);
    ``mode="grouped"``: G = ``num_kernels`` fixed kernels per output channel. The remaining
    arguments configure the ACP (see :class:`AttentionCoefficients`);
    ``routing_loss_weights`` is ``{"confidence": w, "balance": w}`` (missing keys are 0);
    ``first_layer_static`` keeps the very first convolution static; ``head_prior`` see
    :class:`~fedll.models.unet.UNet`.
    """
    conv = partial(
        DynamicConvLayer,
        kernel_size=3,
        num_kernels=num_kernels,
        mode=mode,
        routing_loss_weights=_routing_loss_weights(routing_loss_weights),
        stats=(acp_stats,) if isinstance(acp_stats, str) else tuple(acp_stats),
        quantiles=tuple(quantiles),
        hidden_ratio=hidden_ratio,
        min_hidden=min_hidden,
        temperature_start=temperature_start,
        temperature_end=temperature_end,
        anneal_steps=anneal_steps,
        top_k=top_k,
    )
    return UNet(
        conv,
        in_channels=in_channels,
        out_channels=out_channels,
        depth=depth,
        base_width=base_width,
        norm=norm,
        first_conv=static_conv if first_layer_static else None,
        head_prior=head_prior,
    )


def _routing_loss_weights(
    value: Mapping[str, float] | RoutingLossWeights | None,
) -> RoutingLossWeights:
    if value is None or isinstance(value, RoutingLossWeights):
        return value or RoutingLossWeights()
    known = ("confidence", "balance")
    if not isinstance(value, Mapping) or any(key not in known for key in value):
        raise ConfigError(
            f"model.routing_loss_weights: expected a mapping with keys {known}, got {value!r}"
        )
    return RoutingLossWeights(**{key: float(w) for key, w in value.items()})


_BUILDERS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {
        "static": static_unet,
        "static-wide": partial(static_unet, match_model="dycnn"),
        "dycnn": partial(dynamic_unet, mode="bank"),
        "dycnn-grouped": partial(dynamic_unet, mode="grouped"),
    }
)


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_BUILDERS)


def build_model(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with builder ``kwargs`` (the YAML ``model:`` keys).

    Every model maps (B, in_channels, H, W) float -> (B, out_channels, H, W) logits. With
    ``seed``, the initial weights are drawn from a generator seeded by it (the global RNG state
    is left unchanged); without it, from the global RNG. Unknown names or keys raise
    :class:`~fedll.errors.ConfigError`.
    """
    if name not in _BUILDERS:
        raise ConfigError(f"model.name: unknown model {name!r} (known: {model_names()})")
    builder = _BUILDERS[name]
    fixed = getattr(builder, "keywords", {})
    allowed = [key for key in inspect.signature(builder).parameters if key not in fixed]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"model: unknown key(s) {unknown} for {name!r} (allowed: {allowed})")
    if seed is None:
        return builder(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(**kwargs)


def parameter_groups(model: nn.Module) -> dict[str, str]:
    """Map every ``state_dict`` key of ``model`` to its group.

    ``"kernel_bank"``: dynamic kernel (and bias) banks; ``"acp"``: attention-coefficient
    prediction weights; ``"norm"``: normalisation affine parameters and running statistics;
    ``"counter"``: integer buffers (``num_batches_tracked``, the annealing ``anneal_step``),
    which strategies should take the max of, never average; ``"other"``: everything else
    (static convolutions, the head).
    """
    groups: dict[str, str] = {}
    for key, value in model.state_dict().items():
        if not (value.is_floating_point() or value.is_complex()):
            groups[key] = "counter"
            continue
        groups[key] = "other"
        path = key.split(".")[:-1]
        for depth in range(len(path), -1, -1):  # the nearest enclosing module that has a group
            group = _module_group(model.get_submodule(".".join(path[:depth])))
            if group is not None:
                groups[key] = group
                break
    return groups


def _module_group(module: nn.Module) -> str | None:
    if isinstance(module, DynamicConv2d):
        return "kernel_bank"
    if isinstance(module, AttentionCoefficients):
        return "acp"
    if isinstance(module, (_NormBase, nn.GroupNorm, nn.LayerNorm)):
        return "norm"
    return None


def kernel_banks(model: nn.Module) -> dict[str, tuple[str, tuple[int, ...]]]:
    """State key of every dynamic kernel (and bias) bank -> (the :class:`DynamicConvLayer`
    whose attention mixes it, that attention's shape per sample).

    The attention shape is the bank's leading axes: (K,) in mode ``"bank"``, (C_out, G) in mode
    ``"grouped"``; the layer name is the key of :func:`last_attention`.
    """
    banks: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, layer in _dynamic_layers(model):
        conv = layer.conv
        shape = (
            (conv.num_kernels,) if conv.mode == "bank" else (conv.out_channels, conv.num_kernels)
        )
        prefix = f"{name}.conv." if name else "conv."
        for param, value in conv.named_parameters(recurse=False):
            if value is not None:
                banks[prefix + param] = (name, shape)
    return banks


def _dynamic_layers(model: nn.Module) -> list[tuple[str, DynamicConvLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DynamicConvLayer)]


def last_attention(model: nn.Module) -> dict[str, torch.Tensor]:
    """Layer name -> detached coefficients of the last forward, (B, K) or (B, C_out, G).

    Empty for static models and before the first forward.
    """
    return {
        name: layer.last_attention
        for name, layer in _dynamic_layers(model)
        if layer.last_attention is not None
    }


def routing_loss(model: nn.Module) -> torch.Tensor:
    """The weighted routing regulariser summed over dynamic layers, from the last forward.

    A scalar with the forward's graph; 0 for static models or when its weights are 0.
    """
    losses = [
        loss for _, layer in _dynamic_layers(model) if (loss := layer.routing_loss()) is not None
    ]
    if losses:
        return torch.stack(losses).sum()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros((), device=device)


def advance_schedule(model: nn.Module, steps: int = 1) -> None:
    """Advance every ACP's temperature annealing; call once per optimiser step.

    The step count lives in each ACP's ``anneal_step`` buffer (state-dict group "counter"),
    so it travels with the model: a lifelong or federated run anneals once over its first
    ``anneal_steps`` optimiser steps, not again at each arrival (aggregate counters with max).
    """
    for module in model.modules():
        if isinstance(module, AttentionCoefficients):
            module.advance(steps)


def current_temperature(model: nn.Module) -> float | None:
    """The softmax temperature of the model's first ACP (all share one schedule), or None."""
    for module in model.modules():
        if isinstance(module, AttentionCoefficients):
            return module.temperature
    return None
