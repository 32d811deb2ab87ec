"""Per-site data folders for a local deployment: each hospital's cases as a manifest."""

from __future__ import annotations

from pathlib import Path

from fedll.data.manifest import write_manifest
from fedll.data.prepare import PreparedCohort
from fedll.errors import ConfigError
from fedll.names import is_simple_name, rule_for


def write_site_manifests(prepared: PreparedCohort, out: Path) -> dict[str, Path]:
    """``OUT/<site>/manifest.csv`` per site: exactly the training cases the scenario's split
    assigns to it (absolute paths), so a deployed site trains on what a simulated one does.

    A stand-in for each hospital's own data folder in a local trial. MSD's 4-D volumes (a
    channel per modality) cannot be listed in a manifest: give those sites a folder each.
    """
    written: dict[str, Path] = {}
    for site, records in prepared.sites.items():
        if not is_simple_name(site):
            raise ConfigError(
                f"site-data: site name {site!r} cannot name a folder ({rule_for(site)})"
            )
        if any(r.channel is not None for r in records):
            raise ConfigError(
                f"site-data: site {site} holds 4-D (MSD) volumes, which a manifest cannot "
                "list; give the site a folder of its own cases instead"
            )
        folder = Path(out) / site
        folder.mkdir(parents=True, exist_ok=True)
        rows = [
            (r.patient, site, r.modality, "train", Path(r.image).resolve(), Path(r.mask).resolve())
            for r in records
        ]
        written[site] = write_manifest(folder / "manifest.csv", rows)
    return written
