"""Static and dynamic-convolution U-Nets for whole-tumour segmentation.

``build_model(name, **kwargs)`` builds a registered model (``model_names()``); the helpers
read and steer dynamic layers on any model. See :mod:`fedll.models.registry`.
"""

from __future__ import annotations

from fedll.models.attention import (
    ACP_STATS,
    AttentionCoefficients,
    Routing,
    RoutingLossWeights,
    pooled_statistics,
    routing_regulariser,
    straight_through_top_k,
    temperature_at,
)
from fedll.models.dynamic_conv import DynamicConv2d, DynamicConvLayer
from fedll.models.registry import (
    PARAMETER_GROUPS,
    advance_schedule,
    build_model,
    current_temperature,
    dynamic_unet,
    kernel_banks,
    last_attention,
    model_names,
    parameter_groups,
    routing_loss,
    static_unet,
)
from fedll.models.unet import (
    NORMS,
    ConvFactory,
    UNet,
    count_parameters,
    equal_param_width,
    static_conv,
    static_unet_parameters,
)

__all__ = [
    "ACP_STATS",
    "NORMS",
    "PARAMETER_GROUPS",
    "AttentionCoefficients",
    "ConvFactory",
    "DynamicConv2d",
    "DynamicConvLayer",
    "Routing",
    "RoutingLossWeights",
    "UNet",
    "advance_schedule",
    "build_model",
    "count_parameters",
    "current_temperature",
    "dynamic_unet",
    "equal_param_width",
    "kernel_banks",
    "last_attention",
    "model_names",
    "parameter_groups",
    "pooled_statistics",
    "routing_loss",
    "routing_regulariser",
    "static_conv",
    "static_unet",
    "static_unet_parameters",
    "straight_through_top_k",
    "temperature_at",
]
