"""Routing by the case's known modality, freezing the routing, and the default Dy-CNN kept
exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedll.config.schema import TrainingConfig
from fedll.models import build_model, check_arguments, parameter_groups
from fedll.models.dynamic_conv import DynamicConvLayer
from fedll.models.inspection import freeze_routing, last_attention, routes_by_modality
from fedll.models.modality_routing import ModalityCoefficients
from fedll.models.routing import RoutingSpec
from fedll.training.train import train_local

SMALL = {"base_width": 4, "depth": 1}


@pytest.mark.parametrize("name", ["dycnn", "dycnn-grouped"])
def test_new_arguments_at_their_defaults_change_nothing(name: str) -> None:
    plain = build_model(name, seed=3, **SMALL)
    spelt = build_model(name, seed=3, routing="learned", freeze_routing_after=None, **SMALL)
    assert list(plain.state_dict()) == list(spelt.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(value, spelt.state_dict()[key])
    x = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    plain.eval(), spelt.eval()
    out = plain(x)
    assert torch.equal(out, spelt(x))
    # a learned model ignores a modality it is given
    assert torch.equal(out, plain(x, torch.tensor([0, 1, 0])))
    assert not routes_by_modality(plain)


def test_default_dycnn_state_keys_are_unchanged() -> None:
    keys = list(build_model("dycnn", **SMALL).state_dict())
    assert keys[:6] == [
        "stem.conv1.acp.anneal_step",
        "stem.conv1.acp.fc1.weight",
        "stem.conv1.acp.fc1.bias",
        "stem.conv1.acp.fc2.weight",
        "stem.conv1.acp.fc2.bias",
        "stem.conv1.conv.weight_bank",
    ]
    assert not any("logits" in k for k in keys)


def layer(routing: str, mode: str = "bank", k: int = 4) -> DynamicConvLayer:
    torch.manual_seed(0)
    return DynamicConvLayer(
        3, 5, num_kernels=k, mode=mode, spec=RoutingSpec(routing=routing, anneal_steps=0)
    )


@pytest.mark.parametrize("mode", ["bank", "grouped"])
def test_hard_routing_is_a_static_conv_with_the_modality_kernel_mean(mode: str) -> None:
    dyn = layer("modality-hard", mode)
    x = torch.randn(4, 3, 7, 7)
    modality = torch.tensor([0, 1, 1, 0])
    out = dyn(x, modality)
    bank = dyn.conv.weight_bank if mode == "bank" else dyn.conv.weight_bank.transpose(0, 1)
    for b in range(4):
        kernels = bank[:2] if modality[b] == 0 else bank[2:]  # K=4, M=2: kernels 0-1 and 2-3
        ref = F.conv2d(x[b : b + 1], kernels.mean(0), padding=1)
        torch.testing.assert_close(out[b : b + 1], ref)
    att = dyn.last_attention
    assert att is not None and att.shape == ((4, 4) if mode == "bank" else (4, 5, 4))


def test_hard_routing_one_hot_and_no_gradient_to_the_other_modality() -> None:
    dyn = layer("modality-hard", k=2)
    x = torch.randn(3, 3, 6, 6)
    dyn(x, torch.tensor([1, 1, 1])).sum().backward()
    grad = dyn.conv.weight_bank.grad
    assert grad is not None and torch.all(grad[0] == 0) and torch.any(grad[1] != 0)
    torch.testing.assert_close(dyn.last_attention, torch.tensor([[0.0, 1.0]] * 3))
    assert list(dyn.acp.parameters()) == []


@pytest.mark.parametrize("mode", ["bank", "grouped"])
def test_soft_routing_with_equal_logits_is_the_mean_kernel(mode: str) -> None:
    dyn = layer("modality-soft", mode, k=3)
    x = torch.randn(2, 3, 6, 6)
    out = dyn(x, torch.tensor([0, 1]))
    bank = dyn.conv.weight_bank if mode == "bank" else dyn.conv.weight_bank.transpose(0, 1)
    torch.testing.assert_close(out, F.conv2d(x, bank.mean(0), padding=1))


def test_soft_routing_follows_the_modality_logits_and_temperature() -> None:
    torch.manual_seed(0)
    router = ModalityCoefficients(
        3,
        spec=RoutingSpec(
            routing="modality-soft", temperature_start=2.0, temperature_end=2.0, anneal_steps=0
        ),
    )
    with torch.no_grad():
        router.logits.copy_(torch.tensor([[0.0, 2.0, 4.0], [4.0, 0.0, 0.0]]))
    weights = router(torch.zeros(3, 1, 2, 2), torch.tensor([1, 0, 1])).weights
    expected = torch.softmax(torch.tensor([[4.0, 0, 0], [0, 2, 4], [4, 0, 0]]) / 2.0, dim=-1)
    torch.testing.assert_close(weights, expected)
    assert router.logits.shape == (2, 3)
    grouped = ModalityCoefficients(
        3, mode="grouped", out_channels=5, spec=RoutingSpec(routing="modality-soft")
    )
    assert grouped.logits.shape == (2, 5, 3)


def test_modality_model_without_modality_is_a_clear_error() -> None:
    model = build_model("dycnn", routing="modality-soft", **SMALL)
    assert routes_by_modality(model)
    with pytest.raises(ValueError, match="^modality: this layer routes by"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"^modality: expected shape \(2,\)"):
        model(torch.randn(2, 1, 8, 8), torch.tensor([0, 1, 0]))
    out = model(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]))
    assert out.shape == (2, 1, 8, 8)
    assert {a.shape for a in last_attention(model).values()} == {(2, 4)}
    groups = parameter_groups(model)
    assert groups["stem.conv1.acp.logits"] == "acp"


@pytest.mark.parametrize(
    ("kwargs", "argument", "message"),
    [
        ({"routing": "modality"}, "routing", "Input should be"),
        ({"routing": "modality-hard", "num_kernels": 3}, "num_kernels", "multiple of 2"),
        ({"routing": "modality-soft", "top_k": 1}, "top_k", "configures the ACP"),
        ({"routing": "modality-soft", "acp_stats": ["mean", "std"]}, "acp_stats", "the ACP"),
        ({"freeze_routing_after": -1}, "freeze_routing_after", "greater than or equal"),
    ],
)
def test_bad_routing_arguments_name_the_argument(kwargs, argument, message) -> None:
    from fedll.models import ArgumentError

    with pytest.raises(ArgumentError, match=message) as caught:
        check_arguments("dycnn", kwargs)
    assert caught.value.argument == argument


def routing_params(model) -> dict[str, torch.Tensor]:
    groups = parameter_groups(model)
    return {n: p.detach().clone() for n, p in model.named_parameters() if groups[n] == "acp"}


def kernels(model) -> dict[str, torch.Tensor]:
    groups = parameter_groups(model)
    return {
        n: p.detach().clone() for n, p in model.named_parameters() if groups[n] == "kernel_bank"
    }


@pytest.mark.parametrize("routing", ["learned", "modality-soft"])
def test_freeze_routing_after_round(routing: str, blobs) -> None:
    images, masks = (t.numpy() for t in blobs)
    modalities = np.array([0, 1] * 4)
    cfg = TrainingConfig(epochs=1, batch_size=4, lr=1e-2)
    for server_round, frozen in ((2, False), (3, True)):
        model = build_model("dycnn", seed=0, routing=routing, freeze_routing_after=2, **SMALL)
        names = freeze_routing(model, server_round)
        assert bool(names) is frozen
        before_acp, before_k = routing_params(model), kernels(model)
        train_local(model, images, masks, cfg, seed=0, modalities=modalities)
        after_acp, after_k = routing_params(model), kernels(model)
        assert any(not torch.equal(before_k[n], after_k[n]) for n in before_k)
        same = [torch.equal(before_acp[n], after_acp[n]) for n in before_acp]
        assert all(same) if frozen else not any(same)
    never = build_model("dycnn", seed=0, **SMALL)
    assert freeze_routing(never, 100) == []


@pytest.mark.parametrize("train", [False, True])
def test_hard_routing_with_norm_by_modality_is_a_static_unet_per_modality(train: bool) -> None:
    """The study's recommended configuration holds no input-dependent routing: for a batch of
    modality m it computes a plain U-Net whose kernels are the mean of m's kernel set and whose
    norms are m's, with the 1x1 head shared by both modalities."""
    args = {"base_width": 4, "depth": 2, "seed": 1}
    model = build_model("dycnn", routing="modality-hard", norm_by_modality=True, **args)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # every norm and the head away from their initial values
        for key, value in model.state_dict().items():
            if value.is_floating_point() and "weight_bank" not in key:
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
    x = torch.randn(3, 1, 16, 16, generator=generator)
    model.train(train)
    outs = [model(x, torch.full((3,), m)) for m in (0, 1)]
    assert (outs[0] - outs[1]).abs().max() > 0.1  # the two modalities are two networks
    for m in (0, 1):
        static = build_model("static", **args)
        state = {}
        for key, value in model.state_dict().items():
            if key.endswith(".conv.weight_bank"):  # (K=4, C_out, C_in, 3, 3): m's are 2m, 2m+1
                kernel = value[2 * m : 2 * m + 2].mean(0)
                state[key.replace(".conv.weight_bank", ".weight")] = kernel
            elif f".norms.{m}." in key:
                state[key.replace(f".norms.{m}.", ".")] = value
        state["head.weight"], state["head.bias"] = model.head.weight, model.head.bias
        assert set(state) == set(static.state_dict())
        static.load_state_dict(state)
        static.train(train)
        torch.testing.assert_close(outs[m], static(x), rtol=1e-5, atol=1e-5)
