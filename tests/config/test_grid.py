"""Trial fingerprints: the evaluation section changes results, so it changes them."""

from __future__ import annotations

import json
from pathlib import Path

from fedll.config import EvaluationConfig, expand_trials, load_scenario
from fedll.config.grid import trial_fingerprint


def test_the_evaluation_section_is_part_of_the_fingerprint(tmp_path, make_scenario) -> None:
    scenario = load_scenario(make_scenario(tmp_path / "s.yaml", {}))
    trial = expand_trials(scenario)[0]
    base = trial_fingerprint(scenario, trial)
    for evaluation in (
        EvaluationConfig(slices="selected"),
        EvaluationConfig(surface_tolerance_mm=1.0),
    ):
        changed = scenario.model_copy(update={"evaluation": evaluation})
        assert trial_fingerprint(changed, trial) != base
    same = scenario.model_copy(update={"evaluation": EvaluationConfig()})
    assert trial_fingerprint(same, trial) == base


def test_evaluation_precision_is_the_training_precision_where_not_given(
    tmp_path, make_scenario
) -> None:
    def precisions(updates: dict) -> tuple[str, str]:
        scenario = load_scenario(make_scenario(tmp_path / "p.yaml", updates))
        return scenario.training.precision, scenario.evaluation.precision

    assert precisions({}) == ("auto", "auto")
    assert precisions({"training": {"precision": "fp32"}}) == ("fp32", "fp32")
    assert precisions({"training": {"precision": "fp32"}, "evaluation": {"precision": "bf16"}}) == (
        "fp32", "bf16"
    )  # fmt: skip


def test_a_run_written_before_the_precisions_keeps_its_fingerprints() -> None:
    """The committed study's scenario (dumped with ``training.precision: fp32`` and no
    ``evaluation.precision``) still names the fingerprints its sealed trials carry, so its
    trials verify and are not run again."""
    run = Path(__file__).resolve().parents[2] / "studies" / "routing-paired" / "run"
    scenario = load_scenario(run / "scenario.yaml")
    assert (scenario.training.precision, scenario.evaluation.precision) == ("fp32", "fp32")
    trials = {t.trial_id: t for t in expand_trials(scenario)}
    seals = sorted((run / "trials").glob("*.json"))
    assert len(seals) >= 100
    for seal in seals:
        held = json.loads(seal.read_text())
        assert trial_fingerprint(scenario, trials[held["trial"]]) == held["fingerprint"], seal
