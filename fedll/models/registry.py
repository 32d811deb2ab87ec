"""Model registry keyed by the names used in scenario YAML.

Builders differ only in arguments (as timm's registered model functions do):

* ``"static"``: :class:`~fedll.models.unet.UNet` with plain 3x3 convolutions.
* ``"static-wide"``: the static U-Net whose width gives it the parameter count of a Dy-CNN
  built with the same common kwargs plus ``match_kwargs`` (equal-parameter comparison).
* ``"dycnn"``: every 3x3 convolution dynamic, Chen et al. (CVPR 2020), attention (B, K).
* ``"dycnn-grouped"``: the poster's DyNet-style variant, attention (B, C_out, G).

A builder's signature is its schema: :func:`check_arguments` validates YAML arguments against
its annotations (types and the ranges given as ``Field`` constraints), then runs the builder
on the meta device (no memory, no random draws) so that its own cross-argument checks run
too. Every problem is an :class:`ArgumentError` naming the argument; the scenario schema turns
it into a config error naming ``models.<key>.<argument>``. Layers know nothing of config files:
they raise ``ValueError`` whose message starts with the argument's name.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import Annotated, Any, Literal

import pydantic
import torch
from pydantic import ConfigDict, Field
from torch import nn

from fedll.data import MODALITIES
from fedll.models.arguments import ArgumentError
from fedll.models.dynamic_conv import DynamicConvLayer
from fedll.models.inspection import routes_by_modality
from fedll.models.norms import NORMS
from fedll.models.routing import ACP_STATS, ROUTINGS, RoutingLossWeights, RoutingSpec
from fedll.models.unet import UNet, count_parameters, equal_param_width, static_conv

logger = logging.getLogger(__name__)

Positive = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(gt=0, lt=1)]
Norm = Literal[NORMS]  # type: ignore[valid-type]
Statistic = Literal[ACP_STATS]  # type: ignore[valid-type]
RoutingName = Literal[ROUTINGS]  # type: ignore[valid-type]
Level = Annotated[float, Field(ge=0, le=1)]
RoutingWeights = Mapping[Literal["confidence", "balance"], float]


def static_unet(
    *,
    in_channels: Positive = 1,
    out_channels: Positive = 1,
    depth: NonNegative = 3,
    base_width: Positive = 16,
    norm: Norm = "batch",
    match_model: str | None = None,
    match_kwargs: Mapping[str, Any] | None = None,
    head_prior: Probability | None = None,
    norm_by_modality: bool = False,
) -> UNet:
    """A static U-Net; with ``match_model``, as wide as needed to match that model's size.

    With ``match_model`` (e.g. ``"dycnn"``), ``base_width`` is the width of the matched model,
    built from the same common kwargs plus ``match_kwargs``, and the static width is
    :func:`~fedll.models.unet.equal_param_width` of its parameter count (of a model with one
    normalisation layer each). ``norm_by_modality``: one normalisation layer per modality
    (:class:`~fedll.models.norms.ModalityNorm`; the forward then needs ``modality``).
    """
    common = dict(in_channels=in_channels, out_channels=out_channels, depth=depth, norm=norm)
    if match_model is not None:
        common_given = sorted(set(match_kwargs or {}) & {"base_width", *common})
        if common_given:
            raise ArgumentError(
                "match_kwargs", f"{common_given} are common keys; set them on the model"
            )
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
        raise ArgumentError("match_kwargs", "given without match_model")
    return UNet(
        static_conv,
        base_width=base_width,
        head_prior=head_prior,
        norm_modalities=len(MODALITIES) if norm_by_modality else None,
        **common,
    )


def dynamic_unet(
    *,
    mode: Literal["bank", "grouped"] = "bank",
    in_channels: Positive = 1,
    out_channels: Positive = 1,
    depth: NonNegative = 3,
    base_width: Positive = 16,
    norm: Norm = "batch",
    num_kernels: Positive = 4,
    acp_stats: Sequence[Statistic] | Statistic = RoutingSpec.acp_stats,
    quantiles: Sequence[Level] = RoutingSpec.quantiles,
    hidden_ratio: PositiveFloat = RoutingSpec.hidden_ratio,
    min_hidden: Positive = RoutingSpec.min_hidden,
    temperature_start: PositiveFloat = RoutingSpec.temperature_start,
    temperature_end: PositiveFloat = RoutingSpec.temperature_end,
    anneal_steps: NonNegative = RoutingSpec.anneal_steps,
    top_k: Positive | None = RoutingSpec.top_k,
    routing_loss_weights: RoutingWeights | RoutingLossWeights | None = None,
    first_layer_static: bool = False,
    head_prior: Probability | None = None,
    routing: RoutingName = RoutingSpec.routing,
    freeze_routing_after: NonNegative | None = RoutingSpec.freeze_routing_after,
    norm_by_modality: bool = False,
) -> UNet:
    """A U-Net whose 3x3 convolutions are :class:`DynamicConvLayer` s (the 1x1 head is static).

    ``mode="bank"``: K = ``num_kernels`` kernels per layer (Chen et al. 2020); ``"grouped"``:
    G = ``num_kernels`` fixed kernels per output channel. ``acp_stats`` to ``top_k``,
    ``routing_loss_weights`` (``{"confidence": w, "balance": w}``, missing keys 0), ``routing``
    and ``freeze_routing_after`` make the one :class:`~fedll.models.routing.RoutingSpec` every
    layer shares (their meaning and defaults are its). ``first_layer_static``: the very first
    convolution static; ``head_prior``: see :class:`~fedll.models.unet.UNet`;
    ``norm_by_modality``: one normalisation layer per modality (:class:`ModalityNorm`; with
    ``modality-hard`` the modalities then share only the 1x1 head). With modality routing or
    ``norm_by_modality`` the forward needs ``modality``.
    """
    spec = RoutingSpec(
        routing=routing,
        acp_stats=(acp_stats,) if isinstance(acp_stats, str) else tuple(acp_stats),
        quantiles=tuple(quantiles),
        hidden_ratio=hidden_ratio,
        min_hidden=min_hidden,
        top_k=top_k,
        temperature_start=temperature_start,
        temperature_end=temperature_end,
        anneal_steps=anneal_steps,
        routing_loss_weights=RoutingLossWeights.of(routing_loss_weights),
        freeze_routing_after=freeze_routing_after,
    )
    return UNet(
        partial(DynamicConvLayer, kernel_size=3, num_kernels=num_kernels, mode=mode, spec=spec),
        in_channels=in_channels,
        out_channels=out_channels,
        depth=depth,
        base_width=base_width,
        norm=norm,
        first_conv=static_conv if first_layer_static else None,
        head_prior=head_prior,
        norm_modalities=len(MODALITIES) if norm_by_modality else None,
    )


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


def check_arguments(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`ArgumentError` unless ``build_model(name, **kwargs)`` would build.

    Unknown arguments, wrong types and values outside the ranges of the builder's signature
    name their argument; then the builder runs on the meta device (nothing is allocated, no
    random number is drawn), so its cross-argument checks and the layers' checks run too.
    """
    builder = _builder(name)
    parameters = _parameters(builder)
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ArgumentError(unknown[0], f"unknown argument of {name!r} (known: {list(parameters)})")
    hints = typing.get_type_hints(getattr(builder, "func", builder), include_extras=True)
    fields: dict[str, Any] = {key: (hints[key], p.default) for key, p in parameters.items()}
    schema = pydantic.create_model(  # type: ignore[call-overload]
        f"{name} arguments",
        __config__=ConfigDict(strict=True, allow_inf_nan=False, arbitrary_types_allowed=True),
        **fields,
    )
    try:
        schema.model_validate(dict(kwargs))
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        loc = first["loc"]
        raise ArgumentError(str(loc[0]) if loc else None, first["msg"]) from None
    try:
        with torch.device("meta"), torch.random.fork_rng(devices=[]):
            builder(**kwargs)
    except ArgumentError:
        raise
    except ValueError as error:  # a layer's check: its message starts with the argument
        argument, sep, message = str(error).partition(": ")
        if sep and argument in parameters:
            raise ArgumentError(argument, message) from None
        raise ArgumentError(None, str(error)) from None


