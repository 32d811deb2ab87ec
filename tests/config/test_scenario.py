"""Scenario loading: one-line errors that name the file and the key, overrides, the grid."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedll.config import (
    Scenario,
    Trial,
    apply_overrides,
    dump_scenario,
    expand_trials,
    load_scenario,
)
from fedll.config.grid import fingerprints
from fedll.config.instruction import StateKey
from fedll.config.options import GaussianNoise, ScaledUpdate
from fedll.config.rules import TRIAL_ID_BYTES
from fedll.errors import ConfigError
from fedll.federation.site_state import SiteStateStore
from fedll.run.store import TrialFiles, checkpoint_path

T2 = {"name": "hospital-t2", "modality": "t2", "patients": 2}
FLAIR = {"name": "hospital-flair", "modality": "flair", "patients": 2}


def config_error(path: Path, overrides: Sequence[str] = ()) -> str:
    """The message of the ConfigError that loading ``path`` raises; it must be one line."""
    with pytest.raises(ConfigError) as caught:
        load_scenario(path, overrides)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def assert_names(message: str, path: Path, key: str) -> None:
    assert message.startswith(f"{path}:"), message
    assert key in message, message


def test_the_tiny_scenario_loads(write_scenario):
    scenario = load_scenario(write_scenario())
    assert [s.name for s in scenario.sites] == ["hospital-t2", "hospital-flair"]
    assert scenario.stream.ordering == ["alternating"]
    assert scenario.stream.arrival_batch == [1]
    assert scenario.synthetic_patients() == 2 + 2 + 2 * 1


@pytest.mark.parametrize(
    ("updates", "key"),
    [
        pytest.param({"epochs": 1}, "epochs", id="unknown-top-level-key"),
        pytest.param({"training": {"epoch": 1}}, "training.epoch", id="unknown-nested-key"),
        pytest.param(
            {"models": {"static": {"name": 3}}}, "models.static.name", id="model-name-type"
        ),
        pytest.param({"training": {"epochs": "many"}}, "training.epochs", id="wrong-type"),
        pytest.param({"training": {"epochs": 1.5}}, "training.epochs", id="fractional-int"),
        pytest.param(
            {"sites": [T2, {**FLAIR, "patients": "two"}]},
            "sites.1.patients",
            id="wrong-type-in-list",
        ),
        pytest.param(
            {"sites": [{**T2, "modality": "t1"}, FLAIR]}, "sites.0.modality", id="modality-t1"
        ),
        pytest.param(
            {"sites": [T2, {**FLAIR, "modality": "FLAIR"}]}, "sites.1.modality", id="modality-case"
        ),
        pytest.param(
            {"stream": {"arrival_batch": -1}}, "stream.arrival_batch", id="negative-arrival-batch"
        ),
        pytest.param(
            {"stream": {"arrival_batch": [2, 0]}},
            "stream.arrival_batch",
            id="zero-arrival-batch-in-grid",
        ),
        pytest.param(
            {"sites": [T2, {**FLAIR, "name": "hospital-t2"}]}, "sites", id="duplicate-site-names"
        ),
        pytest.param(
            {"cohort": {"synthetic": {"patients": 5}}},
            "cohort.synthetic.patients",
            id="more-patients-than-the-cohort",
        ),
        pytest.param(
            {"stream": {"ordering": [["hospital-t2", "nowhere"], "alternating"]}},
            "stream.ordering",
            id="unknown-site-in-ordering",
        ),
        pytest.param(
            {"stream": {"ordering": ["hospital-t2", "nowhere"]}},
            "stream.ordering",
            id="unknown-site-in-single-ordering",
        ),
        pytest.param({"cohort": {"path": "somewhere"}}, "cohort", id="two-cohort-sources"),
        pytest.param({"sites": []}, "sites", id="no-sites"),
        pytest.param({"sites": [{**T2, "name": "a b"}, FLAIR]}, "sites.0.name", id="site-name"),
        pytest.param(
            {"models": {"wide": {"base_width": 8}}}, "models.wide.name", id="model-without-name"
        ),
        pytest.param({"seeds": ["zero"]}, "seeds.0", id="seed-type"),
        pytest.param(
            {"stream": {"arrivals_per_round": [1, 0]}},
            "stream.arrivals_per_round.1",
            id="no-arrivals-per-round",
        ),
        pytest.param(
            {"strategies": ["fedavg", "fedmagic"]}, "strategies.1: unknown name", id="strategy"
        ),
        pytest.param(
            {"strategies": [{"name": "fedprox", "nu": 1}]},
            "strategies.0.nu: unknown key",
            id="strategy-option",
        ),
        pytest.param(
            {"strategies": [{"name": "fedavg", "mu": 0.1}]},
            "strategies.0.mu: unknown key",
            id="option-of-another-strategy",
        ),
        pytest.param(
            {"strategies": [{"name": "fedprox", "mu": -1}]}, "strategies.0.mu", id="negative-mu"
        ),
        pytest.param({"strategies": [{"mu": 0.1}]}, "strategies.0: missing 'name'", id="no-name"),
        pytest.param(
            {"strategies": ["fedprox", {"name": "fedprox", "mu": 0.01}]},
            "strategies: duplicate values",
            id="same-strategy-twice",
        ),
        pytest.param({"cl": ["finetune", "forget"]}, "cl.1: unknown name", id="cl"),
        pytest.param(
            {"cl": [{"name": "replay", "buffer": 0}]}, "cl.0.buffer", id="empty-replay-buffer"
        ),
        pytest.param(
            {"faults": [{"site": "nowhere", "send": "nan"}]},
            "faults.0.site: unknown site 'nowhere'",
            id="fault-site",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "send": "zeros"}]}, "faults.0.send", id="fault"
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "send": "sign-flop"}]},
            "faults.0.send: expected nan, wrong-shape, wrong-dtype, sign-flip, {scale: F} or "
            "{gaussian: sigma}",
            id="fault-unknown-name",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "send": {"scale": float("nan")}}]},
            "faults.0.send.scale: Input should be a finite number",
            id="fault-scale-nan",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "send": {"scale": "big"}}]},
            "faults.0.send.scale: Input should be a valid number",
            id="fault-scale-not-a-number",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "send": {"gaussian": 0}}]},
            "faults.0.send.gaussian: Input should be greater than 0",
            id="fault-sigma-zero",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "send": {"gaussian": -0.1}}]},
            "faults.0.send.gaussian: Input should be greater than 0",
            id="fault-sigma-negative",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "send": {"scale": 2.0, "gaussian": 0.1}}]},
            "faults.0.send: expected nan,",
            id="fault-two-keys",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "send": {"shift": 2.0}}]},
            "faults.0.send: expected nan,",
            id="fault-unknown-key",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2", "raise_probability": 1.5}]},
            "faults.0.raise_probability",
            id="fault-probability",
        ),
        pytest.param(
            {"faults": [{"site": "hospital-t2"}, {"site": "hospital-t2", "send": "nan"}]},
            "faults.1.site",
            id="two-faults-at-a-site",
        ),
    ],
)
def test_an_invalid_value_names_the_file_and_the_key(write_scenario, updates, key):
    path = write_scenario(updates)
    assert_names(config_error(path), path, key)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"name": "dycnn", "top_k": 99}, "models.m.top_k: must be in 1..num_kernels=4, got 99"),
        ({"name": "static", "base_width": "wide"}, "models.m.base_width: Input should be"),
        ({"name": "static", "kernel": 5}, "models.m.kernel: unknown argument of 'static'"),
        ({"name": "dycnn", "acp_stats": ["mean", "median"]}, "models.m.acp_stats: Input"),
        ({"name": "dycnn", "acp_stats": []}, "models.m.acp_stats: [] must be a non-empty"),
        ({"name": "unet"}, "models.m.name: unknown model 'unet'"),
        ({"name": "static-wide", "match_kwargs": {"depth": 1}}, "models.m.match_kwargs: "),
        ({"name": "dycnn", "routing": "modality"}, "models.m.routing: Input should be"),
        (
            {"name": "dycnn", "routing": "modality-hard", "num_kernels": 3},
            "models.m.num_kernels: modality-hard routing splits the kernels into one equal set "
            "per modality, so it must be a multiple of 2, got 3",
        ),
        (
            {"name": "dycnn", "routing": "modality-soft", "top_k": 1},
            "models.m.top_k: configures the ACP; routing 'modality-soft' has none",
        ),
        ({"name": "dycnn", "freeze_routing_after": -1}, "models.m.freeze_routing_after: Input"),
        ({"name": "dycnn", "freeze_routing_after": 1.5}, "models.m.freeze_routing_after: Input"),
    ],
)
def test_load_scenario_refuses_a_bad_model_argument_naming_it(write_scenario, model, message):
    path = write_scenario({"models": {"static": None, "dycnn": None, "m": model}})
    assert config_error(path).startswith(f"{path}: {message}")


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        (
            {"models": {"huge": {"name": "dycnn", "depth": 8, "base_width": 4096}}},
            "models.huge: 1.33e+14 parameters exceed execution.max_parameters (5e+08)",
        ),
        ({"models": {"deep": {"name": "static", "depth": 12}}}, "models.deep: 1.29e+11"),
        (
            {"training": {"batch_size": 100000}, "slices": {"size": 512}},
            "models.static: a training batch of 100000 slices of 512 px needs about",
        ),
    ],
)
def test_a_model_too_large_is_refused_before_any_tensor_exists(write_scenario, updates, message):
    """Measured on the meta device (a model of terabytes is checked without memory)."""
    assert message in config_error(write_scenario(updates))


def test_the_bounds_are_settings(write_scenario):
    huge = {"name": "static", "base_width": 64}
    path = write_scenario({"models": {"m": huge}, "execution": {"max_parameters": 1000}})
    assert "execution.max_parameters (1e+03)" in config_error(path)
    limits = {"max_parameters": 10**9, "max_activation_gb": 0.001}
    assert "execution.max_activation_gb (0.001)" in config_error(
        write_scenario({"models": {"m": huge}, "execution": limits})
    )


def test_a_cohort_short_of_patients_says_how_many_are_needed(write_scenario):
    path = write_scenario({"cohort": {"synthetic": {"patients": 5}}})
    message = config_error(path)
    assert "5 patients" in message and "4 training patients" in message and "2 x 1" in message


def test_a_cohort_with_just_enough_patients_loads(write_scenario):
    scenario = load_scenario(write_scenario({"cohort": {"synthetic": {"patients": 6}}}))
    assert scenario.synthetic_patients() == 6


def test_the_unknown_ordering_site_is_named(write_scenario):
    path = write_scenario({"stream": {"ordering": ["hospital-t2", "nowhere", "hospital-flair"]}})
    assert "nowhere" in config_error(path)


def test_a_cross_field_error_starts_with_its_key(write_scenario):
    path = write_scenario({"sites": [T2, {**FLAIR, "name": "hospital-t2"}]})
    assert config_error(path).startswith(f"{path}: sites: ")


@pytest.mark.parametrize(
    "ordering",
    [
        pytest.param("sideways", id="unknown-name"),
        pytest.param("alternating:t1", id="unknown-first-modality"),
        pytest.param("random:flair", id="random-with-modality"),
        pytest.param(["hospital-t2", "hospital-flair"], id="list-missing-chunks"),
    ],
)
def test_an_ordering_the_stream_rejects_is_a_config_error(write_scenario, ordering):
    path = write_scenario({"stream": {"ordering": ordering}})
    assert_names(config_error(path), path, "stream.ordering")


def test_duplicate_grid_values_are_a_config_error(write_scenario):
    path = write_scenario({"seeds": [0, 0]})
    assert_names(config_error(path), path, "seeds")


def test_a_too_small_synthetic_shape_is_a_config_error(write_scenario):
    path = write_scenario({"cohort": {"synthetic": {"shape": [8, 8, 8]}}})
    assert_names(config_error(path), path, "cohort.synthetic.shape")


# ---------------------------------------------------------------- the file itself


def test_a_missing_file_is_named(tmp_path):
    path = tmp_path / "nowhere.yaml"
    message = config_error(path)
    assert_names(message, path, "cannot read")
    assert "No such file" in message


def test_a_directory_is_not_a_scenario(tmp_path):
    assert_names(config_error(tmp_path), tmp_path, "cannot read")


def test_invalid_yaml_names_the_file_and_line(write_scenario):
    path = write_scenario(text="name: tiny\nsites: [unclosed\nmodels: {}\n")
    message = config_error(path)
    assert_names(message, path, "not valid YAML")
    assert "line 3" in message


@pytest.mark.parametrize("text", ["", "\n# only a comment\n"], ids=["empty", "comment-only"])
def test_an_empty_file_is_named(write_scenario, text):
    path = write_scenario(text=text)
    assert_names(config_error(path), path, "empty")


def test_a_list_is_not_a_scenario(write_scenario):
    path = write_scenario(text="- name: tiny\n")
    assert_names(config_error(path), path, "mapping")


# ---------------------------------------------------------------- --set overrides


def test_overrides_set_nested_keys_and_list_items(write_scenario):
    scenario = load_scenario(
        write_scenario(),
        [
            "training.epochs=3",
            "sites.0.patients=1",
            "sites.1.name=other",
            "training.lr=0.5",
            "seeds=[0, 1]",
            "stream.ordering=blocked:flair",
        ],
    )
    assert scenario.training.epochs == 3
    assert scenario.training.lr == 0.5
    assert [(s.name, s.patients) for s in scenario.sites] == [("hospital-t2", 1), ("other", 2)]
    assert scenario.seeds == [0, 1]
    assert scenario.stream.ordering == ["blocked:flair"]


def test_later_overrides_win_and_the_file_is_untouched(write_scenario):
    path = write_scenario()
    before = path.read_text()
    scenario = load_scenario(path, ["training.epochs=2", "training.epochs=4"])
    assert scenario.training.epochs == 4
    assert path.read_text() == before


def test_apply_overrides_leaves_the_raw_mapping_alone():
    raw: dict[str, Any] = {"training": {"epochs": 1}, "sites": [{"patients": 2}]}
    out = apply_overrides(raw, ["training.epochs=5", "sites.0.patients=7"], "s.yaml")
    assert out == {"training": {"epochs": 5}, "sites": [{"patients": 7}]}
    assert raw == {"training": {"epochs": 1}, "sites": [{"patients": 2}]}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        pytest.param("training.epoch=3", "training.epoch", id="unknown-key"),
        pytest.param("training.epochs=0", "training.epochs", id="impossible-value"),
        pytest.param("sites.0.patients=0", "sites.0.patients", id="list-index-value"),
        pytest.param("sites.1.modality=t1", "sites.1.modality", id="list-index-modality"),
        pytest.param("training.epochs", "training.epochs", id="no-equals"),
        pytest.param("=3", "--set", id="no-key"),
        pytest.param("sites.5.patients=1", "sites.5.patients", id="index-out-of-range"),
        pytest.param("name.first=x", "name.first", id="descend-into-a-scalar"),
    ],
)
def test_a_bad_override_names_the_file_and_the_key(write_scenario, override, key):
    path = write_scenario()
    assert_names(config_error(path, [override]), path, key)


def test_an_override_value_that_is_not_yaml_is_a_config_error(write_scenario):
    path = write_scenario()
    assert_names(config_error(path, ["seeds=[0, 1"]), path, "seeds")


# ---------------------------------------------------------------- the grid


GRID = {
    "models": {
        "static": {"name": "static", "base_width": 4, "depth": 2},
        "dycnn": {"name": "dycnn", "base_width": 4, "depth": 2},
    },
    "stream": {
        "ordering": ["alternating", "random"],
        "arrival_batch": [1, 2],
    },
    "seeds": [0, 1, 2],
}


def test_the_grid_is_the_product_in_a_stable_order(write_scenario):
    scenario = load_scenario(write_scenario(GRID))
    trials = expand_trials(scenario)
    assert len(trials) == 2 * 2 * 2 * 3
    assert expand_trials(scenario) == trials
    # model, then ordering, then batch, then strategy, then cl, then seed
    assert trials[0] == Trial(
        model="static",
        ordering="alternating",
        arrival_batch=1,
        strategy="fedavg",
        cl="finetune",
        seed=0,
    )
    assert trials[1].seed == 1 and trials[2].seed == 2
    assert (trials[3].arrival_batch, trials[3].seed) == (2, 0)
    assert (trials[6].ordering, trials[6].arrival_batch) == ("random", 1)
    assert trials[12].model == "dycnn" and trials[12].ordering == "alternating"
    assert [t.model for t in trials] == ["static"] * 12 + ["dycnn"] * 12


def test_trial_ids_are_unique_stable_and_file_name_safe(write_scenario):
    scenario = load_scenario(write_scenario(GRID))
    ids = [t.trial_id for t in expand_trials(scenario)]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "static__alternating__b1__fedavg__finetune__s0"
    assert ids[6] == "static__random__b1__fedavg__finetune__s0"
    assert all("/" not in i and ":" not in i and " " not in i for i in ids)
    again = [t.trial_id for t in expand_trials(load_scenario(write_scenario(GRID, name="b.yaml")))]
    assert again == ids


METHODS = {
    "strategies": ["fedavg", {"name": "fedprox", "mu": 0.1}, {"name": "dynamic-aware"}],
    "cl": ["finetune", {"name": "replay", "buffer": 2}],
    "models": {"dycnn": None},
    "seeds": [0, 1],
    "joint": True,
}


LISTED = ["hospital-flair", "hospital-t2", "hospital-flair", "hospital-t2"]


def test_explicit_orderings_get_distinct_file_name_safe_ids(write_scenario):
    scenario = load_scenario(
        write_scenario({"stream": {"ordering": [LISTED, LISTED[::-1], "alternating:flair"]}})
    )
    ids = [t.trial_id for t in expand_trials(scenario)][:3]
    assert ids[0].startswith("static__list-") and ids[0].endswith("__b1__fedavg__finetune__s0")
    assert ids[1].startswith("static__list-") and ids[1] != ids[0]
    assert ids[2] == "static__alternating-flair__b1__fedavg__finetune__s0"
    assert expand_trials(scenario)[0].ordering_label == ",".join(LISTED)


def test_a_single_explicit_ordering_is_one_grid_value(write_scenario):
    listed = ["hospital-t2", "hospital-flair", "hospital-t2", "hospital-flair"]
    scenario = load_scenario(write_scenario({"stream": {"ordering": listed}}))
    assert scenario.stream.ordering == [listed]
    assert len(expand_trials(scenario)) == 2


def test_scalars_are_one_grid_value(write_scenario):
    scenario = load_scenario(
        write_scenario({"strategies": "fedavg", "seeds": 7, "stream": {"arrival_batch": 2}})
    )
    assert [s.label for s in scenario.strategies] == ["fedavg"]
    assert (scenario.seeds, scenario.stream.arrival_batch) == ([7], [2])


@pytest.mark.parametrize(
    "updates",
    [
        {},
        GRID,
        {"stream": {"ordering": [LISTED, "blocked"]}, "strategies": "fedavg"},
        {**METHODS, "faults": [{"site": "hospital-t2", "raise_every": 2}]},
        {
            "faults": [
                {"site": "hospital-t2", "send": {"scale": -3.0}},
                {"site": "hospital-flair", "send": {"gaussian": 0.05}},
            ]
        },
        {
            "stream": {"ordering": "alternating-rounds", "arrivals_per_round": [1, 2]},
            "strategies": ["fedavg", "dynamic-aware"],
            "exclude": [{"arrivals_per_round": 1, "strategy": "dynamic-aware"}],
        },
    ],
    ids=[
        "tiny",
        "grid",
        "explicit-ordering",
        "methods-and-faults",
        "byzantine-faults",
        "per-round-and-exclude",
    ],
)
def test_dump_round_trips(write_scenario, updates, tmp_path):
    original = load_scenario(write_scenario(updates))
    text = dump_scenario(original)
    dumped = tmp_path / "dumped" / "scenario.yaml"
    dumped.parent.mkdir()
    dumped.write_text(text)
    reloaded = load_scenario(dumped)
    assert reloaded == original
    # a run directory compares this text to decide whether it holds the same scenario
    assert dump_scenario(reloaded) == text
    assert isinstance(yaml.safe_load(text), dict)


def test_relative_paths_resolve_against_the_scenario_file(write_scenario, tmp_path):
    path = write_scenario({"cache_dir": "cache"}, name="sub/scenario.yaml")
    scenario = load_scenario(path)
    assert scenario.cache_dir == tmp_path / "sub" / "cache"
    assert isinstance(scenario, Scenario)


def test_strategies_and_cl_methods_are_grid_axes_and_joint_adds_the_bound(write_scenario):
    trials = expand_trials(load_scenario(write_scenario(METHODS)))
    assert len(trials) == 3 * 2 * 2 + 2  # the stream grid, then one joint trial per seed
    ids = [t.trial_id for t in trials]
    assert ids[:4] == [
        "static__alternating__b1__fedavg__finetune__s0",
        "static__alternating__b1__fedavg__finetune__s1",
        "static__alternating__b1__fedavg__replay-buffer2__s0",
        "static__alternating__b1__fedavg__replay-buffer2__s1",
    ]
    assert ids[4] == "static__alternating__b1__fedprox-mu0.1__finetune__s0"
    assert ids[8] == "static__alternating__b1__dynamic-aware__finetune__s0"
    assert ids[-2:] == ["static__joint__s0", "static__joint__s1"]
    joint = trials[-1]
    assert (joint.kind, joint.cl_label, joint.strategy_label, joint.ordering_label) == (
        "joint",
        "joint",
        "none",
        "none",
    )
    assert trials[4].strategy.options() == {"mu": 0.1, "norm": "average"}
    assert trials[2].cl.options() == {"buffer": 2}


def test_labels_name_the_options_that_differ_from_their_defaults(write_scenario):
    scenario = load_scenario(
        write_scenario(
            {
                "strategies": [
                    {"name": "fedprox", "mu": 0.01},  # the default: just "fedprox"
                    {"name": "fedavgm", "server_lr": 0.5},
                    {"name": "fedavg", "norm": "local"},
                    "fedbn",
                ],
                "cl": [{"name": "lwf", "weight": 2.0, "temperature": 1.0}, "ewc"],
            }
        )
    )
    assert [s.label for s in scenario.strategies] == [
        "fedprox",
        "fedavgm-serverlr0.5",
        "fedavg-normlocal",
        "fedbn",
    ]
    assert [c.label for c in scenario.cl] == ["lwf-weight2.0-temperature1.0", "ewc"]


def test_faults_are_read_per_site(write_scenario):
    faults = [
        {"site": "hospital-t2", "raise_probability": 0.5},
        {"site": "hospital-flair", "send": "nan"},
    ]
    scenario = load_scenario(write_scenario({"faults": faults}))
    assert [(f.site, f.raise_probability, f.send) for f in scenario.faults] == [
        ("hospital-t2", 0.5, None),
        ("hospital-flair", 0.0, "nan"),
    ]


def test_byzantine_faults_are_read_in_their_yaml_forms_and_fingerprinted(write_scenario):
    text = write_scenario().read_text() + (
        "faults:\n"
        "  - {site: hospital-t2, send: sign-flip}\n"
        "  - site: hospital-flair\n"
        "    send: {scale: 5.0}\n"
    )
    scenario = load_scenario(write_scenario(text=text))
    assert [f.send for f in scenario.faults] == ["sign-flip", ScaledUpdate(scale=5.0)]
    noisy = load_scenario(
        write_scenario({"faults": [{"site": "hospital-t2", "send": {"gaussian": 0.1}}]})
    )
    assert noisy.faults[0].send == GaussianNoise(gaussian=0.1)
    clean = load_scenario(write_scenario())
    prints = [fingerprints(s) for s in (scenario, noisy, clean)]
    # the fault is no axis (trial ids agree) but it decides the results (fingerprints differ)
    assert prints[0].keys() == prints[1].keys() == prints[2].keys()
    for trial_id in prints[0]:
        assert len({p[trial_id] for p in prints}) == 3


def test_arrivals_per_round_is_a_grid_axis_after_the_batch(write_scenario):
    trials = expand_trials(
        load_scenario(
            write_scenario(
                {
                    "stream": {"arrivals_per_round": [1, 2]},
                    "seeds": [0, 1],
                    "models": {"dycnn": None},
                }
            )
        )
    )
    assert [(t.arrivals_per_round, t.seed) for t in trials] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    # one arrival per round (the default) keeps the ids earlier runs wrote
    assert [t.trial_id for t in trials[::2]] == [
        "static__alternating__b1__fedavg__finetune__s0",
        "static__alternating__b1__r2__fedavg__finetune__s0",
    ]
    scalar = load_scenario(write_scenario({"stream": {"arrivals_per_round": 2}}))
    assert scalar.stream.arrivals_per_round == [2]


EXCLUDING = {
    **METHODS,
    "models": {},  # static and dycnn
    "strategies": ["fedavg", "dynamic-aware"],
    "stream": {"arrivals_per_round": [1, 2]},
    "cl": ["finetune"],
}


def test_exclude_leaves_out_the_matching_stream_trials_only(write_scenario):
    everything = expand_trials(load_scenario(write_scenario(EXCLUDING)))
    exclude = [
        {"model": "static", "strategy": "dynamic-aware"},  # the same as FedAvg for a static net
        {"arrivals_per_round": 1, "strategy": "dynamic-aware"},  # one site: nothing to weigh
    ]
    kept = expand_trials(load_scenario(write_scenario({**EXCLUDING, "exclude": exclude})))
    dropped = [
        t
        for t in everything
        if t.kind == "stream"
        and t.strategy_label == "dynamic-aware"
        and (t.model == "static" or t.arrivals_per_round == 1)
    ]
    # 2 models x 2 arrivals per round x 2 strategies x 2 seeds, + 2 x 2 joint; the entries
    # overlap on static with one arrival per round
    assert len(everything) == 2 * 2 * 2 * 2 + 2 * 2 and len(dropped) == (2 + 2 - 1) * 2
    assert kept == [t for t in everything if t not in dropped]
    assert sum(t.kind == "joint" for t in kept) == 4  # joint trials are never excluded


@pytest.mark.parametrize(
    ("exclude", "key"),
    [
        pytest.param([{"modle": "static"}], "exclude.0.modle: unknown axis"),
        pytest.param([{}], "exclude.0: an empty entry"),
        pytest.param(
            [{"model": "static", "strategy": "fedavg"}, {"sed": 5}], "exclude.1.sed", id="second"
        ),
        pytest.param([{"seed": 0}, {"seed": 1}], "exclude: every trial", id="everything"),
        pytest.param(["static"], "exclude.0", id="not-a-mapping"),
    ],
)
def test_a_bad_exclude_entry_is_named(write_scenario, exclude, key):
    path = write_scenario({**EXCLUDING, "exclude": exclude})
    assert_names(config_error(path), path, key)


def test_an_exclude_value_off_its_axis_warns_so_overrides_can_narrow_the_grid(
    write_scenario, caplog
):
    path = write_scenario({**EXCLUDING, "exclude": [{"strategy": "dynamic-aware"}]})
    narrowed = load_scenario(path, ["strategies=[fedavg]"])
    assert len(expand_trials(narrowed)) == 2 * 2 * 2 + 4  # nothing excluded
    assert "exclude.0.strategy: 'dynamic-aware' is not a value of the grid" in caplog.text


# ---------------------------------------------------------------- tracking


def test_tracking_is_optional_checked_and_no_part_of_a_trial_s_fingerprint(write_scenario):
    from fedll.config.grid import fingerprints

    plain = load_scenario(write_scenario())
    assert plain.tracking.tensorboard is False and plain.tracking.mlflow is None
    tracked = load_scenario(
        write_scenario({"tracking": {"tensorboard": True, "mlflow": "sqlite:///x.db"}}, "t.yaml")
    )
    assert tracked.tracking.tensorboard is True and tracked.tracking.mlflow == "sqlite:///x.db"
    assert fingerprints(tracked) == fingerprints(plain)  # tracking does not change results
    assert load_scenario(write_scenario({"tracking": {"mlflow": False}})).tracking.mlflow is None
    assert load_scenario(write_scenario({"tracking": {"mlflow": True}})).tracking.mlflow is True
    path = write_scenario({"tracking": {"wandb": True}})
    assert_names(config_error(path), path, "tracking.wandb: unknown key")
    path = write_scenario({"tracking": {"mlflow": " "}})
    assert_names(config_error(path), path, "tracking.mlflow")


# ---------------------------------------------------------------- hostile values: bounds


def test_a_grid_past_the_bound_is_refused_naming_its_longest_axis(write_scenario):
    path = write_scenario({"seeds": list(range(5001))})
    message = config_error(path)
    assert_names(message, path, "seeds: 5001 values make a grid of 10002 trials")
    assert "(2 models x 1 stream.ordering x" in message and "more than 10000" in message


def test_a_grid_at_the_bound_loads(write_scenario):
    assert len(expand_trials(load_scenario(write_scenario({"seeds": list(range(5000))})))) == 10000


def test_more_exclude_entries_than_the_bound_are_refused(write_scenario):
    path = write_scenario({"seeds": list(range(101)), "exclude": [{"seed": i} for i in range(101)]})
    assert_names(config_error(path), path, "exclude: List should have at most 100 items")


def test_more_sites_than_the_bound_are_refused(write_scenario):
    sites = [{"name": f"h{i}", "modality": "t2", "patients": 1} for i in range(1001)]
    path = write_scenario({"sites": sites})
    assert_names(config_error(path), path, "sites: List should have at most 1000 items")


def test_more_training_patients_than_the_bound_are_refused(write_scenario):
    # a thousand sites of 20,000 (each within its own bound) took minutes and GBs to stream
    sites = [{"name": f"h{i}", "modality": "t2", "patients": 10_000} for i in range(2)]
    path = write_scenario({"sites": [*sites, {**FLAIR, "patients": 1}]})
    assert_names(config_error(path), path, "sites: 20001 training patients in all, more than 20000")


def test_more_models_than_the_bound_are_refused_before_they_are_built(write_scenario):
    models = {f"m{i}": {"name": "static", "base_width": 4, "depth": 2} for i in range(5000)}
    path = write_scenario({"models": models})
    start = time.perf_counter()
    message = config_error(path)
    assert time.perf_counter() - start < 20  # 5000 models built took about 45 s
    assert_names(message, path, "models: Dictionary should have at most 100 items")


# ---------------------------------------------------------------- hostile values: Byzantine rules

THREE = [T2, FLAIR, {"name": "hospital-t2-b", "modality": "t2", "patients": 2}]
"""Three sites of two patients: with arrivals of one patient and three arrivals per round,
the alternating ordering gives rounds t2, flair, t2-b and flair, t2, t2-b (3 replies each)."""


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        pytest.param(
            {"strategies": [{"name": "krum", "num_malicious_nodes": 5}]},
            "strategies.0.num_malicious_nodes: krum with num_malicious_nodes 5 needs at least "
            "13 replies in a round (more than 2f + 2, Krum's condition), but round 1 of the "
            "stream (ordering alternating, arrival_batch 1, arrivals_per_round 1) has 1",
            id="krum-f5-one-reply",
        ),
        pytest.param(
            {"strategies": ["fedavg", {"name": "bulyan", "num_malicious_nodes": 1}],
             "stream": {"arrivals_per_round": 2}},
            "strategies.1.num_malicious_nodes: bulyan with num_malicious_nodes 1 needs at least "
            "7 replies in a round (4f + 3; with fewer, Flower's Bulyan keeps the model), but "
            "round 1 of the stream (ordering alternating, arrival_batch 1, arrivals_per_round 2) "
            "has 2",
            id="bulyan-f1-two-replies",
        ),
        pytest.param(
            {"strategies": ["bulyan"], "stream": {"arrivals_per_round": 2}},
            "needs at least 3 replies in a round (4f + 3",
            id="bulyan-f0-two-replies",
        ),
        pytest.param(
            {"strategies": [{"name": "multikrum", "num_nodes_to_select": 4}], "sites": THREE,
             "stream": {"arrivals_per_round": 3}},
            "strategies.0.num_nodes_to_select: 4 updates cannot be selected from the 3 replies "
            "of round 1",
            id="multikrum-selects-more-than-it-gets",
        ),
        pytest.param(
            {"strategies": ["krum"], "sites": THREE, "stream": {"arrivals_per_round": 3},
             "faults": [{"site": "hospital-t2-b", "send": "nan"}]},
            "round 1 of the stream (ordering alternating, arrival_batch 1, arrivals_per_round 3) "
            "has 2",
            id="a-rejected-update-is-no-reply",
        ),
        pytest.param(
            {"strategies": ["krum"], "sites": THREE, "stream": {"arrivals_per_round": 3},
             "faults": [{"site": "hospital-flair", "raise_every": 2}]},
            "round 2 of the stream",
            id="a-site-that-raises-in-round-2",
        ),
        pytest.param(
            {"strategies": ["krum"], "sites": THREE, "stream": {"arrivals_per_round": 3},
             "faults": [{"site": "hospital-flair", "raise_probability": 1.0}]},
            "round 1 of the stream",
            id="a-site-that-always-raises",
        ),
        pytest.param(
            {"strategies": ["krum"], "sites": THREE, "stream": {"arrivals_per_round": [3, 1]}},
            "arrivals_per_round 1) has 1",
            id="one-of-the-streams",
        ),
    ],
)  # fmt: skip
def test_a_byzantine_rule_that_cannot_hold_in_a_round_is_refused(write_scenario, updates, message):
    path = write_scenario(updates)
    assert_names(config_error(path), path, message)


def test_a_byzantine_rule_is_checked_on_each_listed_ordering(write_scenario):
    # 3 sites of 2 patients, 3 per round: the first list's rounds have 3 sites each, the
    # second's first round has hospital-t2 twice and hospital-flair (2 replies)
    first = ["hospital-t2", "hospital-flair", "hospital-t2-b"] * 2
    second = ["hospital-t2", "hospital-t2", "hospital-flair", "hospital-flair", "hospital-t2-b",
              "hospital-t2-b"]  # fmt: skip
    updates = {"sites": THREE, "strategies": ["krum"], "stream": {"arrivals_per_round": 3}}
    load_scenario(write_scenario({**updates, "stream": {"arrivals_per_round": 3,
                                                        "ordering": [first]}}))  # fmt: skip
    path = write_scenario({**updates, "stream": {"arrivals_per_round": 3,
                                                 "ordering": [first, second]}})  # fmt: skip
    assert_names(config_error(path), path, "round 1 of the stream (ordering stream.ordering.1 "
                 "(a list), arrival_batch 1, arrivals_per_round 3) has 2")  # fmt: skip


def test_a_random_ordering_is_checked_for_each_seed(write_scenario):
    # 8 sites of 1 patient and 4 per round: every round has 4 distinct sites, whatever the
    # seed; with 2 patients each, some seed puts one site twice into a round
    eight = [{"name": f"h{i}", "modality": ("t2", "flair")[i % 2], "patients": 1}
             for i in range(8)]  # fmt: skip
    updates = {"strategies": ["krum"], "seeds": list(range(20)),
               "stream": {"ordering": "random", "arrivals_per_round": 4}}  # fmt: skip
    load_scenario(write_scenario({**updates, "sites": eight}))
    twice = [{**site, "patients": 2} for site in eight]
    path = write_scenario({**updates, "sites": twice})
    message = config_error(path)
    assert_names(message, path, "has 2 (its rounds have 2 to 4)")
    assert "(ordering random, arrival_batch 1, arrivals_per_round 4, seed " in message


def test_thousands_of_random_seeds_of_a_large_cohort_are_checked_in_seconds(write_scenario):
    # 990 sites of 20 patients, 1000 per round, 1000 seeds: building each seed's stream took
    # 70 s; the reply counts of every round of every seed take about one
    sites = [{"name": f"h{i}", "modality": ("t2", "flair")[i % 2], "patients": 20}
             for i in range(990)]  # fmt: skip
    path = write_scenario({
        "sites": sites, "strategies": ["krum"], "seeds": list(range(1000)), "models": ONLY_LONG,
        "stream": {"ordering": "random", "arrivals_per_round": 1000},
    })  # fmt: skip
    start = time.perf_counter()
    assert len(expand_trials(load_scenario(path))) == 1000
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize(
    "updates",
    [
        pytest.param({"strategies": ["krum", "multikrum", "bulyan"]}, id="three-replies"),
        pytest.param(
            {"strategies": [{"name": "multikrum", "num_nodes_to_select": 3}]}, id="select-all"
        ),
        pytest.param(
            {"strategies": ["krum"],
             "faults": [{"site": "hospital-t2", "send": "sign-flip"},
                        {"site": "hospital-flair", "raise_probability": 0.5}]},
            id="byzantine-and-random-faults-reply",
        ),
        pytest.param(
            {"strategies": ["fedavg", "krum"], "stream": {"arrivals_per_round": [3, 1]},
             "exclude": [{"strategy": "krum", "arrivals_per_round": 1}]},
            id="the-short-stream-excluded",
        ),
    ],
)  # fmt: skip
def test_a_byzantine_rule_with_enough_replies_in_every_round_loads(write_scenario, updates):
    base = {"sites": THREE, "stream": {"arrivals_per_round": 3}}
    load_scenario(write_scenario({**base, **updates}))


# ---------------------------------------------------------------- hostile values: trial ids

LONG = "m" * 100  # a legal model key
ONLY_LONG = {"static": None, "dycnn": None, LONG: {"name": "static", "base_width": 4, "depth": 2}}
"""The tiny scenario's models replaced by one of key LONG."""


