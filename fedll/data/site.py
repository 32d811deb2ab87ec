"""Who a Flower node is and which cases it holds: from the scenario (simulation) or from
the SuperNode's ``--node-config`` (deployment). Plain data, no Flower types: the ClientApp
(``sites/client_app.py``) and ``fedll site`` both read a site through here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedll.config.schema import SliceConfig
from fedll.data import MODALITIES
from fedll.data.arrays import CohortArrays, SiteArrays
from fedll.data.layouts import discover
from fedll.data.nifti import CaseRecord
from fedll.data.prepare import PreparedCohort, default_cache_dir
from fedll.data.slice_cache import SliceCache, load_slices
from fedll.data.slices import CaseSlices
from fedll.errors import ConfigError, DataError


@dataclass(frozen=True)
class Site:
    """A hospital: its name, its one modality and its training cases in arrival order."""

    name: str
    modality: str
    records: tuple[CaseRecord, ...]
    cache_dir: Path

    def __len__(self) -> int:
        return len(self.records)

    def cases(self, spec: SliceConfig, indices: Sequence[int]) -> list[CaseSlices]:
        """Preprocessed slices of the cases at ``indices`` (0-based, arrival order)."""
        outside = [i for i in indices if not 0 <= i < len(self.records)]
        if outside:
            raise DataError(
                f"site {self.name}: case {outside[0]} asked, it holds {len(self.records)}"
            )
        chosen = [self.records[i] for i in indices]
        return load_slices(chosen, spec, SliceCache(self.cache_dir / "slices"))


def site_from_node_config(node_config: Mapping[str, Any]) -> Site:
    """A deployed site: ``site``, ``modality`` and ``data-dir`` (+ optional ``cache-dir``).

    The data dir is read with the loader (any supported layout); the site's training cases
    are its ``modality`` records not marked ``split=test``, sorted by patient id, and the
    server's stream uses the first ``patients`` of them (the scenario's count for the site).
    """
    missing = [k for k in ("site", "modality", "data-dir") if k not in node_config]
    if missing:
        raise ConfigError(
            f"--node-config: missing {', '.join(missing)} (need site, modality, data-dir)"
        )
    name, modality = str(node_config["site"]), str(node_config["modality"]).lower()
    if not name.strip():
        raise ConfigError("--node-config: site is empty")
    if modality not in MODALITIES:
        raise ConfigError(
            f"--node-config: site {name}: modality {modality!r} is not one of "
            f"{', '.join(MODALITIES)}"
        )
    data_dir = Path(str(node_config["data-dir"])).expanduser()
    if not data_dir.exists():
        raise ConfigError(f"--node-config: site {name}: data-dir {data_dir} does not exist")
    try:
        discovered = discover(data_dir)
    except DataError as error:
        raise DataError(f"site {name}: {error}") from None
    records = tuple(
        sorted(
            (r for r in discovered if r.modality == modality and r.split != "test"),
            key=lambda r: r.patient,
        )
    )
    if not records:
        raise DataError(f"site {name}: {data_dir}: no {modality} training cases found")
    cache = Path(str(node_config.get("cache-dir") or default_cache_dir())).expanduser()
    return Site(name=name, modality=modality, records=records, cache_dir=cache)


def site_from_simulation(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> Site:
    """A simulated site: ``partition-id`` indexes the scenario's site list.

    The split comes from ``cohort-index`` in the run config, else ``RUN_DIR/cohort.json``.
    """
    if "cohort-index" in run_config:
        index = Path(str(run_config["cohort-index"]))
    elif "run-dir" in run_config:
        index = Path(str(run_config["run-dir"])) / "cohort.json"
    else:
        raise ConfigError("run config: missing run-dir (or cohort-index) for a simulated site")
    if not index.exists():
        raise ConfigError(f"{index}: the run's cohort split does not exist yet")
    prepared = PreparedCohort.read(index)
    names = list(prepared.sites)
    pid = int(node_config["partition-id"])
    if not 0 <= pid < len(names):
        raise ConfigError(
            f"node config: partition-id {pid} but the scenario has {len(names)} sites"
        )
    name = names[pid]
    records = prepared.sites[name]
    return Site(
        name=name, modality=records[0].modality, records=records, cache_dir=prepared.cache_dir
    )


def site_from_cohort(node_config: Mapping[str, Any], cohort: CohortArrays) -> SiteArrays:
    """A simulated site of a sweep: ``partition-id`` indexes the in-memory cohort's sites."""
    pid = int(node_config["partition-id"])
    if not 0 <= pid < len(cohort.sites):
        raise ConfigError(
            f"node config: partition-id {pid} but the scenario has {len(cohort.sites)} sites"
        )
    return cohort.sites[pid]


def resolve_site(
    node_config: Mapping[str, Any],
    run_config: Mapping[str, Any],
    cohort: CohortArrays | None = None,
) -> Site | SiteArrays:
    """Deployment when the node config names a data dir; simulation otherwise, from the
    sweep's in-memory ``cohort`` when it has one, else from the run directory."""
    if "partition-id" in node_config and "data-dir" not in node_config:
        if cohort is not None:
            return site_from_cohort(node_config, cohort)
        return site_from_simulation(node_config, run_config)
    return site_from_node_config(node_config)
