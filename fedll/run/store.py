"""The run directory's trial files: written, sealed, verified, set aside, collected.

A finished trial is four files in ``RUN_DIR/trials/``: ``<id>.csv`` (its result rows),
``<id>.attention.csv``, ``<id>.previews.npz`` (a few predicted test slices per round, for the
report's montage; :func:`fedll.results.rows.preview_npz`), for a trial of a dynamic model
``<id>.routing.csv`` (the per-slice routing's modality decoding per layer and round) and,
written last and atomically, the
seal ``<id>.json``; and its kept model, ``RUN_DIR/models/<id>.safetensors``
(:mod:`fedll.models.saved`), written before the seal. The seal holds the trial id, the
fingerprint of its settings (:func:`fedll.config.grid.trial_fingerprint`), the fedll
version, each file's row count (the model's size in bytes) and SHA-256, the sites that failed
or were rejected per round and, where the runner measured it, the trial's wall time
(``wall_s``) and the arithmetic it ran on (``arithmetic``: the processor's instruction sets
or the GPU model decide the last bits, so a trial's files agree bit for bit with another
run's only on the same arithmetic). Seals of an earlier fedll lack the previews, the model,
the wall time or the arithmetic and still verify. A trial is finished exactly when its seal
verifies: a file cut short, emptied, edited, missing (a model deleted), left without a
seal (an earlier fedll, a crash between the writes) or copied in from a run of other
settings does not, is moved to ``trials/invalid/`` (named in a warning) and the trial runs
again. The run's collected files are rebuilt from the verified trials by
:mod:`fedll.run.collect`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import fedll
from fedll.atomic import atomic_path
from fedll.errors import DataError
from fedll.results.rows import TrialResults, preview_npz, sealed_previews

logger = logging.getLogger(__name__)

INVALID = "invalid"
ROUTING = "routing.csv"
"""The run directory's collected routing rows (:mod:`fedll.run.collect`)."""
CHECKPOINTS = "checkpoints"
MODEL_SUFFIX = ".safetensors"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class TrialFiles:
    """Where one trial's files live."""

    results: Path
    attention: Path
    model: Path
    seal: Path
    previews: Path
    routing: Path

    @classmethod
    def of(cls, run_dir: Path, trial_id: str) -> TrialFiles:
        trials = Path(run_dir) / "trials"
        return cls(
            trials / f"{trial_id}.csv",
            trials / f"{trial_id}.attention.csv",
            Path(run_dir) / "models" / f"{trial_id}{MODEL_SUFFIX}",
            trials / f"{trial_id}.json",
            trials / f"{trial_id}.previews.npz",
            trials / f"{trial_id}.routing.csv",
        )

    def existing(self) -> list[Path]:
        paths = (self.results, self.attention, self.previews, self.routing, self.model, self.seal)
        return [p for p in paths if p.exists()]