def test_a_trial_id_at_the_file_name_bound_loads_and_one_byte_more_is_refused(write_scenario):
    # 100 + len("__alternating__b1__fedavg__") 27 + len("replay-buffer") 13 + 58 digits
    # + len("__s0") 4 = 202 bytes
    models = ONLY_LONG
    scenario = load_scenario(
        write_scenario({"models": models, "cl": [{"name": "replay", "buffer": int("1" * 58)}]})
    )
    assert [len(t.trial_id) for t in expand_trials(scenario)] == [202]
    path = write_scenario({"models": models, "cl": [{"name": "replay", "buffer": int("1" * 59)}]})
    message = config_error(path)
    assert_names(message, path, f"models.{LONG}: the trial id 'mmmm")
    assert "is 203 bytes, over the 202 that its files' names allow" in message


def test_every_file_named_after_a_trial_id_at_the_bound_fits_a_file_name(write_scenario):
    """Written atomically (``.<name>.<pid of up to 7 digits>.<12 hex>.tmp``), the longest
    file name fedll builds around a trial id of TRIAL_ID_BYTES is 255 bytes: the site's kept
    state (the trial's own files, checkpoint and kept model are shorter)."""
    scenario = load_scenario(write_scenario())
    fingerprint = next(iter(fingerprints(scenario).values()))
    trial_id, run_dir = "t" * TRIAL_ID_BYTES, Path("run")
    key = StateKey(trial=trial_id, fingerprint=fingerprint, federation="1")
    files = TrialFiles.of(run_dir, trial_id)  # results, attention, model, seal, ...
    names = [p.name for p in (*dataclasses.astuple(files), checkpoint_path(run_dir, trial_id))]
    state = SiteStateStore(run_dir, "hospital-t2").path(key).name
    written = [len(f".{name}.{9_999_999}.{'f' * 12}.tmp".encode()) for name in [*names, state]]
    assert max(written) == len(f".{state}.{9_999_999}.{'f' * 12}.tmp".encode()) == 255


