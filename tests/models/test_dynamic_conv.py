from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedll.models.dynamic_conv import DynamicConv2d, DynamicConvLayer
from fedll.models.routing import RoutingLossWeights, RoutingSpec


def per_sample_reference(layer: DynamicConvLayer, x: torch.Tensor) -> torch.Tensor:
    """Each sample alone: its own ACP pass, its own mixed kernel, one F.conv2d."""
    conv = layer.conv
    outs = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        a = layer.acp(xi).weights[0]  # (K,) or (C_out, G)
        if conv.mode == "bank":
            w = (a[:, None, None, None, None] * conv.weight_bank).sum(0)
            b = None if conv.bias_bank is None else (a[:, None] * conv.bias_bank).sum(0)
        else:
            w = (a[:, :, None, None, None] * conv.weight_bank).sum(1)
            b = None if conv.bias_bank is None else (a * conv.bias_bank).sum(1)
        outs.append(F.conv2d(xi, w, b, padding=conv.padding))
    return torch.cat(outs)


def gradients(layer: nn.Module, x: torch.Tensor, out: torch.Tensor, g: torch.Tensor) -> list:
    params = [x, *layer.parameters()]
    return list(torch.autograd.grad((out * g).sum(), params))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("top_k", [None, 2])
@pytest.mark.parametrize("mode", ["bank", "grouped"])
def test_batched_forward_and_gradients_equal_per_sample_reference(
    mode: str, top_k: int | None, training: bool
) -> None:
    torch.manual_seed(0)
    layer = DynamicConvLayer(
        5,
        6,
        num_kernels=3,
        mode=mode,
        bias=True,
        spec=RoutingSpec(
            top_k=top_k, acp_stats=("mean", "std", "max", "quantiles"), temperature_start=2.0
        ),
    ).double()
    layer.train(training)
    x = torch.randn(4, 5, 9, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 6, 9, 7, dtype=torch.float64)
    out = layer(x)
    ref = per_sample_reference(layer, x)
    torch.testing.assert_close(out, ref)
    for got, want in zip(gradients(layer, x, out, g), gradients(layer, x, ref, g), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", ["bank", "grouped"])
def test_one_kernel_equals_conv2d(mode: str) -> None:
    torch.manual_seed(0)
    layer = DynamicConvLayer(3, 4, num_kernels=1, mode=mode, bias=True)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(layer.conv.weight_bank.view(4, 3, 3, 3))
        conv.bias.copy_(layer.conv.bias_bank.view(4))
    x = torch.randn(2, 3, 11, 10)
    torch.testing.assert_close(layer(x), conv(x))


@pytest.mark.parametrize("mode", ["bank", "grouped"])
def test_one_hot_attention_equals_conv2d_with_that_kernel(mode: str) -> None:
    torch.manual_seed(0)
    dyn = DynamicConv2d(3, 4, num_kernels=3, mode=mode)
    x = torch.randn(2, 3, 8, 8)
    if mode == "bank":
        attention = torch.eye(3)[[2, 0]]  # sample 0 -> kernel 2, sample 1 -> kernel 0
        kernels = [dyn.weight_bank[2], dyn.weight_bank[0]]
    else:
        attention = torch.eye(3)[torch.tensor([[2, 0, 1, 1], [0, 0, 2, 1]])]  # (2, C_out=4, G=3)
        kernels = [dyn.weight_bank[torch.arange(4), attention[b].argmax(-1)] for b in range(2)]
    out = dyn(x, attention)
    for b in range(2):
        torch.testing.assert_close(out[b : b + 1], F.conv2d(x[b : b + 1], kernels[b], padding=1))


@pytest.mark.parametrize("mode", ["bank", "grouped"])
def test_hard_routing_sends_gradient_only_to_the_chosen_kernels(mode: str) -> None:
    torch.manual_seed(0)
    layer = DynamicConvLayer(
        4, 5, num_kernels=4, mode=mode, bias=True, spec=RoutingSpec(top_k=1, temperature_start=1.0)
    )
    x = torch.randn(1, 4, 6, 6)
    layer(x).square().sum().backward()
    chosen = layer.last_attention[0] > 0  # (K,) or (C_out, G)
    assert int(chosen.sum()) == (1 if mode == "bank" else 5)
    bank_grad = layer.conv.weight_bank.grad
    if mode == "bank":
        per_kernel = bank_grad.abs().flatten(1).sum(1)
        bias_grad = layer.conv.bias_bank.grad.abs().sum(1)
    else:
        per_kernel = bank_grad.abs().flatten(2).sum(2)
        bias_grad = layer.conv.bias_bank.grad.abs()
    assert torch.all(per_kernel[~chosen] == 0) and torch.all(bias_grad[~chosen] == 0)
    assert torch.all(per_kernel[chosen] > 0)
    # straight-through: the ACP still learns
    assert layer.acp.fc2.weight.grad.abs().sum() > 0


def test_last_attention_is_detached_and_routing_loss_keeps_the_graph() -> None:
    torch.manual_seed(0)
    layer = DynamicConvLayer(
        3, 4, spec=RoutingSpec(routing_loss_weights=RoutingLossWeights(confidence=1.0))
    )
    assert layer.routing_loss() is None
    layer(torch.randn(2, 3, 5, 5))
    assert layer.last_attention.shape == (2, 4) and not layer.last_attention.requires_grad
    loss = layer.routing_loss()
    loss.backward()
    assert layer.acp.fc2.weight.grad is not None


def test_layer_deepcopies_and_pickles_after_a_training_forward() -> None:
    torch.manual_seed(0)
    layer = DynamicConvLayer(
        3, 4, spec=RoutingSpec(routing_loss_weights=RoutingLossWeights(balance=1.0))
    )
    x = torch.randn(2, 3, 5, 5)
    layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        torch.testing.assert_close(clone(x), layer(x))
