"""The command line: bad input is one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from fedll.cli import app
from fedll.config import Trial, dump_scenario, expand_trials, load_scenario
from fedll.config.grid import fingerprints, trial_fingerprint
from fedll.errors import DataError
from fedll.results.rows import TrialResults
from fedll.run.run_dir import claim, same_scenario
from fedll.run.store import verify_trial, write_trial

REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *names: str) -> str:
    """Exit 2, nothing on stdout, one 'error: ...' line on stderr naming ``names``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for name in names:
        assert name in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


# ---------------------------------------------------------------- fedll run --dry-run


def test_dry_run_lists_the_trials_and_runs_nothing(write_scenario, tmp_path):
    out = tmp_path / "run"
    result = invoke("run", write_scenario(), "--out", out, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "2 trials of tiny" in result.stdout
    for model in ("static", "dycnn"):
        assert model in result.stdout
    assert not out.exists()


def test_dry_run_counts_each_stream_s_rounds_once(write_scenario):
    # 990 sites of 20 patients, 250 seeds of a random and of a named ordering: building each
    # trial's stream took 100 s; each stream is now counted once, a random one from its chunks
    sites = [{"name": f"h{i}", "modality": ("t2", "flair")[i % 2], "patients": 20}
             for i in range(990)]  # fmt: skip
    path = write_scenario({
        "sites": sites, "models": {"dycnn": None}, "seeds": list(range(250)),
        "stream": {"ordering": ["random", "blocked"], "arrival_batch": 1,
                   "arrivals_per_round": 1000},
    })  # fmt: skip
    start = time.perf_counter()
    result = invoke("run", path, "--dry-run")
    assert time.perf_counter() - start < 30
    assert result.exit_code == 0, result.output
    assert "500 trials of tiny" in result.stdout
    rows = [line.split("│") for line in result.stdout.splitlines() if line.startswith("│")]
    rows = [row for row in rows if row[1].strip()]  # not the second line of a folded name
    assert len(rows) == 500
    assert {row[-2].strip() for row in rows} == {"20"}  # 19,800 arrivals, 1000 a round


def test_dry_run_applies_overrides(write_scenario):
    result = invoke(
        "run",
        write_scenario(),
        "--dry-run",
        "--set",
        "seeds=[0, 1, 2]",
        "--set",
        "stream.arrival_batch=[1, 2]",
    )
    assert result.exit_code == 0, result.output
    assert "12 trials of tiny" in result.stdout


@pytest.mark.parametrize(
    ("name", "trials"),
    [
        ("quickstart", 24),
        ("federated", 30),
        ("paper", 30),
        ("routing-study", 177),
        ("robust", 10),
        ("dp", 5),
        ("deploy", 1),  # the deployment walk-through's: one trial, as `flwr run` runs one
    ],
)
def test_the_shipped_scenarios_are_valid(name, trials):
    result = invoke("run", REPO / "scenarios" / f"{name}.yaml", "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"{trials} trials of {name}" in result.stdout


# ---------------------------------------------------------------- fedll run: bad input


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        pytest.param(["models.static.name=unet9000"], "models.static.name", id="unknown-model"),
        pytest.param(["strategies=[fedavg, fedmagic]"], "strategies.1", id="unknown-strategy"),
        pytest.param(["training.epoch=2"], "training.epoch", id="unknown-key"),
        pytest.param(["sites.0.modality=t1"], "sites.0.modality", id="bad-modality"),
        pytest.param(["stream.arrival_batch=-2"], "stream.arrival_batch", id="negative-batch"),
        pytest.param(["training.epochs"], "training.epochs", id="set-without-value"),
        pytest.param(["models.static.base_width=wide"], "models.static", id="model-kwarg-type"),
    ],
)
def test_run_with_bad_input_exits_2_naming_the_file_and_key(write_scenario, overrides, key):
    path = write_scenario()
    args = [a for o in overrides for a in ("--set", o)]
    result = invoke("run", path, "--dry-run", *args)
    assert_one_line_error(result, str(path), key)


@pytest.mark.parametrize(
    "override",
    [
        pytest.param("models.static.kernel=5", id="unknown-kwarg"),
        pytest.param("models.dycnn.routing_loss_weights={sparsity: 1}", id="bad-nested-kwarg"),
        pytest.param("models.static.base_width=-3", id="impossible-kwarg"),
    ],
)
def test_a_bad_model_kwarg_names_the_file_and_the_argument(write_scenario, override):
    path = write_scenario()
    result = invoke("run", path, "--dry-run", "--set", override)
    key = override.split("=")[0]  # models.static.kernel, ...
    assert_one_line_error(result, str(path), f"{key}: ")


@pytest.mark.parametrize("ordering", ["sideways", "blocked:t1"])
def test_run_with_an_impossible_ordering_exits_2_before_running(write_scenario, tmp_path, ordering):
    path = write_scenario()
    run_dir = tmp_path / "run"
    result = invoke(
        "run", path, "--out", run_dir, "--local", "--set", f"stream.ordering={ordering}"
    )
    assert_one_line_error(result, str(path), "stream.ordering")
    assert not run_dir.exists()


def test_dry_run_with_an_impossible_ordering_exits_2(write_scenario):
    path = write_scenario()
    result = invoke("run", path, "--dry-run", "--set", "stream.ordering=blocked:t1")
    assert_one_line_error(result, str(path), "ordering", "t1")


def test_dry_run_with_a_bad_byzantine_fault_exits_2(write_scenario):
    path = write_scenario({"faults": [{"site": "hospital-t2", "send": {"gaussian": -1}}]})
    result = invoke("run", path, "--dry-run")
    assert_one_line_error(result, str(path), "faults.0.send.gaussian", "greater than 0")


@pytest.mark.parametrize("cpus", ["0", "-1"])
def test_run_with_a_non_positive_cpus_per_trial_exits_2(write_scenario, cpus):
    result = invoke("run", write_scenario(), "--dry-run", "--cpus-per-trial", cpus)
    assert result.exit_code == 2, result.output
    assert "--cpus-per-trial" in result.stderr


