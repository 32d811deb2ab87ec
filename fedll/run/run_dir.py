"""Which scenario a run directory holds: its resolved ``scenario.yaml``, claimed by a run.

A run directory belongs to one scenario at a time. :func:`claim` makes it a scenario's: new,
resumed (the same scenario), grown (more grid values, every finished trial kept) or taken
over from a scenario that finished no trial there; any other claim is refused, so that no
finished trial is lost or mixed with another scenario's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedll.atomic import atomic_path
from fedll.config import Scenario, dump_scenario, load_scenario
from fedll.config.grid import fingerprints
from fedll.errors import DataError, FedllError
from fedll.run.store import verify_trial

RESOLVED_SCENARIO = "scenario.yaml"
"""The run directory's resolved scenario (:func:`fedll.config.dump_scenario`)."""

logger = logging.getLogger(__name__)


def claim(run_dir: Path, scenario: Scenario) -> None:
    """Make ``run_dir`` this scenario's: new, resumed (the same scenario), grown (a scenario
    whose grid holds every trial finished there, each with the same fingerprint: more seeds or
    models, say; those trials are kept), or taken over from another scenario that finished no
    trial there (a failed preparation locks nothing)."""
    saved = run_dir / RESOLVED_SCENARIO
    resolved = dump_scenario(scenario)
    if saved.exists() and not same_scenario(saved, resolved, scenario):
        try:
            held = fingerprints(load_scenario(saved))
        except FedllError:
            held = {}
        done = [t for t, f in held.items() if verify_trial(run_dir, t, f) is None]
        wanted = fingerprints(scenario)
        if done and all(wanted.get(t) == held[t] for t in done):
            # every finished trial is one of this scenario's, run with the same settings (its
            # fingerprint covers the cohort and the split too, so cohort.json stays)
            logger.info(
                "%s: the run grows to %d trials, keeping its %d finished one(s)",
                saved, len(wanted), len(done),
            )  # fmt: skip
            with atomic_path(saved) as tmp:
                tmp.write_text(resolved)
            return
        if done:
            raise DataError(
                f"{saved}: this run directory holds a different scenario with {len(done)} "
                "finished trial(s) that this one does not repeat (a run may only grow: more "
                "grid values, the other settings equal); choose another --out (or delete it) "
                "to start afresh"
            )
        logger.warning("%s held another scenario that finished no trial; it is replaced", saved)
        (run_dir / "cohort.json").unlink(missing_ok=True)  # its split may differ
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(saved) as tmp:
        tmp.write_text(resolved)


def same_scenario(saved: Path, resolved: str, scenario: Scenario) -> bool:
    """Whether the run directory's scenario is ``scenario``: the same text, or one that an
    earlier fedll wrote differently and that parses to the same scenario (a scalar that is
    now a one-value list) or that differs only in ``tracking``, so a rerun resumes (and logs
    the finished trials to the trackers now asked for) instead of refusing."""
    if saved.read_text() == resolved:
        return True
    try:  # tracking does not change results: a finished run may add or change it
        held = load_scenario(saved)
    except FedllError:
        return False
    return held.model_copy(update={"tracking": scenario.tracking}) == scenario