def test_a_long_strategy_label_is_named_when_it_is_the_longest_part(write_scenario):
    dp = {"noise_multiplier": 0.30000000000000004, "clipping_norm": 0.30000000000000004,
          "delta": 0.000010000000000000001}  # fmt: skip
    long = 0.30000000000000004
    strategies = [{"name": "fedadam", "eta": long, "eta_l": long, "beta_1": long, "tau": long,
                   "dp": dp}]  # fmt: skip
    path = write_scenario({"models": ONLY_LONG, "strategies": strategies})
    assert_names(config_error(path), path, "strategies.0: the trial id")


def test_a_string_option_that_cannot_name_a_file_is_refused(write_scenario):
    path = write_scenario({"strategies": [{"name": "qfedavg", "train_loss_key": "../../etc/x"}]})
    message = config_error(path)
    assert_names(message, path, "strategies.0: 'qfedavg-trainlosskey../../etc/x' is part of")


def test_existing_trial_ids_do_not_change(write_scenario):
    scenario = load_scenario(write_scenario({**METHODS, "models": ONLY_LONG}))
    ids = [t.trial_id for t in expand_trials(scenario)]
    assert ids[:2] == [f"{LONG}__alternating__b1__fedavg__finetune__s0",
                       f"{LONG}__alternating__b1__fedavg__finetune__s1"]  # fmt: skip
    assert ids[-1] == f"{LONG}__joint__s1"