def test_run_with_a_missing_scenario_exits_2(tmp_path):
    path = tmp_path / "missing.yaml"
    assert_one_line_error(invoke("run", path, "--dry-run"), str(path))


def test_run_with_an_empty_scenario_exits_2(write_scenario):
    path = write_scenario(text="")
    assert_one_line_error(invoke("run", path), str(path), "empty")


def test_run_with_invalid_yaml_exits_2(write_scenario):
    path = write_scenario(text="sites: [\n")
    assert_one_line_error(invoke("run", path), str(path), "YAML")


def finish_a_trial(run_dir: Path, scenario) -> None:
    """Seal one (empty) trial of ``scenario`` in ``run_dir``, as a finished run would."""
    trial = expand_trials(scenario)[0]
    write_trial(run_dir, TrialResults(trial=trial, stream=()), trial_fingerprint(scenario, trial))


def test_run_refuses_a_run_dir_holding_another_scenario_s_finished_trial(write_scenario, tmp_path):
    path = write_scenario()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    held = load_scenario(path, ["training.epochs=2"])
    other = dump_scenario(held)
    (run_dir / "scenario.yaml").write_text(other)
    finish_a_trial(run_dir, held)
    result = invoke("run", path, "--out", run_dir, "--local")
    assert_one_line_error(result, str(run_dir / "scenario.yaml"), "different scenario")
    assert "1 finished trial(s)" in result.stderr
    assert (run_dir / "scenario.yaml").read_text() == other
    assert sorted(p.name for p in run_dir.iterdir()) == ["scenario.yaml", "trials"]


def test_a_run_dir_whose_scenario_finished_nothing_takes_the_corrected_one(
    write_scenario, tmp_path
):
    """A failed preparation (or a run stopped before any trial finished) locks nothing."""
    path = write_scenario()
    scenario = load_scenario(path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(load_scenario(path, ["seeds=[5]"])))
    (run_dir / "cohort.json").write_text("{}")  # the old split goes with it
    claim(run_dir, scenario)
    assert (run_dir / "scenario.yaml").read_text() == dump_scenario(scenario)
    assert not (run_dir / "cohort.json").exists()
    finish_a_trial(run_dir, scenario)
    claim(run_dir, scenario)  # the same scenario resumes
    with pytest.raises(DataError, match="holds a different scenario with 1 finished trial"):
        claim(run_dir, load_scenario(path, ["seeds=[5]"]))


def test_a_run_dir_grows_to_a_scenario_that_repeats_its_finished_trials(write_scenario, tmp_path):
    """More seeds (or models) on a run with finished trials: they are kept, and the split
    with them; a scenario that also changes a setting is still refused."""
    path = write_scenario()
    scenario = load_scenario(path)
    run_dir = tmp_path / "run"
    claim(run_dir, scenario)
    (run_dir / "cohort.json").write_text("{}")
    finish_a_trial(run_dir, scenario)
    grown = load_scenario(path, [f"seeds={[*scenario.seeds, 5]}"])
    assert len(expand_trials(grown)) > len(expand_trials(scenario))
    claim(run_dir, grown)
    assert (run_dir / "scenario.yaml").read_text() == dump_scenario(grown)
    assert (run_dir / "cohort.json").read_text() == "{}"
    held = fingerprints(grown)
    finished = expand_trials(scenario)[0].trial_id
    assert verify_trial(run_dir, finished, held[finished]) is None
    with pytest.raises(DataError, match="a run may only grow"):
        claim(run_dir, load_scenario(path, [f"seeds={[*scenario.seeds, 5]}", "training.epochs=7"]))


