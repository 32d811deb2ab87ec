"""A prepared cohort's slices in memory: what every trial of a sweep reads, and nothing else.

The driver prepares the cohort once (:mod:`fedll.data.prepare`: the split and the slice cache
on its disk), then loads the slices of every training and test case into one
:class:`CohortArrays`. A sweep hands that object to its trials: in this process for
``--local``, through Ray's object store (put once, shared by every trial; its arrays reach a
task as read-only, zero-copy views) for Ray tasks on any node, so no trial opens a path of
the driver's machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedll.config.schema import SliceConfig
from fedll.data.prepare import PreparedCohort
from fedll.data.slices import CaseSlices
from fedll.errors import DataError


@dataclass(frozen=True)
class SiteArrays:
    """A simulated hospital held in memory: its name, modality and training cases' slices
    in arrival order (the same interface as :class:`fedll.data.site.Site`)."""

    name: str
    modality: str
    spec: SliceConfig
    slices: tuple[CaseSlices, ...]

    def cases(self, spec: SliceConfig, indices: Sequence[int]) -> list[CaseSlices]:
        """The slices of the cases at ``indices`` (0-based, arrival order); ``spec`` must be
        the recipe they were prepared with."""
        if spec != self.spec:
            raise DataError(
                f"site {self.name}: slices asked with a recipe the run did not prepare ({spec})"
            )
        outside = [i for i in indices if not 0 <= i < len(self.slices)]
        if outside:
            raise DataError(f"site {self.name}: case {outside[0]} asked, it holds {len(self)}")
        return [self.slices[i] for i in indices]

    def __len__(self) -> int:
        return len(self.slices)


@dataclass(frozen=True)
class CohortArrays:
    """Every site's training slices and every modality's test slices, in memory.

    sites: in the scenario's site order (a simulated node's ``partition-id`` indexes it).
    test: modality -> the test cases' slices.
    """

    spec: SliceConfig
    sites: tuple[SiteArrays, ...]
    test: Mapping[str, tuple[CaseSlices, ...]]

    @classmethod
    def load(cls, prepared: PreparedCohort) -> CohortArrays:
        """Read the slices of every case of ``prepared`` from the slice cache into memory
        (copies, not memory maps, so they travel to other machines)."""

        def loaded(cases: Sequence[CaseSlices]) -> tuple[CaseSlices, ...]:
            return tuple(
                CaseSlices(
                    c.patient,
                    c.modality,
                    c.site,
                    np.array(c.images),
                    np.array(c.masks),
                    np.array(c.indices),
                    c.spacing,
                )
                for c in cases
            )

        sites = tuple(
            SiteArrays(
                name,
                records[0].modality,
                prepared.spec,
                loaded(prepared.site_slices(name)),
            )
            for name, records in prepared.sites.items()
        )
        test = {m: loaded(prepared.test_slices(m)) for m in prepared.test}
        return cls(spec=prepared.spec, sites=sites, test=test)

    def site(self, name: str) -> SiteArrays:
        for site in self.sites:
            if site.name == name:
                return site
        raise DataError(f"the prepared cohort has no site {name!r}")

    def nbytes(self) -> int:
        """The size of every array held, in bytes (what the object store holds once)."""
        cases = [c for s in self.sites for c in s.slices] + [
            c for cs in self.test.values() for c in cs
        ]
        return sum(c.images.nbytes + c.masks.nbytes for c in cases)
