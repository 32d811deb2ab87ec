"""Trial fingerprints: the evaluation section changes results, so it changes them."""

from __future__ import annotations

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