def sealed_model(model: Path) -> tuple[int, str] | None:
    """The (size, SHA-256) that a kept model's trial seal lists for it: ``model`` a
    ``RUN_DIR/models/<id>.safetensors`` (links followed) whose ``RUN_DIR/trials/<id>.json``
    lists it; None when there is no such seal (a model copied out of its run, a trial of an
    earlier fedll). DataError naming the seal when it is there but unreadable."""
    path = Path(model).resolve()
    if path.parent.name != "models" or not path.name.endswith(MODEL_SUFFIX):
        return None
    files = TrialFiles.of(path.parent.parent, path.name.removesuffix(MODEL_SUFFIX))
    if files.model != path or not files.seal.is_file():
        return None
    try:
        entry = json.loads(files.seal.read_text())["files"].get(path.name)
        return None if entry is None else (int(entry["size"]), str(entry["sha256"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(
            f"{files.seal}: the seal of {path} is unreadable ({type(error).__name__}); the "
            "model cannot be checked against it"
        ) from None


def write_trial(
    run_dir: Path,
    results: TrialResults,
    fingerprint: str,
    model: bytes | None = None,
    wall_s: float | None = None,
    arithmetic: str | None = None,
) -> Path:
    """Write the trial's rows, its attention and its ``model`` (the bytes of a model file,
    :func:`fedll.models.saved.encode_model`; None: no kept model), then the seal that
    vouches for them (and records ``wall_s``, the seconds the trial ran, and ``arithmetic``,
    :func:`fedll.run.device.arithmetic` of the process that ran it, when given)."""
    frame, attention = results.frames()
    files = TrialFiles.of(run_dir, results.trial.trial_id)
    files.results.parent.mkdir(parents=True, exist_ok=True)
    listed = {}
    tables = [(files.results, frame), (files.attention, attention)]
    if results.routing_rows:  # dynamic models only: a static trial's files stay as they were
        tables.append((files.routing, results.routing_frame()))
    for path, data in tables:
        payload = data.to_csv(index=False).encode()
        with atomic_path(path) as tmp:
            tmp.write_bytes(payload)
        listed[path.name] = {"rows": len(data), "sha256": hashlib.sha256(payload).hexdigest()}
    previews = preview_npz(results.previews)
    with atomic_path(files.previews) as tmp:
        tmp.write_bytes(previews)
    listed[files.previews.name] = {
        "rows": len(results.previews),
        "sha256": hashlib.sha256(previews).hexdigest(),
    }
    if model is not None:
        files.model.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(files.model) as tmp:
            tmp.write_bytes(model)
        listed[files.model.name] = {"size": len(model), "sha256": hashlib.sha256(model).hexdigest()}
    seal = {
        "trial": results.trial.trial_id,
        "fingerprint": fingerprint,
        "fedll": fedll.__version__,
        "files": listed,
        "events": {
            "failed": _by_site(results.failures),
            "rejected": _by_site(results.rejected),
        },
    }
    if wall_s is not None:
        seal["wall_s"] = round(float(wall_s), 3)
    if arithmetic is not None:
        seal["arithmetic"] = arithmetic
    with atomic_path(files.seal) as tmp:
        tmp.write_text(json.dumps(seal, indent=1, sort_keys=True))
    return files.results


def _by_site(events: Mapping[int, Sequence[str]]) -> dict[str, list[int]]:
    """round -> sites, as site -> rounds (sorted)."""
    out: dict[str, list[int]] = {}
    for rnd, sites in sorted(events.items()):
        for site in sites:
            out.setdefault(site, []).append(rnd)
    return dict(sorted(out.items()))


def checkpoint_path(run_dir: Path, trial_id: str) -> Path:
    """Where the driver keeps a running trial's latest checkpoint (:mod:`fedll.run.checkpoint`)."""
    return Path(run_dir) / CHECKPOINTS / f"{trial_id}.ckpt"


def write_checkpoint(run_dir: Path, trial_id: str, data: bytes) -> Path:
    """Replace the trial's kept checkpoint with ``data`` (atomically)."""
    path = checkpoint_path(run_dir, trial_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_checkpoint(
    run_dir: Path, trial_id: str, fingerprint: str, rounds: int | None = None
) -> tuple[int, bytes] | None:
    """The round and bytes of the trial's kept checkpoint, when it has one that this fedll
    reads and that was taken for this trial with these settings (and, given the trial's
    ``rounds``, after one of them but the last, with the results of those rounds:
    :func:`fedll.run.checkpoint.verify`; the trial verifies the rest when it resumes); a
    checkpoint that is not is set aside (:func:`set_aside_checkpoint`) and the trial starts
    from round 0."""
    from fedll.run.checkpoint import decode, verify

    path = checkpoint_path(run_dir, trial_id)
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        checkpoint = verify(
            decode(data, str(path)), str(path), trial_id=trial_id, fingerprint=fingerprint,
            rounds=rounds,
        )  # fmt: skip
    except DataError as error:
        set_aside_checkpoint(run_dir, trial_id, str(error).removeprefix(f"{path}: "))
        return None
    return checkpoint.round, data


def set_aside_checkpoint(run_dir: Path, trial_id: str, reason: str) -> Path | None:
    """Move the trial's kept checkpoint to ``checkpoints/invalid/`` (time-stamped where one
    set aside earlier has its name) and warn, naming it and ``reason`` (what is wrong with
    it; the trial starts from round 0); returns where it went (None: there was none)."""
    path = checkpoint_path(run_dir, trial_id)
    if not path.is_file():
        return None
    invalid = path.parent / INVALID
    invalid.mkdir(exist_ok=True)
    target = invalid / path.name
    if target.exists():
        target = invalid / f"{path.name}.{_stamp()}"
    shutil.move(path, target)
    logger.warning("%s: %s; set aside in %s, the trial starts from round 0", path, reason, invalid)
    return target


def drop_checkpoint(run_dir: Path, trial_id: str) -> None:
    """Forget the trial's checkpoint (it finished)."""
    checkpoint_path(run_dir, trial_id).unlink(missing_ok=True)


def verify_trial(run_dir: Path, trial_id: str, fingerprint: str) -> str | None:
    """Why the trial's files do not vouch for a finished trial of these settings, or None."""
    payloads = verified_payloads(run_dir, trial_id, fingerprint)
    return payloads if isinstance(payloads, str) else None


def verified_payloads(run_dir: Path, trial_id: str, fingerprint: str) -> dict[Path, bytes] | str:
    """The bytes of the trial's results and attention files when its seal vouches for them
    and for the model it lists, else why not (each file is read once, for its checksum and
    its caller; the model is hashed in chunks, not returned)."""
    files = TrialFiles.of(run_dir, trial_id)
    if not files.seal.is_file():
        return "no seal (not finished, or written by an earlier fedll)"
    payloads = {}
    try:
        seal = json.loads(files.seal.read_text())
        listed = seal["files"]
        if seal["trial"] != trial_id:
            return f"its seal is for trial {seal['trial']!r}"
        if seal["fingerprint"] != fingerprint:
            return "it was run with other settings (its fingerprint differs)"
        optional = [f for f in (files.previews, files.routing) if f.name in listed]
        for path in (files.results, files.attention, *optional):
            entry = listed[path.name]
            if not path.is_file():
                return f"{path.name} is missing"
            payloads[path] = path.read_bytes()
            if hashlib.sha256(payloads[path]).hexdigest() != entry["sha256"]:
                return f"{path.name} differs from what was written (cut short or edited)"
        if (entry := listed.get(files.model.name)) is not None:
            if not files.model.is_file():
                return f"its model {files.model} is missing"
            if (
                files.model.stat().st_size != entry["size"]
                or _sha256(files.model) != entry["sha256"]
            ):
                return (
                    f"its model {files.model} differs from what was written (cut short or edited)"
                )
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its seal is unreadable ({type(error).__name__})"
    return payloads


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def trial_previews(run_dir: Path, trial_id: str) -> list[dict] | None:
    """The trial's previews when its seal lists them and the file matches
    (:func:`fedll.results.rows.sealed_previews`), else None."""
    files = TrialFiles.of(run_dir, trial_id)
    return sealed_previews(files.seal, files.previews)


def set_aside(run_dir: Path, trial_id: str, reason: str) -> list[Path]:
    """Move the trial's files to ``trials/invalid/`` (time-stamped) and warn; returns the
    new paths."""
    files = TrialFiles.of(run_dir, trial_id)
    stamp = _stamp()
    target = files.results.parent / INVALID
    moved = []
    present = files.existing()
    for path in present:
        target.mkdir(parents=True, exist_ok=True)
        destination = target / f"{path.name}.{stamp}"
        shutil.move(str(path), destination)
        moved.append(destination)
    if moved:
        # named by a file that was there (a kept model may be all that is left of a trial)
        logger.warning("%s: %s; moved to %s and the trial runs again", present[0], reason, target)
    return moved


def _stamp() -> str:
    """Now, for the name of a file set aside."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def finished(run_dir: Path, fingerprints: Mapping[str, str]) -> set[str]:
    """The trial ids (of ``fingerprints``: trial id -> fingerprint) whose files verify; the
    files of every other trial that has any are set aside."""
    done = set()
    for trial_id, fingerprint in fingerprints.items():
        problem = verify_trial(run_dir, trial_id, fingerprint)
        if problem is None:
            done.add(trial_id)
        elif TrialFiles.of(run_dir, trial_id).existing():
            set_aside(run_dir, trial_id, problem)
    return done


def trial_events(run_dir: Path, trial_id: str) -> dict[str, dict[str, list[int]]]:
    """The sites that failed or were rejected, with their rounds, from the trial's seal."""
    seal = json.loads(TrialFiles.of(run_dir, trial_id).seal.read_text())
    return seal["events"]


def trial_wall_s(run_dir: Path, trial_id: str) -> float | None:
    """The seconds the trial ran, from its seal (None for a seal of an earlier fedll)."""
    seal = json.loads(TrialFiles.of(run_dir, trial_id).seal.read_text())
    wall = seal.get("wall_s")
    return None if wall is None else float(wall)