def test_out_may_not_be_a_file(write_scenario, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    result = invoke("run", write_scenario(), "--out", target, "--local")
    assert_one_line_error(result, str(target), "is a file")


def test_a_run_dir_written_by_an_earlier_fedll_is_the_same_scenario(write_scenario, tmp_path):
    # earlier releases wrote a scalar arrivals_per_round; it parses to today's one-value list
    scenario = load_scenario(write_scenario())
    resolved = dump_scenario(scenario)
    raw = yaml.safe_load(resolved)
    raw["stream"]["arrivals_per_round"] = 1
    saved = tmp_path / "scenario.yaml"
    saved.write_text(yaml.safe_dump(raw))
    assert saved.read_text() != resolved
    assert same_scenario(saved, resolved, scenario)
    raw["training"]["epochs"] += 1
    saved.write_text(yaml.safe_dump(raw))
    assert not same_scenario(saved, resolved, scenario)
    saved.write_text("sites: [\n")
    assert not same_scenario(saved, resolved, scenario)


def test_a_run_dir_may_add_tracking_to_its_scenario(write_scenario, tmp_path):
    scenario = load_scenario(write_scenario())
    saved = tmp_path / "scenario.yaml"
    saved.write_text(dump_scenario(scenario))
    tracked = load_scenario(write_scenario({"tracking": {"tensorboard": True}}, "t.yaml"))
    assert same_scenario(saved, dump_scenario(tracked), tracked)
    other = load_scenario(
        write_scenario({"tracking": {"tensorboard": True}, "seeds": [3]}, "o.yaml")
    )
    assert not same_scenario(saved, dump_scenario(other), other)


def test_impossible_value_through_the_entry_point_has_no_traceback(
    write_scenario, tmp_path, run_fedll
):
    """The real console script: exit 2, one line on stderr, no 'Traceback'."""
    path = write_scenario()
    done = run_fedll(
        "run",
        path,
        "--out",
        tmp_path / "run",
        "--local",
        "--set",
        "training.epochs=0",
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "training.epochs" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_an_override_that_is_not_yaml_has_no_traceback(write_scenario, tmp_path, run_fedll):
    path = write_scenario()
    done = run_fedll("run", path, "--dry-run", "--set", "seeds=[0, 1", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


# ---------------------------------------------------------------- fedll report / cohort


def test_report_without_results_exits_2(tmp_path):
    assert_one_line_error(invoke("report", tmp_path), str(tmp_path / "results.csv"))


def test_report_on_a_bad_results_file_exits_2(tmp_path):
    (tmp_path / "results.csv").write_text("trial,round\nx,0\n")
    assert_one_line_error(invoke("report", tmp_path), "results.csv", "missing columns")


def sealed_run(run_dir: Path, scenario_path: Path) -> dict[str, bytes]:
    """A run directory as `fedll run` leaves it: the scenario, every trial sealed (rounds
    0..4, one made-up case per modality with Dice, HD95 and surface Dice), results.csv
    collected and the report built; returns the forgetting tables' bytes."""
    from fedll.run.collect import collect
    from fedll.run.planning import trial_stream

    scenario = load_scenario(scenario_path)
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(scenario))
    for k, trial in enumerate(expand_trials(scenario)):
        stream = trial_stream(scenario, trial)
        results = TrialResults(trial=trial, stream=stream)
        for rnd in range(len(stream) + 1):
            for m, modality in enumerate(("t2", "flair")):
                dice = round(0.1 + 0.15 * rnd * (m + 1) / (k + 2), 3)
                results.add_round(
                    rnd, modality, [f"{modality}-case"], [dice], {},
                    hd95=[10.0 - rnd], surface_dice=[dice], evaluation=scenario.evaluation,
                )  # fmt: skip
        write_trial(run_dir, results, trial_fingerprint(scenario, trial))
    collect(run_dir, fingerprints(scenario))
    assert invoke("report", run_dir).exit_code == 0
    return {p.name: p.read_bytes() for p in sorted((run_dir / "tables").glob("*"))}


def test_report_of_sealed_trials_reports_what_the_seals_vouch_for(write_scenario, tmp_path, caplog):
    """An edited results.csv beside sealed trials (a NaN Dice, an infinite HD95, better Dice,
    rows of a trial the scenario does not have) changes nothing: it is rebuilt from them,
    named in a warning, and the tables are those of the run as it was sealed."""
    run_dir = tmp_path / "run"
    tables = sealed_run(run_dir, write_scenario())
    collected = (run_dir / "results.csv").read_bytes()
    frame = pd.read_csv(run_dir / "results.csv", keep_default_na=False, na_values=[""])
    frame.loc[5, "dice"], frame.loc[3, "hd95"] = np.nan, np.inf
    frame.loc[7:, "dice"] = 1.0
    other = frame[frame["trial"] == frame["trial"].iloc[0]].copy()
    other["trial"], other["seed"] = other["trial"].str.replace("__s0", "__s7"), 7
    pd.concat([frame, other]).to_csv(run_dir / "results.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="fedll.run.collect"):
        result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    assert f"{run_dir / 'results.csv'} differed from the sealed trial files" in caplog.text
    assert (run_dir / "results.csv").read_bytes() == collected
    assert {p.name: p.read_bytes() for p in sorted((run_dir / "tables").glob("*"))} == tables


def test_report_of_sealed_trials_needs_no_results_csv(write_scenario, tmp_path, caplog):
    """A run directory committed with its sealed trials alone (results.csv ignored, as a
    study's run/ is): the report collects them."""
    run_dir = tmp_path / "run"
    tables = sealed_run(run_dir, write_scenario())
    collected = (run_dir / "results.csv").read_bytes()
    for name in ("results.csv", "attention.csv"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "tables")
    with caplog.at_level(logging.WARNING, logger="fedll.run.collect"):
        result = invoke("report", run_dir)
    assert result.exit_code == 0, result.output
    assert caplog.text == ""
    assert (run_dir / "results.csv").read_bytes() == collected
    assert {p.name: p.read_bytes() for p in sorted((run_dir / "tables").glob("*"))} == tables


def test_report_leaves_out_a_sealed_trial_that_does_not_verify(write_scenario, tmp_path, caplog):
    """A trial file edited after its seal: the report does not take its rows; it is an
    incomplete run (one line naming the trial), and the warning says why."""
    run_dir = tmp_path / "run"
    sealed_run(run_dir, write_scenario())
    trial = expand_trials(load_scenario(run_dir / "scenario.yaml"))[0].trial_id
    edited = run_dir / "trials" / f"{trial}.csv"
    edited.write_text(edited.read_text().replace("0.1,", "0.9,"))
    with caplog.at_level(logging.WARNING, logger="fedll.run.collect"):
        result = invoke("report", run_dir)
    line = assert_one_line_error(result, str(run_dir / "results.csv"), f"not run: {trial}")
    assert "--partial" in line
    assert f"{trial}.json: {edited.name} differs from what was written" in caplog.text


@pytest.mark.parametrize(
    ("args", "key"),
    [
        pytest.param(["--patients", "0"], "patients", id="no-patients"),
        pytest.param(
            ["--patients", "3", "--sites", "4"], "patients", id="fewer-patients-than-sites"
        ),
        pytest.param(["--patients", "4", "--sites", "a,a"], "sites", id="duplicate-sites"),
        pytest.param(["--patients", "4", "--sites", "a b"], "sites", id="bad-site-name"),
        pytest.param(
            ["--patients", "4", "--sites", "2", "--test-patients", "4"],
            "test_patients",
            id="all-test",
        ),
        pytest.param(
            ["--patients", "4", "--sites", "2", "--workers", "0"], "workers", id="no-workers"
        ),
        pytest.param(
            ["--patients", "4", "--sites", "2", "--seed", "-1"], "seed", id="negative-seed"
        ),
        pytest.param(
            ["--patients", "20001"], "patients: must be an integer in 1..20000", id="too-many"
        ),
        pytest.param(  # a billion names would be built before any check
            ["--sites", "1000000000"], "sites: at most 1000 sites, got 1000000000", id="1e9-sites"
        ),
        pytest.param(  # int() refuses 4300 digits with a ValueError
            ["--sites", "1" * 5000],
            "at most 1000 sites, got a number of 5000 digits",
            id="5000-digit-sites",
        ),
        pytest.param(
            ["--patients", "2000", "--sites", ",".join(f"s{i}" for i in range(1001))],
            "sites: at most 1000 sites, got 1001",
            id="1001-site-names",
        ),
    ],
)
def test_cohort_with_bad_arguments_exits_2(tmp_path, args, key):
    out = tmp_path / "cohort"
    assert_one_line_error(invoke("cohort", "--out", out, *args), key)
    assert not out.exists() or not any(out.iterdir())


def test_cohort_into_a_file_exits_2(tmp_path):
    target = tmp_path / "taken.txt"
    target.write_text("x")
    assert_one_line_error(
        invoke("cohort", "--out", target, "--patients", "4", "--sites", "2"), str(target)
    )


def test_cohort_with_a_non_integer_is_a_usage_error(tmp_path):
    result = invoke("cohort", "--out", tmp_path / "c", "--patients", "many")
    assert result.exit_code == 2
    assert "--patients" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


# ---------------------------------------------------------------- hostile inputs


@pytest.mark.parametrize(
    ("text", "encoding", "names"),
    [
        ("name: tiny\ntraining: {epochs: 1}\ntraining: {epochs: 2}\n", "utf-8",
         ["line 3: duplicate key 'training' (first at line 2)"]),
        ("name: tiny\n", "utf-16", ["not UTF-8 text"]),
        ("name: caf\xe9\n", "latin-1", ["not UTF-8 text", "0xe9"]),
    ],
)  # fmt: skip
def test_a_scenario_file_that_is_not_what_it_seems_is_one_line(
    write_scenario, text, encoding, names
):
    path = write_scenario(text="")
    path.write_bytes(text.encode(encoding))
    assert_one_line_error(invoke("run", path, "--dry-run"), str(path), *names)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("name=../../x", "name"),
        ("name=/abs", "name"),
        ("name=''", "name"),
        ("name=.", "name"),
        ("seeds=[-1]", "seeds.0"),
        ("seeds=[1180591620717411303424]", "seeds.0"),
        ("training.lr=.inf", "training.lr"),
        ("training.lr=.nan", "training.lr"),
        ("sites.0.patients=1000000000000", "sites.0.patients"),
        ("models.static.base_width=wide", "models.static.base_width"),
        ("models.static.depth=12", "models.static"),
    ],
)
def test_values_that_would_fail_later_are_refused_at_parse_time(write_scenario, override, key):
    path = write_scenario()
    assert_one_line_error(invoke("run", path, "--dry-run", "--set", override), str(path), key)


LAUGHS = ", ".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
)
"""Billion laughs as one flow mapping: 9**10 strings through aliases."""


