from __future__ import annotations

import copy
import math

import pytest
import torch

from fedll.models import (
    NORMS,
    DynamicConvLayer,
    ModalityNorm,
    UNet,
    build_model,
    count_parameters,
    equal_param_width,
    routes_by_modality,
    static_conv,
    static_unet_parameters,
)
from fedll.models.modality import ModalityBatch, TakesModality


@pytest.mark.parametrize("name", ["static", "dycnn", "dycnn-grouped"])
@pytest.mark.parametrize("size", [(37, 45), (16, 16), (5, 3), (1, 1)])
def test_any_size_maps_to_same_size_logits(name: str, size: tuple[int, int]) -> None:
    model = build_model(name, seed=0, depth=3, base_width=4).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, *size))
    assert y.shape == (2, 1, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("norm", NORMS)
def test_norms_and_closed_form_parameter_count(norm: str) -> None:
    for depth in (0, 2):
        model = UNet(
            static_conv, in_channels=2, out_channels=3, depth=depth, base_width=6, norm=norm
        )
        expected = static_unet_parameters(6, in_channels=2, out_channels=3, depth=depth, norm=norm)
        assert count_parameters(model) == expected
        assert model.train()(torch.randn(2, 2, 9, 10)).shape == (2, 3, 9, 10)


def test_every_3x3_conv_is_dynamic_and_the_head_static() -> None:
    model = build_model("dycnn", depth=2, base_width=4)
    dynamic = [m for m in model.modules() if isinstance(m, DynamicConvLayer)]
    assert len(dynamic) == 2 + 2 * 2 + 2 * 2  # stem + 2 downs + 2 ups, two convs each
    assert isinstance(model.head, torch.nn.Conv2d) and model.head.kernel_size == (1, 1)
    first_static = build_model("dycnn", depth=2, base_width=4, first_layer_static=True)
    assert isinstance(first_static.stem.conv1, torch.nn.Conv2d)
    assert isinstance(first_static.stem.conv2, DynamicConvLayer)


def test_equal_param_width_matches_a_dycnn() -> None:
    dycnn = build_model("dycnn", depth=2, base_width=8)
    target = count_parameters(dycnn)
    width = equal_param_width(target, depth=2)
    best = min(range(1, 64), key=lambda w: abs(static_unet_parameters(w, depth=2) - target))
    assert width == best
    wide = build_model("static-wide", depth=2, base_width=8)
    assert wide.stem.conv1.out_channels == width
    assert abs(count_parameters(wide) - target) / target < 0.1


def test_bad_unet_arguments_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="^norm: "):
        build_model("static", norm="layer")
    with pytest.raises(ValueError, match="^depth: "):
        build_model("static", depth=-1)


def test_match_kwargs_may_not_repeat_common_keys() -> None:
    with pytest.raises(ValueError, match="match_kwargs"):
        build_model("static-wide", match_kwargs={"depth": 2})
    with pytest.raises(ValueError, match="num_kernel"):
        build_model("static-wide", match_kwargs={"num_kernel": 2})


@pytest.mark.parametrize("name", ["static", "dycnn", "static-wide"])
def test_head_prior_sets_the_head_bias(name: str) -> None:
    # dycnn seed 2 at width 8 draws a head whose weights are all <= 0.02: the logit can then
    # not exceed the bias, which the background-dominated loss lowers (Dice 0 for ever).
    default = build_model(name, seed=2, depth=2, base_width=8)
    prior = build_model(name, seed=2, depth=2, base_width=8, head_prior=0.02)
    assert torch.allclose(prior.head.bias, torch.full((1,), math.log(0.02 / 0.98)))
    assert torch.equal(prior.head.weight, default.head.weight)  # only the bias changes
    assert count_parameters(prior) == count_parameters(default)
    with pytest.raises(ValueError, match="head_prior"):
        build_model(name, depth=2, base_width=8, head_prior=1.0)


