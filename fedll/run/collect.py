"""The run's collected files: ``results.csv``, ``attention.csv`` and ``routing.csv`` rebuilt
from the verified trials, and what complete results of a scenario hold.

:func:`collect` reads only the scenario's own, verified trials (:mod:`fedll.run.store`), and
replaces the collected files only after every part was read; ``fedll report`` on a run
directory with seals collects again first (:func:`recollect`), so that what it reports is what
the seals vouch for, whatever was edited in the collected files.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from fedll.atomic import atomic_path
from fedll.config.grid import expand_trials
from fedll.config.schema import Scenario
from fedll.data.prepare import PreparedCohort
from fedll.errors import DataError
from fedll.report.completeness import Expected
from fedll.results.columns import ATTENTION_COLUMNS, RESULT_COLUMNS, ROUTING_COLUMNS
from fedll.run.planning import trial_stream
from fedll.run.store import ROUTING, TrialFiles, verified_payloads

logger = logging.getLogger(__name__)

COLLECTED = ("results.csv", "attention.csv", ROUTING)
"""The run directory's collected files (:func:`collect`)."""


def has_seals(run_dir: Path) -> bool:
    """Whether ``run_dir/trials`` holds a seal: the run's collected files can be rebuilt
    from (and only from) its verified trials (:func:`recollect`)."""
    trials = Path(run_dir) / "trials"
    return trials.is_dir() and any(trials.glob("*.json"))


def collect(run_dir: Path, fingerprints: Mapping[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate the verified trials among ``fingerprints`` (trial id -> fingerprint, in
    the scenario's order) into ``results.csv`` and ``attention.csv`` (and ``routing.csv``,
    when a trial has routing rows: a run with dynamic models; a ``routing.csv`` that no
    verified trial vouches for is removed); files in ``trials/`` that are not the scenario's
    are left out, and a trial whose seal is there but does not verify is left out with a
    warning naming it. The files are replaced only after every part was read; DataError
    names a trial file that fails to read."""
    run_dir = Path(run_dir)
    results_parts, attention_parts, routing_parts = [], [], []
    for trial_id, fingerprint in fingerprints.items():
        payloads = verified_payloads(run_dir, trial_id, fingerprint)
        if isinstance(payloads, str):
            if (seal := TrialFiles.of(run_dir, trial_id).seal).is_file():
                logger.warning("%s: %s; the trial is left out of results.csv", seal, payloads)
            continue
        files = TrialFiles.of(run_dir, trial_id)
        results_parts.append((files.results, payloads[files.results]))
        attention_parts.append((files.attention, payloads[files.attention]))
        if files.routing in payloads:
            routing_parts.append((files.routing, payloads[files.routing]))
    results = _concat(results_parts, RESULT_COLUMNS, strings=True)
    attention = _concat(attention_parts, ATTENTION_COLUMNS)
    outputs = [("results.csv", results), ("attention.csv", attention)]
    if routing_parts:
        outputs.append((ROUTING, _concat(routing_parts, ROUTING_COLUMNS)))
    for name, frame in outputs:
        with atomic_path(run_dir / name) as tmp:
            frame.to_csv(tmp, index=False)
    if not routing_parts:
        (run_dir / ROUTING).unlink(missing_ok=True)
    return results, attention


def recollect(run_dir: Path, fingerprints: Mapping[str, str]) -> list[Path]:
    """:func:`collect` again, for a report: the collected files hold exactly what the verified
    trials vouch for. Returns those of them that were there and held something else (edited,
    copied in, or collected before more trials finished), each named in a warning."""
    run_dir = Path(run_dir)
    paths = [run_dir / name for name in COLLECTED]
    before = {path: path.read_bytes() for path in paths if path.is_file()}
    collect(run_dir, fingerprints)
    replaced = [
        path for path, held in before.items() if not path.is_file() or path.read_bytes() != held
    ]
    for path in replaced:
        logger.warning(
            "%s differed from the sealed trial files (edited, or collected before the last "
            "trials finished): rebuilt from them",
            path,
        )
    return replaced


def _concat(
    parts: Sequence[tuple[Path, bytes]], columns: Sequence[str], strings: bool = False
) -> pd.DataFrame:
    frames = []
    for path, payload in parts:
        try:
            text = payload.decode()
            frame = (
                pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
                if strings
                else pd.read_csv(io.StringIO(text))
            )
        except (UnicodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise DataError(f"{path}: cannot be read ({type(error).__name__})") from None
        if list(frame.columns) != list(columns):
            raise DataError(f"{path}: columns differ from fedll's")
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=list(columns))
    return pd.concat(frames, ignore_index=True)


def expected_results(run_dir: Path, scenario: Scenario, results: pd.DataFrame) -> Expected:
    """What complete results of ``scenario`` hold: every trial's rounds (in deployment, among
    the sites that joined: those not named in its round 0 ``failed``) and, when the run's
    ``cohort.json`` is there, every test case of each modality."""
    absent: dict[str, list[str]] = {}
    if "failed" in results.columns:
        first = results[results["round"] == 0].drop_duplicates("trial")
        absent = {
            str(t): [s for s in str(f).split(";") if s]
            for t, f in zip(first["trial"], first["failed"], strict=True)
        }
    rounds = {
        t.trial_id: len(trial_stream(scenario, t, absent.get(t.trial_id, ())))
        for t in expand_trials(scenario)
    }
    index = Path(run_dir) / "cohort.json"
    cases: dict[str, tuple[str, ...]] = {}
    if index.is_file():
        test = PreparedCohort.read(index).test
        cases = {m: tuple(r.patient for r in records) for m, records in test.items()}
    return Expected(rounds=rounds, cases=cases)
