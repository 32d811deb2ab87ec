"""MR physics of the synthetic cohort: tissues, spin-echo contrast, and per-site scanners.

A voxel's signal is the fraction-weighted sum of its tissues' spin-echo signals (partial volume
mixes magnetisation, not labels):

- T2:    S = PD (1 - exp(-TR/T1)) exp(-TE/T2)
- FLAIR: S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2), TI near the CSF null point
  TI0 = T1_csf ln(2 / (1 + exp(-TR/T1_csf))) (finite TR; ``T1 ln 2`` leaves CSF too bright).

So CSF is brighter than tumour on T2 and dark on FLAIR while oedema is bright on both: the
shift that makes a FLAIR-trained model segment CSF on T2. Relaxation values and scanner ranges
are the literature-typical ones of docs DATA.md; a ``ScannerProfile`` fixes one site's field,
timings and artefacts (slice profile, in-plane blur, bias field, Rician noise, gamma, gain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from types import MappingProxyType

import numpy as np
from scipy import ndimage as ndi


class Tissue(IntEnum):
    """Index of a tissue along the first axis of a tissue-fraction array (T, X, Y, Z)."""

    AIR = 0
    CSF = 1
    GREY = 2
    WHITE = 3
    BONE = 4
    FAT = 5
    OEDEMA = 6
    ENHANCING = 7
    NECROSIS = 8
    NON_ENHANCING = 9


@dataclass(frozen=True)
class Relaxation:
    """Relaxation times (ms) and proton density of one tissue."""

    t1_15: float  # T1 at 1.5 T
    t1_3: float  # T1 at 3 T
    t2: float
    pd: float

    def t1(self, field: float) -> float:
        return self.t1_15 if field < 2.25 else self.t1_3


# DATA.md's table; cortical bone (near-zero signal) and scalp fat (de Bazelaire et al. 2004)
# from the literature.
RELAXATION = MappingProxyType(
    {
        Tissue.AIR: Relaxation(1.0, 1.0, 1.0, 0.0),
        Tissue.CSF: Relaxation(4000, 4300, 2000, 1.00),
        Tissue.GREY: Relaxation(1100, 1450, 92, 0.82),
        Tissue.WHITE: Relaxation(650, 850, 75, 0.70),
        Tissue.BONE: Relaxation(250, 300, 10, 0.10),
        Tissue.FAT: Relaxation(345, 380, 90, 0.90),
        Tissue.OEDEMA: Relaxation(1300, 1700, 180, 0.88),
        Tissue.ENHANCING: Relaxation(1100, 1500, 120, 0.85),
        Tissue.NECROSIS: Relaxation(2500, 2800, 500, 0.92),
        Tissue.NON_ENHANCING: Relaxation(1200, 1600, 140, 0.86),
    }
)


@dataclass(frozen=True)
class SpinEcho:
    """A spin-echo sequence (ms); ``ti`` set makes it inversion recovery (FLAIR)."""

    tr: float
    te: float
    ti: float | None = None


@dataclass(frozen=True)
class ScannerProfile:
    """One site's scanner: field, sequences and the artefacts its images carry."""

    field: float  # tesla, 1.5 or 3
    t2: SpinEcho
    flair: SpinEcho
    gain_t2: float  # receiver gain, log-uniform over a decade
    gain_flair: float
    noise: float  # Rician sigma as a fraction of the white-matter signal
    bias: float  # bias-field amplitude: sensitivity varies within 1 +- bias
    slice_thickness: float  # mm, FWHM of the through-plane (z) slice profile
    blur: float  # mm, sigma of the in-plane Gaussian point-spread function
    gamma: float  # intensity gamma around the white-matter level

    def sequence(self, modality: str) -> SpinEcho:
        return self.t2 if modality == "t2" else self.flair

    def gain(self, modality: str) -> float:
        return self.gain_t2 if modality == "t2" else self.gain_flair


def flair_null_ti(t1_csf: float, tr: float) -> float:
    """Inversion time (ms) nulling CSF at finite TR: TI = T1 ln(2 / (1 + exp(-TR/T1)))."""
    return t1_csf * math.log(2.0 / (1.0 + math.exp(-tr / t1_csf)))


def tissue_signal(tissue: Tissue, sequence: SpinEcho, field: float) -> float:
    """Noise-free spin-echo magnitude of a pure tissue (proton-density units)."""
    rel = RELAXATION[tissue]
    t1 = rel.t1(field)
    if sequence.ti is None:
        recovery = 1.0 - math.exp(-sequence.tr / t1)
    else:
        recovery = abs(1.0 - 2.0 * math.exp(-sequence.ti / t1) + math.exp(-sequence.tr / t1))
    return rel.pd * recovery * math.exp(-sequence.te / rel.t2)


def sample_scanner(rng: np.random.Generator) -> ScannerProfile:
    """A scanner drawn from the multi-institution ranges of DATA.md."""
    field = 1.5 if rng.random() < 0.5 else 3.0
    t2 = SpinEcho(tr=rng.uniform(3000, 6000), te=rng.uniform(80, 120))
    tr = rng.uniform(8000, 11000)
    ti = flair_null_ti(RELAXATION[Tissue.CSF].t1(field), tr) * rng.uniform(0.95, 1.05)
    return ScannerProfile(
        field=field,
        t2=t2,
        flair=SpinEcho(tr=tr, te=rng.uniform(100, 150), ti=ti),
        gain_t2=10 ** rng.uniform(0.0, 1.0),
        gain_flair=10 ** rng.uniform(0.0, 1.0),
        noise=rng.uniform(0.01, 0.05),
        bias=rng.uniform(0.05, 0.30),
        slice_thickness=rng.uniform(1.0, 6.0),
        blur=rng.uniform(0.3, 1.0),
        gamma=rng.uniform(0.9, 1.1),
    )


def acquire(
    fractions: np.ndarray,
    spacing: float,
    profile: ScannerProfile,
    modality: str,
    sensitivity: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Image (X, Y, Z) float32 of tissue ``fractions`` (T, X, Y, Z) scanned as ``modality``.

    Signal = sum_t fraction_t x signal_t; then the point-spread function (z FWHM = slice
    thickness, Gaussian in-plane blur), the coil ``sensitivity`` (X, Y, Z; one per session,
    shared by both sequences), Rician noise, gamma around the white-matter level, and gain."""
    sequence = profile.sequence(modality)
    weights = np.array([tissue_signal(t, sequence, profile.field) for t in Tissue], np.float32)
    image = np.tensordot(weights, fractions, axes=1)
    sigma = np.array([profile.blur, profile.blur, profile.slice_thickness / 2.355]) / spacing
    image = ndi.gaussian_filter(image, sigma, truncate=3.0)
    image *= sensitivity
    white = float(weights[Tissue.WHITE])
    noise = rng.standard_normal((2, *image.shape), dtype=np.float32)
    noise *= profile.noise * white
    image += noise[0]
    image = np.hypot(image, noise[1], out=image)
    image /= white
    image **= profile.gamma
    image *= white * 1000.0 * profile.gain(modality)
    return image
