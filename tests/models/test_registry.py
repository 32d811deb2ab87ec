from __future__ import annotations

import dataclasses
import hashlib
import inspect
import re

import pytest
import torch
import torch.nn.functional as F

from fedll.data import MODALITIES
from fedll.models import (
    PARAMETER_GROUPS,
    ArgumentError,
    advance_schedule,
    build_model,
    check_arguments,
    count_parameters,
    current_temperature,
    dynamic_unet,
    last_attention,
    model_names,
    parameter_groups,
    routing_loss,
)
from fedll.models.routing import RoutingLossWeights, RoutingSpec

SMALL = {"depth": 2, "base_width": 4}


def test_model_names() -> None:
    assert model_names() == ["dycnn", "dycnn-grouped", "static", "static-wide"]


def test_unknown_name_or_key_raises_an_argument_error() -> None:
    with pytest.raises(ArgumentError, match="unknown model 'unet'"):
        build_model("unet")
    with pytest.raises(ArgumentError, match="num_kernels"):
        build_model("static", num_kernels=4)
    with pytest.raises(ArgumentError, match="mode"):
        build_model("dycnn", mode="grouped")  # a name's fixed argument is not a key


@pytest.mark.parametrize(
    ("name", "kwargs", "argument", "message"),
    [
        ("unet", {}, "name", "unknown model 'unet'"),
        ("static", {"num_kernels": 4}, "num_kernels", "unknown argument of 'static'"),
        ("dycnn", {"mode": "grouped"}, "mode", "unknown argument"),  # fixed by the name
        ("static", {"base_width": "wide"}, "base_width", "valid integer"),
        ("static", {"depth": 2.5}, "depth", "valid integer"),
        ("static", {"norm": "layer"}, "norm", "'batch', 'instance', 'group' or 'none'"),
        ("static", {"head_prior": 1.0}, "head_prior", "less than 1"),
        ("dycnn", {"lr": 0.1}, "lr", "unknown argument"),
        ("dycnn", {"top_k": 99}, "top_k", "must be in 1..num_kernels=4, got 99"),
        ("dycnn", {"top_k": 0}, "top_k", "greater than or equal to 1"),
        ("dycnn", {"acp_stats": ["mean", "median"]}, "acp_stats", "'mean', 'std'"),
        ("dycnn", {"acp_stats": []}, "acp_stats", "non-empty"),  # the ACP's own check
        ("dycnn", {"quantiles": [0.5, 2.0]}, "quantiles", "less than or equal to 1"),
        ("dycnn", {"temperature_end": float("inf")}, "temperature_end", "finite"),
        ("dycnn", {"routing_loss_weights": {"sparsity": 1.0}}, "routing_loss_weights", "balance"),
        ("static-wide", {"match_kwargs": {"depth": 2}}, "match_kwargs", "common keys"),
        ("static", {"match_kwargs": {"top_k": 1}}, "match_kwargs", "without match_model"),
        # the routing spec's cross-argument check names its argument, in a matched model too
        (
            "static-wide",
            {"match_kwargs": {"routing": "modality-soft", "top_k": 1}},
            "top_k",
            "configures the ACP; routing 'modality-soft' has none",
        ),
    ],
)
def test_check_arguments_names_the_argument(name, kwargs, argument, message) -> None:
    with pytest.raises(ArgumentError, match=re.escape(message)) as caught:
        check_arguments(name, kwargs)
    assert caught.value.argument == argument


def test_check_arguments_builds_nothing() -> None:
    """Validation runs the builder on the meta device: a model of terabytes is checked without
    memory, and no random number is drawn."""
    state = torch.random.get_rng_state()
    check_arguments("dycnn", {"depth": 8, "base_width": 4096, "num_kernels": 8})
    assert torch.equal(torch.random.get_rng_state(), state)


def test_yaml_style_kwargs() -> None:
    model = build_model(
        "dycnn",
        seed=0,
        **SMALL,
        acp_stats=["mean", "std", "max"],
        top_k=1,
        temperature_end=0.5,
        routing_loss_weights={"confidence": 0.1},
    )
    acp = model.stem.conv2.acp
    assert acp.spec.acp_stats == ("mean", "std", "max") and acp.spec.top_k == 1
    assert acp.fc1.in_features == 3 * 4
    model(torch.randn(2, 1, 8, 8))
    assert all(((a > 0).sum(-1) == 1).all() for a in last_attention(model).values())


def test_seed_makes_builds_identical_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_model("dycnn", seed=3, **SMALL).state_dict()
    b = build_model("dycnn", seed=3, **SMALL).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_parameter_groups_cover_every_state_key(name: str, norm: str) -> None:
    model = build_model(name, norm=norm, **SMALL)
    groups = parameter_groups(model)
    assert list(groups) == list(model.state_dict())
    assert set(groups.values()) <= set(PARAMETER_GROUPS)
    dynamic = name.startswith("dycnn")
    assert ("kernel_bank" in groups.values()) is dynamic
    assert ("acp" in groups.values()) is dynamic
    assert ("norm" in groups.values()) is (norm != "none")
    for key, group in groups.items():
        if key.endswith(("num_batches_tracked", "anneal_step")):
            assert group == "counter", key
        if key.endswith(("weight_bank", "bias_bank")):
            assert group == "kernel_bank", key
        if ".acp.fc" in key:
            assert group == "acp", key
    assert groups["head.weight"] == "other"
    if dynamic:
        assert groups["stem.conv1.conv.weight_bank"] == "kernel_bank"
        assert groups["stem.conv1.acp.fc1.weight"] == "acp"
        assert groups["stem.conv1.acp.anneal_step"] == "counter"