def test_a_yaml_bomb_in_the_file_is_one_line_naming_the_key(write_scenario):
    path = write_scenario()
    path.write_text(path.read_text() + f"exclude: [{{{LAUGHS}}}]\n")
    result = invoke("run", path, "--dry-run")
    assert_one_line_error(result, str(path), "exclude.0.a5.", "more than 100000 values")


def test_a_yaml_bomb_in_a_set_value_is_one_line_naming_the_option(write_scenario):
    path = write_scenario()
    result = invoke("run", path, "--dry-run", "--set", f"exclude=[{{{LAUGHS}}}]")
    assert_one_line_error(result, str(path), "--set exclude: 0.a5.", "more than 100000 values")


def test_a_list_nested_5000_deep_has_no_traceback(write_scenario, tmp_path, run_fedll):
    path = write_scenario()
    path.write_text(path.read_text() + "exclude: " + "[" * 5000 + "]" * 5000 + "\n")
    done = run_fedll("run", path, "--dry-run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "nested deeper than 32" in lines[0]


def test_a_grid_of_40000_trials_is_refused_before_it_is_listed(write_scenario):
    path = write_scenario()
    seeds = "[" + ", ".join(map(str, range(20_000))) + "]"
    result = invoke("run", path, "--dry-run", "--set", f"seeds={seeds}")
    assert_one_line_error(result, str(path), "seeds: 20000 values make a grid of 40000 trials")


def test_a_krum_that_cannot_hold_is_refused_naming_the_option(write_scenario):
    path = write_scenario({"strategies": [{"name": "krum", "num_malicious_nodes": 5}]})
    result = invoke("run", path, "--dry-run")
    assert_one_line_error(result, str(path), "strategies.0.num_malicious_nodes", "has 1")


def test_a_boolean_seed_is_refused(write_scenario):
    path = write_scenario()
    result = invoke("run", path, "--dry-run", "--set", "seeds=true")
    assert_one_line_error(result, str(path), "seeds: expected a number, got the boolean true")


def test_a_model_key_that_cannot_name_a_file_is_refused(write_scenario):
    path = write_scenario({"models": {"a/b": {"name": "static"}}})
    assert_one_line_error(invoke("run", path, "--dry-run"), str(path), "models.a/b")


def test_messages_are_printed_literally(write_scenario):
    path = write_scenario({"training": {"[bold]x[/bold]": 1}})
    line = assert_one_line_error(invoke("run", path, "--dry-run"), str(path))
    assert "training.[bold]x[/bold]: unknown key" in line


def test_a_dead_ray_address_fails_fast_naming_it(write_scenario, tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke(
        "run", write_scenario(), "--out", tmp_path / "r", "--address", f"127.0.0.1:{port}"
    )
    assert_one_line_error(result, f"--address 127.0.0.1:{port}: no Ray cluster answers there")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("backend", [["--local"], []], ids=["local", "ray"])
def test_a_cache_dir_that_is_a_file_is_one_line(write_scenario, tmp_path, backend):
    # with Ray, the cohort is prepared on a thread while Ray starts: its error is the same line
    cache = tmp_path / "cache"
    cache.write_text("x")
    path = write_scenario({"cache_dir": str(cache)})
    assert_one_line_error(invoke("run", path, "--out", tmp_path / "r", *backend), str(cache))


def test_a_truncated_cohort_split_is_one_line(write_scenario, tmp_path):
    path = write_scenario()
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "scenario.yaml").write_text(dump_scenario(load_scenario(path)))
    (run_dir / "cohort.json").write_text('{"sites": {')
    result = invoke("run", path, "--out", run_dir, "--local")
    assert_one_line_error(result, str(run_dir / "cohort.json"), "not a readable cohort split")


def test_certs_refuse_a_host_that_is_no_host(tmp_path):
    for host in ("not a host!", "", "-bad.example"):
        result = invoke("certs", "--out", tmp_path / "c", "--host", host)
        assert_one_line_error(result, "is neither an IP address nor a host name")
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- fedll segment

SEGMENT_MODEL = {"name": "static", "base_width": 4, "depth": 2}


@pytest.fixture
def kept_model(tmp_path) -> Path:
    """An (untrained) tiny model file, as a run keeps it."""
    import torch

    from fedll.config.schema import ModelConfig, SliceConfig
    from fedll.models import build_model
    from fedll.models.saved import encode_model, model_state

    torch.manual_seed(0)
    spec = ModelConfig(**SEGMENT_MODEL)
    state = model_state(build_model(spec.name, **spec.kwargs()))
    path = tmp_path / "model.safetensors"
    path.write_bytes(encode_model(state, spec, SliceConfig(size=16), "t", "fp"))
    return path


def blob_image(shape=(20, 24, 12)) -> tuple[np.ndarray, np.ndarray]:
    """A bright-ish ellipsoid head with a brighter blob: image float32 and labels uint8."""
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    head = np.sqrt((grid**2).sum(axis=0)) < 0.9
    noise = np.random.default_rng(0).standard_normal(shape)
    image = np.where(head, 100 + 5 * noise, 0).astype(np.float32)
    labels = (np.sqrt(((grid - 0.2) ** 2).sum(axis=0)) < 0.3).astype(np.uint8)
    image[labels > 0] += 50
    return image, labels


def write_image(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.5, 3.0, 1.0]) if affine is None else affine
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_segment_an_image_writes_a_mask_on_its_grid(kept_model, tmp_path):
    import nibabel as nib

    lps = np.diag([-1.0, -1.5, 3.0, 1.0])
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0], lps)
    out = tmp_path / "masks" / "case_mask.nii.gz"
    result = invoke("segment", kept_model, image, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote {out}"
    mask = nib.load(out)
    assert mask.shape == (20, 24, 12) and mask.get_data_dtype() == np.uint8
    np.testing.assert_allclose(mask.affine, lps)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    # OUT an existing folder: <stem>_pred.nii.gz in it
    result = invoke("segment", kept_model, image, "--out", tmp_path, "--batch-size", "5")
    assert result.exit_code == 0, result.output
    again = nib.load(tmp_path / "case_t2_pred.nii.gz")
    np.testing.assert_array_equal(again.dataobj, mask.dataobj)  # batch size changes nothing


def test_segment_a_cohort_writes_one_mask_per_case(kept_model, tmp_path):
    root = tmp_path / "BraTS2021"
    for case in ("BraTS2021_00000", "BraTS2021_00001"):
        image, labels = blob_image()
        write_image(root / case / f"{case}_t2.nii.gz", image)
        write_image(root / case / f"{case}_flair.nii.gz", 0.5 * image)
        write_image(root / case / f"{case}_seg.nii.gz", labels)
    out = tmp_path / "masks"
    result = invoke("segment", kept_model, root, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"wrote 4 masks to {out}"
    assert sorted(p.name for p in out.iterdir()) == [
        f"BraTS2021_0000{i}_{m}_pred.nii.gz" for i in (0, 1) for m in ("flair", "t2")
    ]


def incompatible(kept_model: Path) -> Path:
    """``kept_model`` as a future fedll would write it (another model format version)."""
    import json

    from safetensors.numpy import load, save

    data = kept_model.read_bytes()
    length = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + length])["__metadata__"]["fedll"])
    meta.update(format_version=meta["format_version"] + 1, fedll="9.0.0")
    path = kept_model.with_name("future.safetensors")
    path.write_bytes(save(load(data), metadata={"fedll": json.dumps(meta)}))
    return path