# ---------------------------------------------------------------- hostile values: booleans


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("seeds=true", "seeds"),
        ("seeds=[0, yes]", "seeds.1"),
        ("training.epochs=true", "training.epochs"),
        ("training.batch_size=on", "training.batch_size"),
        ("training.lr=true", "training.lr"),
        ("slices.axis=true", "slices.axis"),
        ("slices.size=true", "slices.size"),
        ("cohort.synthetic.shape=[48, true, 44]", "cohort.synthetic.shape.1"),
        ("cohort.synthetic.seed=true", "cohort.synthetic.seed"),
        ("sites.0.patients=true", "sites.0.patients"),
        ("test.patients_per_modality=false", "test.patients_per_modality"),
        ("stream.arrival_batch=true", "stream.arrival_batch"),
        ("stream.arrivals_per_round=[1, true]", "stream.arrivals_per_round.1"),
        ("strategies=[{name: krum, num_malicious_nodes: true}]",
         "strategies.0.num_malicious_nodes"),
        ("strategies=[{name: fedprox, mu: true}]", "strategies.0.mu"),
        ("strategies=[{name: fedavg, dp: {noise_multiplier: true, clipping_norm: 1}}]",
         "strategies.0.dp.noise_multiplier"),
        ("cl=[{name: replay, buffer: true}]", "cl.0.buffer"),
        ("faults=[{site: hospital-t2, raise_every: true}]", "faults.0.raise_every"),
        ("faults=[{site: hospital-t2, send: {scale: true}}]", "faults.0.send.scale"),
        ("execution.max_concurrent=true", "execution.max_concurrent"),
        ("execution.gpus_per_trial=true", "execution.gpus_per_trial"),
        ("evaluation.surface_tolerance_mm=true", "evaluation.surface_tolerance_mm"),
    ],
)  # fmt: skip
def test_a_boolean_is_no_number(write_scenario, override, key):
    path = write_scenario()
    message = config_error(path, [override])
    assert_names(message, path, f"{key}: expected a number, got the boolean ")


def test_booleans_stay_booleans_and_numbers_numbers(write_scenario):
    overrides = ["execution.deterministic=true", "tracking.mlflow=true", "seeds=[0, 1]",
                 "training.lr=1"]  # fmt: skip
    scenario = load_scenario(write_scenario(), overrides)
    assert scenario.execution.deterministic is True and scenario.tracking.mlflow is True
    assert scenario.seeds == [0, 1] and scenario.training.lr == 1.0


# ---------------------------------------------------------------- hostile values: names


@pytest.mark.parametrize(
    ("name", "why"),
    [
        pytest.param("hôpital", "names outside ASCII are refused: Unicode spells one name",
                     id="non-ascii"),
        pytest.param("hospitаl", "names outside ASCII", id="cyrillic-a"),
        pytest.param("hospital\n", "1-100 ASCII letters", id="trailing-newline"),
    ],
)  # fmt: skip
def test_a_site_name_that_is_no_portable_file_name_is_refused_saying_why(write_scenario, name, why):
    path = write_scenario({"sites": [{**T2, "name": name}, FLAIR]})
    message = config_error(path)
    assert_names(message, path, "sites.0.name: name")
    assert why in message