def footprint(name: str, kwargs: Mapping[str, Any], batch: int, size: int) -> tuple[int, int]:
    """(parameters, activation bytes of a float32 training batch) of ``build_model(name,
    **kwargs)`` on ``batch`` slices of ``size`` x ``size``, measured on the meta device: the
    model is built and run forward without memory or arithmetic; the activations are the
    outputs of every module that has no children (what autograd keeps for the backward).

    Every scenario parse checks it (a trial's worker parses its scenario again): the answer
    is remembered per (name, arguments, batch, size) when the arguments are plain data."""
    try:
        arguments = json.dumps(dict(kwargs), sort_keys=True)
    except TypeError:  # not plain data (a builder's own objects): measured every time
        return _measure(name, kwargs, batch, size)
    return _remembered(name, arguments, batch, size)


@functools.lru_cache(maxsize=128)
def _remembered(name: str, arguments: str, batch: int, size: int) -> tuple[int, int]:
    return _measure(name, json.loads(arguments), batch, size)


def _measure(name: str, kwargs: Mapping[str, Any], batch: int, size: int) -> tuple[int, int]:
    activation_bytes = 0

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal activation_bytes
        if isinstance(output, torch.Tensor):
            activation_bytes += output.numel() * output.element_size()

    builder = _builder(name)
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        model = builder(**kwargs)
        hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        x = torch.empty(batch, int(kwargs.get("in_channels", 1)), size, size)
        modality = torch.zeros(batch, dtype=torch.long) if routes_by_modality(model) else None
        model(x, modality)
        for hook in hooks:
            hook.remove()
    return count_parameters(model), activation_bytes


def build_model(name: str, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with builder ``kwargs`` (the YAML ``model:`` keys).

    Every model maps (B, in_channels, H, W) float -> (B, out_channels, H, W) logits. With
    ``seed``, the initial weights are drawn from a generator seeded by it (the global RNG state
    is left unchanged); without it, from the global RNG. Unknown names or arguments raise
    :class:`ArgumentError` (see :func:`check_arguments` to validate without building).
    """
    builder = _builder(name)
    unknown = sorted(set(kwargs) - set(_parameters(builder)))
    if unknown:
        raise ArgumentError(
            unknown[0], f"unknown argument of {name!r} (known: {list(_parameters(builder))})"
        )
    if seed is None:
        return builder(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(**kwargs)


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in _BUILDERS:
        raise ArgumentError("name", f"unknown model {name!r} (known: {', '.join(model_names())})")
    return _BUILDERS[name]


def _parameters(builder: Callable[..., nn.Module]) -> dict[str, inspect.Parameter]:
    """The builder's keyword arguments, less those its registration fixes (``partial``)."""
    fixed_by_name = getattr(builder, "keywords", {})
    parameters = inspect.signature(builder).parameters
    return {k: p for k, p in parameters.items() if k not in fixed_by_name}
