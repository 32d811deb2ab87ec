"""The site's instruction on the wire: one function each way, tested as a round trip."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord
from pydantic import BaseModel

from fedll.config import ModelConfig, SliceConfig, TrainingConfig
from fedll.config.instruction import TrainInstruction
from fedll.config.options import (
    FaultConfig,
    GaussianNoise,
    LwFOptions,
    ReplayOptions,
    ScaledUpdate,
)
from fedll.config.wire import flatten, unflatten
from fedll.errors import ConfigError

RICH = TrainInstruction(
    model=ModelConfig(
        name="dycnn",
        base_width=4,
        acp_stats=["mean", "std", "quantiles"],
        quantiles=[0.1, 0.9],
        routing_loss_weights={"confidence": 0.1},
        top_k=None,
        head_prior=0.02,
        freeze_routing_after=3,
    ),
    training=TrainingConfig(epochs=3, batch_size=4, optimizer="sgd", optimizer_state="keep"),
    slices=SliceConfig(size=32, empty_fraction=0.5, axis=1, seed=4),
    arrival_start=2,
    arrival_stop=5,
    train_on="all",
    seed=123456789,
    threads=2,
    continual=ReplayOptions(name="replay", buffer=3),
    fault=FaultConfig(site="hospital-t2", raise_every=2, send="nan"),
    proximal_mu=0.5,
    local_norm=True,
    server_round=7,
)


@pytest.mark.parametrize(
    "instruction",
    [
        RICH,
        RICH.model_copy(update={"fault": None, "continual": LwFOptions(name="lwf")}),
        RICH.model_copy(
            update={"model": ModelConfig(name="dycnn-grouped", routing="modality-hard")}
        ),
        TrainInstruction(
            model=ModelConfig(name="static"),
            training=TrainingConfig(),
            slices=SliceConfig(),
            arrival_start=0,
            arrival_stop=1,
            train_on="new",
            seed=0,
        ),
    ],
    ids=["every-kind-of-field", "no-fault", "modality-routed", "defaults"],
)
def test_the_instruction_round_trips_through_a_flower_config_record(instruction):
    record = ConfigRecord(instruction.to_config())  # Flower accepts every value as it is
    back = TrainInstruction.from_config(dict(record))
    assert back == instruction
    assert back.model.kwargs() == instruction.model.kwargs()


@pytest.mark.parametrize(
    ("send", "keys"),
    [
        ("sign-flip", {"fault.send": "sign-flip"}),
        (ScaledUpdate(scale=5.0), {"fault.send.scale": 5.0}),
        (ScaledUpdate(scale=-0.5), {"fault.send.scale": -0.5}),
        (GaussianNoise(gaussian=0.1), {"fault.send.gaussian": 0.1}),
    ],
    ids=["sign-flip", "scale", "negative-scale", "gaussian"],
)
def test_a_byzantine_fault_round_trips_through_a_flower_config_record(send, keys):
    fault = FaultConfig(site="hospital-t2", send=send)
    instruction = RICH.model_copy(update={"fault": fault})
    config = instruction.to_config()
    assert {k: v for k, v in config.items() if k.startswith("fault.send")} == keys
    back = TrainInstruction.from_config(dict(ConfigRecord(config)))
    assert back == instruction and back.fault is not None and back.fault.send == send


def test_the_keys_are_flat_kebab_case():
    config = RICH.to_config()
    assert config["training.batch-size"] == 4
    assert config["model.base-width"] == 4
    assert config["model.acp-stats"] == ["mean", "std", "quantiles"]
    assert config["model.routing-loss-weights.confidence"] == 0.1
    assert config["model.top-k#json"] == "null"  # a record holds no None
    assert config["continual.name"] == "replay" and config["fault.send"] == "nan"
    assert config["server-round"] == 7 and config["proximal-mu"] == 0.5


def test_keys_a_strategy_sets_override_and_foreign_keys_are_ignored():
    config = {**RICH.to_config(), "proximal-mu": 0.25, "server-round": 9, "flwr-extra": "x"}
    back = TrainInstruction.from_config(config)
    assert (back.proximal_mu, back.server_round) == (0.25, 9)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"training.epochs": 0}, "training.epochs: Input should be greater than or equal to 1"),
        ({"training.epoch": 1}, "training.epoch: Extra inputs are not permitted"),
        ({"model.top-k": 99}, "model.top_k: must be in 1..num_kernels=4, got 99"),
        ({"train-on": "some"}, "train_on"),
    ],
)
def test_a_bad_instruction_is_one_config_error(change, message):
    with pytest.raises(ConfigError, match="^train instruction from the server: ") as caught:
        TrainInstruction.from_config({**RICH.to_config(), **change})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_key_is_named():
    config = RICH.to_config()
    del config["arrival-stop"]
    with pytest.raises(ConfigError, match="arrival_stop: Field required"):
        TrainInstruction.from_config(config)


class _Nested(BaseModel):
    empty: list[int] = []
    mixed: list[object] = [1, "a"]
    nothing: dict[str, int] = {}
    deep: dict[str, dict[str, float]] = {"a": {"b": 1.5}}


def test_flatten_carries_what_a_record_cannot_hold_as_json():
    value = _Nested()
    flat = flatten(value)
    assert flat == {
        "empty#json": "[]",
        "mixed#json": '[1, "a"]',
        "nothing#json": "{}",
        "deep.a.b": 1.5,
    }
    assert _Nested.model_validate(unflatten(flat)) == value


def test_a_key_that_cannot_round_trip_is_refused():
    class Odd(BaseModel):
        weights: dict[str, float] = {"dynamic-aware": 1.0}

    with pytest.raises(ValueError, match="cannot travel in a record"):
        flatten(Odd())