@pytest.mark.parametrize("name", ["dycnn", "dycnn-grouped"])
def test_last_attention_per_layer(name: str) -> None:
    model = build_model(name, seed=0, **SMALL)
    assert last_attention(model) == {}
    model(torch.randn(3, 1, 8, 8))
    attention = last_attention(model)
    assert len(attention) == 10 and "stem.conv1" in attention
    for layer, a in attention.items():
        out_channels = model.get_submodule(layer).conv.out_channels
        assert a.shape == ((3, 4) if name == "dycnn" else (3, out_channels, 4))
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    assert last_attention(build_model("static", **SMALL)) == {}


def test_routing_loss() -> None:
    x = torch.randn(3, 1, 8, 8)
    static = build_model("static", **SMALL)
    static(x)
    assert routing_loss(static).item() == 0.0
    plain = build_model("dycnn", seed=0, **SMALL)
    plain(x)
    assert routing_loss(plain).item() == 0.0
    weighted = build_model("dycnn", seed=0, **SMALL, routing_loss_weights={"confidence": 1.0})
    weighted(x)
    loss = routing_loss(weighted)
    # tau = 30 at the start: nearly uniform, entropy close to log 4 in each of the 10 layers
    assert loss.item() == pytest.approx(10 * torch.log(torch.tensor(4.0)).item(), rel=1e-2)
    loss.backward()
    assert weighted.stem.conv1.acp.fc2.weight.grad is not None


@pytest.mark.parametrize("name", model_names())
def test_state_dict_round_trip_and_schedule_resume(name: str) -> None:
    kwargs = dict(SMALL) if name == "static" else {**SMALL, "anneal_steps": 10}
    if name == "static-wide":
        kwargs = {**SMALL, "match_kwargs": {"num_kernels": 2}}
    model = build_model(name, seed=0, **kwargs)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 1, 12, 12)
    for _ in range(7):
        optimiser.zero_grad()
        model(x).square().mean().backward()
        optimiser.step()
        advance_schedule(model)
    fresh = build_model(name, seed=1, **kwargs)
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert current_temperature(fresh) == current_temperature(model)
    if name.startswith("dycnn"):
        assert current_temperature(fresh) == pytest.approx(30.0 - 29.0 * 0.7)
        for _ in range(3):
            advance_schedule(fresh)
        assert current_temperature(fresh) == 1.0


@pytest.mark.parametrize("name", ["static", "dycnn", "dycnn-grouped"])
def test_builders_train_and_the_loss_falls(name: str, blobs) -> None:
    images, masks = blobs
    model = (
        build_model(name, seed=0, depth=2, base_width=4, anneal_steps=10)
        if name != "static"
        else build_model(name, seed=0, depth=2, base_width=4)
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(images), masks)
        (loss + routing_loss(model)).backward()
        optimiser.step()
        advance_schedule(model)
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0], losses


def test_the_routing_spec_is_the_builders_one_source_of_routing_defaults() -> None:
    """Every RoutingSpec field but the modality count (fixed, not YAML) is a builder argument
    of the same name whose default is the spec's, and a default build hands every layer and
    router the default spec itself, one object for the model."""
    builder = inspect.signature(dynamic_unet).parameters
    fields = {f.name: f.default for f in dataclasses.fields(RoutingSpec)}
    assert set(fields) - set(builder) == {"num_modalities"}
    for name, default in fields.items():
        if name == "routing_loss_weights":  # None in the YAML vocabulary: no weights
            assert RoutingLossWeights.of(builder[name].default) == default
        elif name != "num_modalities":
            assert builder[name].default == default, name
    model = build_model("dycnn", **SMALL)
    specs = {id(m.spec) for m in model.modules() if hasattr(m, "spec")}
    assert len(specs) == 1
    assert model.stem.conv1.spec == RoutingSpec() and model.stem.conv1.acp.spec == RoutingSpec()
    assert RoutingSpec().num_modalities == len(MODALITIES)


