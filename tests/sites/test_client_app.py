"""The ClientApp's train handler: what a site keeps between its rounds (FedBN's local
normalisation, a CL method's state) and the faults it injects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID

from fedll.config import ModelConfig, SliceConfig, TrainingConfig, load_scenario
from fedll.config.instruction import TrainInstruction
from fedll.config.options import FaultConfig, ReplayOptions
from fedll.data.prepare import prepare_cohort
from fedll.data.site import resolve_site
from fedll.errors import ConfigError
from fedll.federation.faults import InjectedFault
from fedll.federation.flower_private import assign_message_id, set_task_identity
from fedll.models import build_model, parameter_groups
from sites.client_app import train_site
from strategies.ditto import LAMBDA, PERSONALISE


def train(msg: Message, ctx: Context) -> Message:
    return train_site(msg, ctx, resolve_site(ctx.node_config, ctx.run_config), torch.device("cpu"))


pytestmark = pytest.mark.slow

SPEC = ModelConfig(name="static", base_width=4, depth=2)


@pytest.fixture(scope="module")
def cohort_index(tmp_path_factory, make_scenario) -> Path:
    root = tmp_path_factory.mktemp("client")
    scenario = load_scenario(make_scenario(root / "s.yaml"))
    index = root / "cohort.json"
    prepare_cohort(scenario).write(index)
    return index


@pytest.fixture
def restore_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def context(index: Path) -> Context:
    """Partition 0 of the tiny scenario: hospital-t2, two patients."""
    return Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config={"cohort-index": str(index)},
    )


def message(model: torch.nn.Module, server_round: int, start: int, **extra: Any) -> Message:
    set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
    instruction = TrainInstruction(
        model=SPEC,
        training=TrainingConfig(epochs=1, batch_size=8, lr=1e-12),
        slices=SliceConfig(size=32, empty_fraction=0.1, seed=0),
        arrival_start=start,
        arrival_stop=start + 1,
        train_on="new",
        seed=3,
        **extra,
    )
    config = {**instruction.to_config(), "server-round": server_round}
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)}
    )
    msg = Message(content, dst_node_id=5, message_type="train")
    assign_message_id(msg, f"m{server_round}")
    return msg


def norms(state: dict[str, np.ndarray], groups: dict[str, str]) -> dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if groups[k] == "norm" and "running" not in k}


def test_a_fedbn_site_overlays_its_own_normalisation(cohort_index, restore_torch_threads):
    torch.manual_seed(0)
    model = build_model(SPEC.name, **SPEC.kwargs())
    groups = parameter_groups(model)
    ctx = context(cohort_index)
    own = {k: v + 1.0 for k, v in model.state_dict().items() if groups[k] == "norm"}
    ctx.state["local-norm"] = ArrayRecord({k: v for k, v in own.items()})
    msg = message(model, 2, 0)
    msg.content["config"]["local-norm"] = True

    reply = train(msg, ctx)

    sent = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    # lr 1e-12: the affine norm weights trained from the site's own, not the received ones
    for key, value in norms(sent, groups).items():
        np.testing.assert_allclose(value, own[key].numpy(), atol=1e-6)
    kept = {k: v.numpy() for k, v in ctx.state["local-norm"].items()}
    assert set(kept) == {k for k, g in groups.items() if g == "norm"}
    np.testing.assert_array_equal(kept["stem.norm1.weight"], sent["stem.norm1.weight"])


def test_without_local_norm_the_received_normalisation_is_trained(
    cohort_index, restore_torch_threads
):
    torch.manual_seed(0)
    model = build_model(SPEC.name, **SPEC.kwargs())
    groups = parameter_groups(model)
    ctx = context(cohort_index)
    ctx.state["local-norm"] = ArrayRecord(
        {k: v + 1.0 for k, v in model.state_dict().items() if groups[k] == "norm"}
    )
    reply = train(message(model, 2, 0), ctx)
    sent = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    received = {k: v.numpy() for k, v in model.state_dict().items()}
    for key, value in norms(sent, groups).items():
        np.testing.assert_allclose(value, received[key], atol=1e-6)


def test_replay_keeps_its_buffer_in_the_site_state(cohort_index, restore_torch_threads):
    model = build_model(SPEC.name, **SPEC.kwargs())
    ctx = context(cohort_index)
    replay = ReplayOptions(name="replay", buffer=2)
    first = train(message(model, 1, 0, continual=replay), ctx)
    assert first.content["metrics"]["cases"] == 1
    np.testing.assert_array_equal(ctx.state["continual"]["buffer"].numpy(), [0])
    second = train(message(model, 3, 1, continual=replay), ctx)
    assert second.content["metrics"]["cases"] == 2  # the arrival and the replayed case
    assert second.content["metrics"]["num-examples"] > first.content["metrics"]["num-examples"]
    np.testing.assert_array_equal(ctx.state["continual"]["buffer"].numpy(), [0, 1])


def test_faults_raise_or_corrupt_the_update(cohort_index, restore_torch_threads):
    model = build_model(SPEC.name, **SPEC.kwargs())
    ctx = context(cohort_index)
    with pytest.raises(InjectedFault, match="site hospital-t2: injected failure, round 2"):
        train(message(model, 2, 0, fault=FaultConfig(site="hospital-t2", raise_every=2)), ctx)
    reply = train(
        message(model, 1, 0, fault=FaultConfig(site="hospital-t2", raise_every=2, send="nan")), ctx
    )
    sent = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    assert np.isnan(sent["head.weight"]).all()
    assert np.isfinite(reply.content["metrics"]["train-loss"])


def test_a_byzantine_site_flips_its_delta_against_the_model_the_server_sent(
    cohort_index, restore_torch_threads
):
    """A FedBN site overlays its own norms, but the delta it flips is taken against the
    global model as received: flipped = 2 received - trained, counters as trained."""
    torch.manual_seed(0)
    model = build_model(SPEC.name, **SPEC.kwargs())
    groups = parameter_groups(model)
    received = {k: v.numpy() for k, v in model.state_dict().items()}
    own = {k: v + 1.0 for k, v in model.state_dict().items() if groups[k] == "norm"}

    def send(**extra: Any) -> dict[str, np.ndarray]:
        ctx = context(cohort_index)  # the same site state for both runs: the same training
        ctx.state["local-norm"] = ArrayRecord(dict(own))
        msg = message(model, 1, 0, **extra)
        msg.content["config"]["local-norm"] = True
        return {k: v.numpy() for k, v in train(msg, ctx).content["arrays"].items()}

    trained = send()
    flipped = send(fault=FaultConfig(site="hospital-t2", send="sign-flip"))
    for key, value in flipped.items():
        assert value.dtype == trained[key].dtype and value.shape == trained[key].shape
        if np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(value, 2 * received[key] - trained[key], atol=1e-6)
        else:
            np.testing.assert_array_equal(value, trained[key])  # num_batches_tracked
    # lr 1e-12: the site's norms stay its own (received + 1), so the flip sends received - 1
    for key, value in norms(flipped, groups).items():
        np.testing.assert_allclose(value, received[key] - 1.0, atol=1e-5)


def test_optimizer_state_round_trips_through_the_site_state() -> None:
    """optimizer_state: keep stores Adam's moments in context.state; shapes (0-d step too) and
    values come back exactly, and an optimiser resumed from them steps like the original."""
    from sites.client_app import _pack_optimizer, _unpack_optimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    state = optimizer.state_dict()["state"]
    restored = _unpack_optimizer(_pack_optimizer(state))
    assert restored.keys() == state.keys()
    for index, slot in state.items():
        for name, value in slot.items():
            assert restored[index][name].shape == torch.as_tensor(value).shape
            torch.testing.assert_close(restored[index][name], torch.as_tensor(value))
    twin = torch.nn.Linear(3, 2)
    twin.load_state_dict(model.state_dict())
    resumed = torch.optim.Adam(twin.parameters(), lr=0.1)
    fresh = resumed.state_dict()
    fresh["state"] = restored
    resumed.load_state_dict(fresh)
    x = torch.randn(4, 3)
    for opt, net in ((optimizer, model), (resumed, twin)):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_site_trains_where_the_sweep_or_its_node_config_says():
    from sites.client_app import site_device

    assert site_device({}, {}).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert site_device({"device": "cpu"}, {"device": "cuda"}).type == "cpu"
    assert site_device({"device": "cuda:5"}, {}, device="cpu").type == "cpu"  # the sweep's
    assert site_device({}, {"device": "cpu"}).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="^--node-config device: cuda:5 asked"):
            site_device({"device": "cuda:5"}, {})
    with pytest.raises(ConfigError, match="^--node-config device: 'tpu' is not a device"):
        site_device({"device": "tpu"}, {})


def test_a_scaffold_site_keeps_its_control_variate(cohort_index, restore_torch_threads):
    torch.manual_seed(0)
    model = build_model(SPEC.name, **SPEC.kwargs())
    trainable = [n for n, _ in model.named_parameters()]
    ctx = context(cohort_index)
    kept = []
    for server_round, c in ((1, 0.0), (3, 0.25)):
        msg = message(model, server_round, 0)
        msg.content["control"] = ArrayRecord(
            {n: torch.full_like(p, c) for n, p in model.named_parameters()}
        )
        reply = train(msg, ctx)
        delta = {k: v.numpy() for k, v in reply.content["control-delta"].items()}
        assert sorted(delta) == sorted(trainable)
        kept.append({k: v.numpy() for k, v in ctx.state["scaffold-control"].items()})
    # c_i starts at zero, so after round 1 it is the first delta; then it moves by the second
    for name in trainable:
        np.testing.assert_allclose(kept[1][name] - kept[0][name], delta[name], atol=1e-6)
    plain = train(message(model, 1, 0), context(cohort_index))  # without SCAFFOLD: no record
    assert list(plain.content.array_records) == ["arrays"]


def personalise(msg: Message, lam: float = 0.1) -> Message:
    """``msg`` as Ditto's rule configures it (:mod:`strategies.ditto`'s config keys)."""
    msg.content["config"][PERSONALISE] = True
    msg.content["config"][LAMBDA] = lam
    return msg


def test_a_ditto_site_keeps_and_sends_its_personalised_model(cohort_index, restore_torch_threads):
    torch.manual_seed(0)
    model = build_model(SPEC.name, **SPEC.kwargs())
    ctx = context(cohort_index)
    first = train(personalise(message(model, 1, 0)), ctx)
    personal = {k: v.numpy() for k, v in first.content["personal"].items()}
    received = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(personal) == set(received)
    # lr 1e-12: the personalised model starts from the first model the site received
    np.testing.assert_allclose(personal["head.weight"], received["head.weight"], atol=1e-6)
    kept = {k: v.numpy() for k, v in ctx.state["ditto-personal"].items()}
    np.testing.assert_array_equal(kept["head.weight"], personal["head.weight"])
    # later rounds train the kept personalised model, not the received one
    ctx.state["ditto-personal"] = ArrayRecord(
        {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    second = train(personalise(message(model, 3, 1)), ctx)
    np.testing.assert_allclose(
        second.content["personal"]["head.weight"].numpy(), received["head.weight"] + 1.0, atol=1e-5
    )
    np.testing.assert_allclose(  # the global update trained the received model
        second.content["arrays"]["head.weight"].numpy(), received["head.weight"], atol=1e-6
    )


@pytest.mark.parametrize("routing", ["learned", "modality-soft"])
def test_a_site_freezes_the_routing_after_round_r(routing, cohort_index, restore_torch_threads):
    """freeze_routing_after: 1: the routing parameters a site sends back equal the received
    ones from round 2 on, while its kernels train; in round 1 both change. A modality-routed
    model trains on the site's modality (hospital-t2: the T2 logits move, FLAIR's do not)."""
    spec = ModelConfig(name="dycnn", base_width=4, depth=1, routing=routing, freeze_routing_after=1)
    torch.manual_seed(0)
    model = build_model(spec.name, **spec.kwargs())
    groups = parameter_groups(model)
    received = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    for server_round, frozen in ((1, False), (2, True)):
        set_task_identity(run_id=1, node_id=SUPERLINK_NODE_ID, task_id=1)
        instruction = TrainInstruction(
            model=spec,
            training=TrainingConfig(epochs=1, batch_size=8, lr=1e-2),
            slices=SliceConfig(size=32, empty_fraction=0.1, seed=0),
            arrival_start=0,
            arrival_stop=1,
            train_on="new",
            seed=3,
            server_round=server_round,
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "config": ConfigRecord(instruction.to_config()),
            }
        )
        msg = Message(content, dst_node_id=5, message_type="train")
        assign_message_id(msg, f"m{server_round}")
        sent = {
            k: v.numpy() for k, v in train(msg, context(cohort_index)).content["arrays"].items()
        }
        routing_keys = [k for k, g in groups.items() if g == "acp"]
        kernel_keys = [k for k, g in groups.items() if g == "kernel_bank"]
        assert routing_keys and kernel_keys
        assert all(not np.array_equal(sent[k], received[k]) for k in kernel_keys)
        unchanged = [np.array_equal(sent[k], received[k]) for k in routing_keys]
        assert all(unchanged) if frozen else not any(unchanged)
        if routing == "modality-soft" and not frozen:
            logits = sent["stem.conv1.acp.logits"]
            assert np.any(logits[0] != 0) and np.all(logits[1] == 0)  # t2 is index 0