@pytest.mark.parametrize(
    ("case", "names"),
    [
        ("not-a-model", ["not a safetensors file"]),
        ("incompatible-fedll", ["written by fedll 9.0.0", "model format version 2"]),
        ("missing-model", ["model file not found"]),
        ("missing-input", ["no such file or folder"]),
        ("4d-without-channel", ["expected a 3-D volume", "(20, 24, 12, 2)"]),
        ("out-is-a-file", ["is a file; a cohort's masks need a folder"]),
        ("cohort-out-a-nifti-name", ["a NIfTI file name; a cohort's masks need a folder"]),
        ("out-not-nifti", ["not a NIfTI file name"]),
        ("flat-brain", ["no intensity variation inside the brain"]),
        ("bad-device", ["--device: 'gpu' is not a device"]),
    ],
)
def test_segment_with_bad_input_exits_2_in_one_line(kept_model, tmp_path, case, names):
    model = kept_model
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    out = tmp_path / "mask.nii.gz"
    device = "cpu"
    named = None
    if case == "not-a-model":
        model = tmp_path / "notes.safetensors"
        model.write_text("not a model\n")
        named = model
    elif case == "incompatible-fedll":
        model = named = incompatible(kept_model)
    elif case == "missing-model":
        model = named = tmp_path / "none.safetensors"
    elif case == "missing-input":
        image = named = tmp_path / "none.nii.gz"
    elif case == "4d-without-channel":
        data = np.stack([blob_image()[0]] * 2, axis=-1)
        image = named = write_image(tmp_path / "case_4d.nii.gz", data)
    elif case == "out-is-a-file":
        image = tmp_path / "cohort"
        image.mkdir()
        out = named = tmp_path / "taken.txt"
        out.write_text("x")
    elif case == "cohort-out-a-nifti-name":
        image = tmp_path / "cohort"
        image.mkdir()
        out = named = tmp_path / "masks.nii.gz"
    elif case == "flat-brain":
        flat = np.where(blob_image()[0] > 0, 100.0, 0.0).astype(np.float32)
        image = named = write_image(tmp_path / "flat_t2.nii.gz", flat)
    elif case == "out-not-nifti":
        out = named = tmp_path / "mask.png"
    elif case == "bad-device":
        device = "gpu"
    result = invoke("segment", model, image, "--out", out, "--device", device)
    assert_one_line_error(result, *names, *([str(named)] if named else []))


