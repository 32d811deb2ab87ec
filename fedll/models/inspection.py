"""What strategies, training and reports read off any model: parameter groups, kernel banks,
the last forward's attention and routing loss, and the temperature schedule.

:func:`parameter_groups` tells strategies which state keys are kernel banks, ACP,
normalisation, integer counters or other; :func:`kernel_banks` which layer's attention mixes
each bank (:class:`ModelLayout` bundles both with the trainable keys);
:func:`last_attention` and :func:`routing_loss` read the last forward;
:func:`advance_schedule` steps the temperature; :func:`routes_by_modality` says whether the
model's forward needs each sample's modality, :func:`freeze_routing` stops its routing
parameters training after the round the model was built to freeze them at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from fedll.models.attention import AttentionCoefficients
from fedll.models.dynamic_conv import DynamicConv2d, DynamicConvLayer
from fedll.models.modality_routing import ModalityCoefficients
from fedll.models.norms import ModalityNorm

_ROUTERS = (AttentionCoefficients, ModalityCoefficients)

PARAMETER_GROUPS: tuple[str, ...] = ("kernel_bank", "acp", "norm", "counter", "other")


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
    if isinstance(module, _ROUTERS):
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


@dataclass(frozen=True)
class ModelLayout:
    """What strategies need to know about a model's state keys.

    groups: key -> parameter group (:func:`parameter_groups`);
    banks: kernel-bank key -> (the dynamic layer whose attention mixes it, that attention's
    shape per sample) (:func:`kernel_banks`);
    trainable: the keys that are parameters (not buffers such as running statistics).
    """

    groups: Mapping[str, str]
    banks: Mapping[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    trainable: frozenset[str] = frozenset()

    @classmethod
    def of(cls, model: nn.Module) -> ModelLayout:
        return cls(
            groups=parameter_groups(model),
            banks=kernel_banks(model),
            trainable=frozenset(name for name, _ in model.named_parameters()),
        )


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
        if isinstance(module, _ROUTERS):
            module.advance(steps)


def current_temperature(model: nn.Module) -> float | None:
    """The softmax temperature of the model's first ACP (all share one schedule), or None."""
    for module in model.modules():
        if isinstance(module, _ROUTERS):
            return module.temperature
    return None


def routes_by_modality(model: nn.Module) -> bool:
    """Whether a dynamic layer of ``model`` mixes its kernels, or a normalisation layer
    normalises, by the case's modality (then its forward needs ``modality``)."""
    return any(isinstance(m, (ModalityCoefficients, ModalityNorm)) for m in model.modules())


def freeze_routing(model: nn.Module, server_round: int) -> list[str]:
    """Stop the routing parameters (the ACP's, or the per-modality logits) of every dynamic
    layer whose spec has ``freeze_routing_after`` = R from training when ``server_round`` > R:
    they no longer require gradients, so an optimiser leaves them as they are (PyTorch's
    optimisers skip parameters without a gradient, weight decay included). Returns the names
    of the parameters frozen. The temperature schedule (a buffer) still advances."""
    frozen = []
    for name, module in model.named_modules():
        if not isinstance(module, _ROUTERS):
            continue
        last_round = module.spec.freeze_routing_after
        if last_round is not None and server_round > last_round:
            for param_name, param in module.named_parameters():
                param.requires_grad_(False)
                frozen.append(f"{name}.{param_name}" if name else param_name)
    return frozen
