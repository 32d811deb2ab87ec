"""Static and dynamic-convolution U-Nets for whole-tumour segmentation.

- :mod:`~fedll.models.dynamic_conv`: :class:`DynamicConv2d` (mixes a kernel bank per sample)
  and :class:`DynamicConvLayer` (an ACP plus a dynamic conv);
- :mod:`~fedll.models.attention`: the ACP (:class:`AttentionCoefficients`), its statistics
  and hard (top-k) routing;
- :mod:`~fedll.models.modality_routing`: routing by the case's known modality
  (:class:`ModalityCoefficients`);
- :mod:`~fedll.models.routing`: what every router shares: the routings, the prediction
  (:class:`Routing`) and the routing regulariser;
- :mod:`~fedll.models.temperature`: the annealed softmax temperature;
- :mod:`~fedll.models.unet`: one :class:`UNet` built from a 3x3 convolution factory;
- :mod:`~fedll.models.norms`: its normalisation layers, optionally one per modality
  (:class:`ModalityNorm`); :mod:`~fedll.models.modality`: each sample's modality, looked up
  once per forward, for the layers that take it;
- :mod:`~fedll.models.registry`: the builders by their YAML names (``build_model``,
  ``model_names``) and argument validation (``check_arguments``);
- :mod:`~fedll.models.inspection`: what strategies and training read off any model.
"""

from __future__ import annotations

from fedll.models.attention import AttentionCoefficients, pooled_statistics, straight_through_top_k
from fedll.models.dynamic_conv import DynamicConv2d, DynamicConvLayer
from fedll.models.inspection import (
    PARAMETER_GROUPS,
    ModelLayout,
    advance_schedule,
    current_temperature,
    freeze_routing,
    kernel_banks,
    last_attention,
    parameter_groups,
    routes_by_modality,
    routing_loss,
)
from fedll.models.modality_routing import ModalityCoefficients
from fedll.models.norms import NORMS, ModalityNorm
from fedll.models.registry import (
    ArgumentError,
    build_model,
    check_arguments,
    dynamic_unet,
    model_names,
    static_unet,
)
from fedll.models.routing import (
    ACP_STATS,
    ROUTINGS,
    Routing,
    RoutingLossWeights,
    routing_regulariser,
)
from fedll.models.temperature import temperature_at
from fedll.models.unet import (
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
    "ROUTINGS",
    "ArgumentError",
    "AttentionCoefficients",
    "ConvFactory",
    "DynamicConv2d",
    "DynamicConvLayer",
    "ModalityCoefficients",
    "ModalityNorm",
    "ModelLayout",
    "Routing",
    "RoutingLossWeights",
    "UNet",
    "advance_schedule",
    "build_model",
    "check_arguments",
    "count_parameters",
    "current_temperature",
    "dynamic_unet",
    "equal_param_width",
    "freeze_routing",
    "kernel_banks",
    "last_attention",
    "model_names",
    "parameter_groups",
    "pooled_statistics",
    "routes_by_modality",
    "routing_loss",
    "routing_regulariser",
    "static_conv",
    "static_unet",
    "static_unet_parameters",
    "straight_through_top_k",
    "temperature_at",
]