def test_segment_a_4d_image_with_its_channel(kept_model, tmp_path):
    data = np.stack([np.zeros((20, 24, 12), np.float32), blob_image()[0]], axis=-1)
    image = write_image(tmp_path / "case_4d.nii.gz", data)
    out = tmp_path / "mask.nii.gz"
    result = invoke("segment", kept_model, image, "--out", out, "--channel", "1")
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_segment_on_cuda_without_cuda_exits_2(kept_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    result = invoke("segment", kept_model, image, "--out", tmp_path / "m.nii", "--device", "cuda")
    assert_one_line_error(result, "--device: cuda asked", "finds no CUDA device")


def test_segment_with_a_model_of_two_output_channels_exits_2(tmp_path):
    import torch

    from fedll.config.schema import ModelConfig, SliceConfig
    from fedll.models import build_model
    from fedll.models.saved import encode_model, model_state

    torch.manual_seed(0)
    spec = ModelConfig(**SEGMENT_MODEL, out_channels=2)
    model = tmp_path / "two.safetensors"
    state = model_state(build_model(spec.name, **spec.kwargs()))
    model.write_bytes(encode_model(state, spec, SliceConfig(size=16), "t", "fp"))
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    result = invoke("segment", model, image, "--out", tmp_path / "m.nii.gz")
    assert_one_line_error(result, str(model), "predicts 2 channels")


# ---------------------------------------------------------------- fedll segment: hostile inputs


def a_cohort(root: Path) -> Path:
    """A BraTS 2021 folder of two cases (T2, FLAIR, mask each)."""
    for case in ("BraTS2021_00000", "BraTS2021_00001"):
        image, labels = blob_image()
        write_image(root / case / f"{case}_t2.nii.gz", image)
        write_image(root / case / f"{case}_flair.nii.gz", 0.5 * image)
        write_image(root / case / f"{case}_seg.nii.gz", labels)
    return root


def file_bytes(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` (or ``root`` itself) and its bytes."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {p: p.read_bytes() for p in paths}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("spelling", ["same-path", "dot-dot", "symlink", "hard-link"])
def test_segment_never_writes_a_mask_over_its_input(kept_model, tmp_path, spelling, overwrite):
    """``--out`` naming the input image, by its own path or another way to the same file:
    refused before anything is computed, --overwrite or not; the image keeps its bytes."""
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    before = image.read_bytes()
    if spelling == "same-path":
        out = image
    elif spelling == "dot-dot":
        (tmp_path / "sub").mkdir()
        out = Path(f"{tmp_path}/sub/../case_t2.nii.gz")
    elif spelling == "symlink":
        out = tmp_path / "link.nii.gz"
        out.symlink_to(image)
    else:
        out = tmp_path / "hard.nii.gz"
        out.hardlink_to(image)
    result = invoke("segment", kept_model, image, "--out", out, *overwrite)
    line = assert_one_line_error(result, str(out), f"is the input {image}")
    assert "a mask is never written over an input" in line
    assert image.read_bytes() == before


def test_segment_replaces_an_existing_file_only_with_overwrite(kept_model, tmp_path):
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    out = tmp_path / "notes.nii.gz"
    out.write_bytes(b"someone else's file")
    result = invoke("segment", kept_model, image, "--out", out)
    assert_one_line_error(result, f"{out}: already exists", "give --overwrite")
    assert out.read_bytes() == b"someone else's file"
    # OUT a folder: the mask's name in it is what must not exist
    taken = tmp_path / "case_t2_pred.nii.gz"
    taken.write_bytes(b"kept")
    result = invoke("segment", kept_model, image, "--out", tmp_path)
    assert_one_line_error(result, f"{taken}: already exists")
    assert taken.read_bytes() == b"kept"
    result = invoke("segment", kept_model, image, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # a gzipped mask now


def test_segment_a_cohort_writes_over_nothing_that_exists_without_overwrite(kept_model, tmp_path):
    root = a_cohort(tmp_path / "BraTS2021")
    cohort = file_bytes(root)
    out = tmp_path / "masks"
    out.mkdir()
    taken = out / "BraTS2021_00001_t2_pred.nii.gz"
    taken.write_bytes(b"an earlier mask, or not")
    result = invoke("segment", kept_model, root, "--out", out)
    assert_one_line_error(result, f"{taken}: already exists", "give --overwrite")
    assert file_bytes(out) == {taken: b"an earlier mask, or not"}  # nothing else written
    result = invoke("segment", kept_model, root, "--out", out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(list(out.iterdir())) == 4 and taken.read_bytes()[:2] == b"\x1f\x8b"
    assert file_bytes(root) == cohort


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("where", ["the-cohort", "a-case-folder", "a-link-to-it"])
def test_segment_never_writes_masks_into_a_scanned_cohort_folder(
    kept_model, tmp_path, where, overwrite
):
    """Masks inside the folder a layout is scanned from would be met by its next scan (loose
    NIfTI files make a BraTS root unreadable): refused, --overwrite or not, nothing written."""
    root = a_cohort(tmp_path / "BraTS2021")
    cohort = file_bytes(root)
    out = {"the-cohort": root, "a-case-folder": root / "BraTS2021_00000"}.get(where)
    if out is None:
        out = tmp_path / "masks"
        out.symlink_to(root, target_is_directory=True)
    result = invoke("segment", kept_model, root, "--out", out, *overwrite)
    assert_one_line_error(result, str(out), f"inside the cohort folder {root}")
    assert file_bytes(root) == cohort


def test_segment_never_writes_a_mask_over_a_file_a_manifest_lists(kept_model, tmp_path):
    """A manifest lists its files wherever they are: a mask may go beside them, but never
    over one (here a case's image is itself named like the mask of another row)."""
    root = a_cohort(tmp_path / "BraTS2021")
    out = tmp_path / "masks"
    listed = write_image(out / "BraTS2021_00001_t2_pred.nii.gz", blob_image()[0])
    first, second = (root / case / case for case in ("BraTS2021_00000", "BraTS2021_00001"))
    rows = [
        ["BraTS2021_00000", "a", "t2", "", listed, f"{first}_seg.nii.gz"],
        ["BraTS2021_00001", "a", "t2", "", f"{second}_t2.nii.gz", f"{second}_seg.nii.gz"],
    ]
    from fedll.data.manifest import write_manifest

    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    before = listed.read_bytes()
    result = invoke("segment", kept_model, manifest, "--out", out, "--overwrite")
    assert_one_line_error(result, str(out / listed.name), f"is the input {listed}")
    assert listed.read_bytes() == before and sorted(out.iterdir()) == [listed]
    beside = tmp_path / "beside"
    result = invoke("segment", kept_model, tmp_path, "--out", beside, "--layout", "manifest")
    assert result.exit_code == 0, result.output  # a manifest's own folder is not scanned


@pytest.mark.parametrize("option", [["--modality", "t2"], ["--channel", "1"]])
def test_segment_refuses_an_option_that_would_be_ignored(kept_model, tmp_path, option):
    """--modality for a model that does not route by modality, and --modality or --channel
    for a cohort (whose cases name theirs): one line naming the option, nothing written."""
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    out = tmp_path / "mask.nii.gz"
    if option[0] == "--modality":
        result = invoke("segment", kept_model, image, "--out", out, *option)
        assert_one_line_error(
            result, "--modality: ", str(kept_model), "does not route by modality", "leave it out"
        )
    root = a_cohort(tmp_path / "BraTS2021")
    result = invoke("segment", kept_model, root, "--out", tmp_path / "masks", *option)
    assert_one_line_error(result, f"{option[0]}: for an image INPUT", str(root))
    assert not out.exists() and not (tmp_path / "masks").exists()


def kept_state() -> tuple[dict, object, object]:
    import torch

    from fedll.config.schema import ModelConfig, SliceConfig
    from fedll.models import build_model
    from fedll.models.saved import model_state

    torch.manual_seed(0)
    spec = ModelConfig(**SEGMENT_MODEL)
    return model_state(build_model(spec.name, **spec.kwargs())), spec, SliceConfig(size=16)


def test_segment_with_a_model_holding_a_nan_weight_exits_2(tmp_path):
    """Before: NaN logits, thresholded to an empty mask, exit 0."""
    from fedll.models.saved import encode_model

    state, spec, slices = kept_state()
    state["head.weight"].flat[0] = float("nan")
    model = tmp_path / "nan.safetensors"
    model.write_bytes(encode_model(state, spec, slices, "t", "fp"))
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    result = invoke("segment", model, image, "--out", tmp_path / "m.nii.gz")
    assert_one_line_error(result, f"{model}: tensor 'head.weight' holds 1 NaN")
    assert not (tmp_path / "m.nii.gz").exists()


def test_segment_with_a_model_too_large_to_build_exits_2(tmp_path):
    import json

    from safetensors.numpy import load, save

    from fedll.models.saved import encode_model

    state, spec, slices = kept_state()
    data = encode_model(state, spec, slices, "t", "fp")
    length = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + length])["__metadata__"]["fedll"])
    meta["model"]["base_width"] = 10**6
    model = tmp_path / "huge.safetensors"
    model.write_bytes(save(load(data), metadata={"fedll": json.dumps(meta)}))
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    result = invoke("segment", model, image, "--out", tmp_path / "m.nii.gz")
    assert_one_line_error(result, str(model), "parameters, over execution.max_parameters")


def test_segment_checks_a_kept_model_against_its_trial_seal(tmp_path):
    """A model in a run directory whose metadata was edited (its slice size: the weights and
    their digest unchanged, so only the seal can tell) is refused; the sealed one runs."""
    import json

    from safetensors.numpy import load, save

    from fedll.models.saved import encode_model

    state, spec, slices = kept_state()
    data = encode_model(state, spec, slices, "t", "fp")
    run_dir = tmp_path / "run"
    trial = Trial(
        model="static", ordering="alternating", arrival_batch=1, strategy="fedavg", seed=0
    )
    write_trial(run_dir, TrialResults(trial=trial, stream=()), "fp", model=data)
    (model,) = (run_dir / "models").iterdir()
    image = write_image(tmp_path / "case_t2.nii.gz", blob_image()[0])
    assert invoke("segment", model, image, "--out", tmp_path / "a.nii.gz").exit_code == 0
    length = int.from_bytes(data[:8], "little")
    meta = json.loads(json.loads(data[8 : 8 + length])["__metadata__"]["fedll"])
    meta["slices"]["size"] = 24
    model.write_bytes(save(load(data), metadata={"fedll": json.dumps(meta)}))
    result = invoke("segment", model, image, "--out", tmp_path / "b.nii.gz")
    assert_one_line_error(result, f"{model}: differs from the size and SHA-256 its trial's seal")
    assert not (tmp_path / "b.nii.gz").exists()


@pytest.mark.parametrize("hostile", ["complex64", "pixdim-0"])
def test_segment_of_an_image_with_a_lying_header_exits_2(kept_model, tmp_path, hostile):
    import nibabel as nib

    data = blob_image()[0]
    path = tmp_path / "case_t2.nii"
    if hostile == "complex64":
        nib.save(nib.Nifti1Image((data + 1j * data).astype(np.complex64), np.eye(4)), path)
        message = "voxels of type complex64 are not real numbers"
    else:
        nii = nib.Nifti1Image(data, np.diag([1.0, 1.5, 3.0, 1.0]))
        block = bytearray(nii.to_bytes())
        block[80:84] = np.float32(0).tobytes()  # pixdim[1]: nibabel would read it as 1 mm
        path.write_bytes(bytes(block))
        message = "voxel size 0 x 1.5 x 3 mm in its header (pixdim)"
    before = path.read_bytes()
    result = invoke("segment", kept_model, path, "--out", tmp_path / "m.nii.gz")
    assert_one_line_error(result, f"{path}: {message}")
    assert path.read_bytes() == before and not (tmp_path / "m.nii.gz").exists()


# ---------------------------------------------------------------- tracking


@pytest.mark.parametrize(
    ("tracking", "key", "module"),
    [({"tensorboard": True}, "tracking.tensorboard", "tensorboardX"),
     ({"mlflow": True}, "tracking.mlflow", "mlflow")],
)  # fmt: skip
def test_tracking_without_its_package_is_one_line_naming_the_key(
    write_scenario, monkeypatch, tracking, key, module
):
    import fedll.tracking

    real = fedll.tracking.find_spec
    monkeypatch.setattr(fedll.tracking, "find_spec", lambda m: None if m == module else real(m))
    path = write_scenario({"tracking": tracking})
    line = assert_one_line_error(invoke("run", path, "--dry-run"), str(path), key, module)
    assert "pip install 'fedll[tracking]'" in line


def test_paper_tcga_dry_runs_against_a_tiny_tcga_tree(tmp_path):
    import nibabel as nib
    import numpy as np

    from fedll.data.layouts import discover

    root = tmp_path / "TCGA-GBM"
    image = np.zeros((12, 12, 8), np.float32)
    image[2:10, 2:10, 1:7] = 100.0
    labels = np.zeros((12, 12, 8), np.uint8)
    labels[4:7, 4:7, 3:5] = 2
    for patient in ("TCGA-02-0006", "TCGA-08-0509"):
        stem = root / patient / f"{patient}_1996.08.23"
        stem.parent.mkdir(parents=True)
        for suffix, data in (("t2", image), ("flair", image), ("GlistrBoost", labels)):
            nib.save(nib.Nifti1Image(data, np.eye(4)), f"{stem}_{suffix}.nii.gz")
    assert len(discover(root)) == 4  # found by "auto" as the scenario's layout
    path = REPO / "scenarios" / "paper-tcga.yaml"
    result = invoke("run", path, "--dry-run", "--set", f"cohort.path={root}")
    assert result.exit_code == 0, result.output
    assert "18 trials of paper-tcga" in result.stdout
    scenario = load_scenario(path, [f"cohort.path={root}"])
    assert (scenario.cohort.layout, scenario.evaluation.slices) == ("tcga-gbm", "all")
    assert sum(s.patients for s in scenario.sites) + 2 * scenario.test.patients_per_modality == 130


# ---------------------------------------------------------------- differential privacy


def test_a_scenario_naming_every_strategy_with_dp_on_two_expands(write_scenario):
    from fedll.config.options import option_names
    from fedll.config.strategies import StrategyOptions

    names = list(option_names(StrategyOptions))
    strategies = [
        *names,
        {"name": "fedavg", "dp": {"noise_multiplier": 1.0, "clipping_norm": 0.5}},
        {"name": "fedadam", "dp": {"side": "client", "clipping": "adaptive",
                                   "noise_multiplier": 0.5, "clipped_count_stddev": 1.0}},
    ]  # fmt: skip
    # three sites in each round: Krum and Bulyan need 2f + 3 and 4f + 3 replies (f = 0)
    sites = [
        {"name": "hospital-t2", "modality": "t2", "patients": 2},
        {"name": "hospital-flair", "modality": "flair", "patients": 2},
        {"name": "hospital-t2-b", "modality": "t2", "patients": 2},
    ]
    path = write_scenario(
        {"strategies": strategies, "models": {"dycnn": None}, "sites": sites,
         "stream": {"arrivals_per_round": 3}}
    )  # fmt: skip
    result = invoke("run", path, "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"{len(names) + 2} trials of tiny" in result.stdout
    labels = [t.strategy_label for t in expand_trials(load_scenario(path))]
    assert labels[: len(names)] == names  # without dp, the labels of before
    assert labels[len(names) :] == [
        "fedavg-dp-server-fixed-z1.0-c0.5",
        "fedadam-dp-client-adaptive-z0.5-sb1.0",
    ]


@pytest.mark.parametrize(
    ("dp", "key"),
    [
        pytest.param("{noise_multiplier: 1, clipping_norm: 1, clip: 2}", "strategies.0.dp.clip",
                     id="unknown-key"),
        pytest.param("{noise_multiplier: -1, clipping_norm: 1}", "strategies.0.dp.noise_multiplier",
                     id="negative-noise"),
        pytest.param("{noise_multiplier: 1}", "clipping_norm: required", id="fixed-without-norm"),
        pytest.param("{noise_multiplier: 1, clipping_norm: 0}", "strategies.0.dp.clipping_norm",
                     id="zero-norm"),
        pytest.param("{side: site, noise_multiplier: 1, clipping_norm: 1}", "strategies.0.dp.side",
                     id="unknown-side"),
        pytest.param("{clipping: adaptive, noise_multiplier: 0.01, clipping_norm: 1}",
                     "clipping_norm: an option of fixed clipping", id="adaptive-with-norm"),
        pytest.param("{clipping: adaptive, noise_multiplier: 0.01, target_quantile: 1}",
                     "strategies.0.dp.target_quantile", id="quantile-of-1"),
        pytest.param("{noise_multiplier: 1, clipping_norm: 1, delta: 1}", "strategies.0.dp.delta",
                     id="delta-of-1"),
        # Flower's default noise on the clipped count is 2 sites / 20 = 0.1: z must be < 0.2
        pytest.param("{clipping: adaptive, noise_multiplier: 0.5}",
                     "strategies.0.dp.noise_multiplier: 0.5 must be below", id="adaptive-noise"),
    ],
)  # fmt: skip
def test_a_bad_dp_option_is_one_line_naming_its_key(write_scenario, dp, key):
    path = write_scenario()
    result = invoke("run", path, "--dry-run", "--set", f"strategies=[{{name: fedavg, dp: {dp}}}]")
    assert_one_line_error(result, str(path), key)