def test_modality_norm_normalises_each_sample_by_its_own_modality_s_layer() -> None:
    """A one-modality batch goes through its layer alone, bit for bit; a mixed batch is each
    modality's samples through their own layer; training on T2 leaves FLAIR's statistics and
    affine parameters as they were."""
    torch.manual_seed(0)
    layer = ModalityNorm("batch", 3, num_modalities=2)
    with torch.no_grad():
        for norm, scale in zip(layer.norms, (2.0, -1.0), strict=True):
            norm.weight.fill_(scale)
    x = torch.randn(6, 3, 5, 5)
    t2, flair = torch.zeros(6, dtype=torch.long), torch.tensor([0, 1, 0, 1, 1, 0])
    reference = copy.deepcopy(layer.norms)
    assert torch.equal(layer(x, t2), reference[0](x))
    mixed = layer(x, flair)
    for m in (0, 1):
        rows = (flair == m).nonzero(as_tuple=True)[0]
        assert torch.equal(mixed[rows], reference[m](x[rows]))
    before = copy.deepcopy(layer.norms[1].state_dict())
    layer(x, t2).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in layer.norms[1].state_dict().items())
    assert layer.norms[1].weight.grad is None and layer.norms[0].weight.grad is not None
    layer.eval()  # in evaluation each modality's running statistics are its own
    assert torch.equal(layer(x, flair)[1], reference[1].eval()(x[1:2])[0])
    with pytest.raises(ValueError, match="^modality: this layer normalises by"):
        layer(x)
    with pytest.raises(ValueError, match=r"^modality: indices \[0, 2\]"):
        layer(x, torch.tensor([0, 2, 0, 0, 0, 0]))


@pytest.mark.parametrize("name", ["static", "dycnn"])
def test_norm_by_modality_gives_every_norm_a_layer_per_modality(name: str) -> None:
    plain = build_model(name, depth=2, base_width=4, seed=0)
    model = build_model(name, depth=2, base_width=4, seed=0, norm_by_modality=True)
    norms = [m for m in model.modules() if isinstance(m, ModalityNorm)]
    assert len(norms) == 2 * (1 + 2 * 2) and all(len(n.norms) == 2 for n in norms)
    assert routes_by_modality(model) and not routes_by_modality(plain)
    # the convolutions are the same draw; only the norms are doubled (2 x 2C per layer)
    extra = sum(p.numel() for n in norms for p in n.norms[1].parameters())
    assert count_parameters(model) == count_parameters(plain) + extra
    x = torch.randn(2, 1, 16, 16)
    model.eval(), plain.eval()
    assert torch.allclose(model(x, torch.tensor([1, 1])), plain(x), atol=1e-6)


def test_inference_pooling_is_plain_max_pooling_bit_for_bit():
    from fedll.models.unet import MaxPool

    x = torch.randn(3, 5, 9, 7, generator=torch.Generator().manual_seed(0))
    plain = torch.nn.MaxPool2d(2, ceil_mode=True)
    with torch.inference_mode():
        pooled = MaxPool()(x)
        assert torch.equal(pooled, plain(x)) and pooled.is_contiguous()
        last = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(MaxPool()(last), plain(last))
    grad = x.clone().requires_grad_(True)
    MaxPool()(grad).sum().backward()  # with autograd: torch's own pooling, and its gradient
    expected = x.clone().requires_grad_(True)
    plain(expected).sum().backward()
    assert torch.equal(grad.grad, expected.grad)


@pytest.mark.parametrize("modality", [[1, 1, 1, 1], [0, 1, 1, 0]], ids=["one", "mixed"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_the_modalities_present_are_read_once_per_forward_not_per_layer(
    modality, train, monkeypatch
) -> None:
    """A U-Net that routes and normalises by modality (20 layers take it) reads the modalities
    present once per forward (on a GPU, one host synchronisation instead of one per layer),
    and gives the outputs and gradients of each layer looking them up itself."""
    model = build_model(
        "dycnn", depth=2, base_width=4, seed=0, routing="modality-hard", norm_by_modality=True
    )
    model.train(train)
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    index = torch.tensor(modality)
    takers = [m for m in model.modules() if isinstance(m, TakesModality)]
    assert len(takers) >= 20

    def per_layer() -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The old way: every layer is handed the tensor and looks it up itself."""
        model.zero_grad()
        wrapped = ModalityBatch.of
        calls = []

        def first_call_passes_the_tensor_on(cls, m, device):
            calls.append(1)  # the first is UNet's: it hands each layer the tensor itself
            return m if len(calls) == 1 else wrapped(m, device)

        with monkeypatch.context() as patch:
            patch.setattr(ModalityBatch, "of", classmethod(first_call_passes_the_tensor_on))
            out = model(x, index)
        assert len(calls) == 1 + sum(1 for m in takers if isinstance(m, ModalityNorm)) + sum(
            1 for m in model.modules() if type(m).__name__ == "ModalityCoefficients"
        )
        out.sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    reads = []
    real_unique = torch.unique

    def counting_unique(*args, **kwargs):
        reads.append(1)
        return real_unique(*args, **kwargs)

    torch.manual_seed(0)
    expected, expected_grads = per_layer()
    model.zero_grad()
    with monkeypatch.context() as patch:
        patch.setattr(torch, "unique", counting_unique)
        torch.manual_seed(0)
        out = model(x, index)
    out.sum().backward()
    assert len(reads) == 1
    assert torch.equal(out, expected)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads, strict=True))