def test_the_spec_normalises_its_fields_and_checks_them_as_the_builder_names_them() -> None:
    spec = RoutingSpec(
        acp_stats=["mean", "std"], quantiles=[0, 1], temperature_end=1, anneal_steps=3
    )
    assert spec.acp_stats == ("mean", "std") and spec.quantiles == (0.0, 1.0)
    assert type(spec.temperature_end) is float
    same_as_tuples = RoutingSpec(acp_stats=("mean", "std"), quantiles=(0.0, 1.0), anneal_steps=3)
    assert spec == same_as_tuples and hash(spec) == hash(same_as_tuples)
    with pytest.raises(ArgumentError, match="^acp_stats: configures the ACP; routing 'modality-"):
        RoutingSpec(routing="modality-soft", acp_stats=("mean", "max"))
    with pytest.raises(ArgumentError, match="^top_k: configures the ACP") as caught:
        build_model("dycnn", routing="modality-hard", top_k=1)
    assert caught.value.argument == "top_k"
    # the defaults spelt as lists (as YAML gives them) are the defaults
    RoutingSpec(routing="modality-hard", acp_stats=["mean"], quantiles=[0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match=r"^freeze_routing_after: must be >= 0, got -1$"):
        RoutingSpec(freeze_routing_after=-1)
    with pytest.raises(ValueError, match=r"^hidden_ratio/min_hidden: must be > 0 and >= 1"):
        RoutingSpec(min_hidden=0)


def test_a_footprint_is_measured_once_per_model_arguments_and_batch(monkeypatch):
    from fedll.models import registry

    built = []
    real = registry._builder

    def counting(name):
        built.append(name)
        return real(name)

    monkeypatch.setattr(registry, "_builder", counting)
    registry._remembered.cache_clear()
    first = registry.footprint("dycnn", {"base_width": 4, "depth": 1}, 2, 16)
    assert registry.footprint("dycnn", {"depth": 1, "base_width": 4}, 2, 16) == first
    assert built == ["dycnn"]  # the same arguments in any order: remembered
    larger = registry.footprint("dycnn", {"base_width": 4, "depth": 1}, 4, 16)
    assert larger[0] == first[0] and larger[1] == 2 * first[1]  # activations scale with batch
    assert built == ["dycnn", "dycnn"]
    registry._remembered.cache_clear()
    # what a fresh measurement gives: the parameters of the model a trial builds
    assert first[0] == count_parameters(build_model("dycnn", base_width=4, depth=1))


# Digests computed with the tree of main at 540d78e (/work/wt-base), torch 2.13.0+cpu, one
# thread, by the helpers below: a restructuring of the models must keep every state key, its
# order, shape and initial value (the random draws at construction) and the forward's bits.
GOLDEN = {
    "dycnn": (
        "dycnn",
        {},
        "8be6a655637aa24507be1a769954cb8aaff788cbdba5bfb2cd1c4c8164a18436",
        "96a38c19630430c81057dc6ca3792e0f6619febe7fe8a5d363ca5de57e1b4370",
    ),
    "grouped-acp": (
        "dycnn-grouped",
        {
            "acp_stats": ["mean", "std", "max", "quantiles"],
            "quantiles": [0.25, 0.75],
            "top_k": 2,
            "temperature_start": 5.0,
            "temperature_end": 0.5,
            "anneal_steps": 10,
            "hidden_ratio": 0.5,
            "min_hidden": 2,
            "routing_loss_weights": {"confidence": 0.1, "balance": 0.2},
            "first_layer_static": True,
            "freeze_routing_after": 3,
        },
        "53606d6a632e743b19614c299e25966e3535effdb7a3a17e6bfa9f60211071a5",
        "85d98cd28eddd2dbc8f57d19967a41c2e4208022051402784efff5b73ad5b916",
    ),
    "modality-soft": (
        "dycnn",
        {
            "routing": "modality-soft",
            "norm_by_modality": True,
            "freeze_routing_after": 1,
            "temperature_start": 2.0,
        },
        "7324e298814dce65d9684193f3d4a03bb68acb3796cfca393d79aa44232f625c",
        "532874b626c511903dd66ea45a772dbbc7594d5863f31a668d3f2bdb88f59067",
    ),
    "modality-hard": (
        "dycnn-grouped",
        {"routing": "modality-hard", "head_prior": 0.1},
        "89416aa5f92a08b55bf99db7d45f07e6e0e9d577c34321a823cfc7dbfdaa1cb0",
        "4d0ce16278a0b64e8d7d9e2f08e330c822b8060659a389f12e839cd44d1f622a",
    ),
}


def state_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every state key in order, its dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()


def forward_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the output bits on a fixed input at schedule step 0 and after 4 steps, and of
    the routing loss of the second forward."""
    x = torch.randn(3, 1, 13, 11, generator=torch.Generator().manual_seed(7))
    modality = torch.tensor([0, 1, 0])
    digest = hashlib.sha256()
    with torch.no_grad():
        digest.update(model(x, modality).numpy().tobytes())
        advance_schedule(model, 4)
        digest.update(model(x, modality).numpy().tobytes())
        digest.update(routing_loss(model).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture
def one_thread():
    """The forward's bits depend on how the CPU kernels split the work: pin one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", list(GOLDEN))
def test_a_dycnn_builds_and_computes_the_bits_it_did_on_main(variant: str, one_thread) -> None:
    name, kwargs, state, forward = GOLDEN[variant]
    model = build_model(name, seed=0, **SMALL, **kwargs)
    assert state_digest(model) == state
    assert forward_digest(model) == forward
