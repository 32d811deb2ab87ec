"""Phantom anatomy, tumour and MR contrast: measured on synthesised heads, not assumed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from fedll.data.cohort import patient_rng, site_scanner
from fedll.data.fields import bias_field, smooth_field
from fedll.data.phantom import (
    Atlas,
    load_atlas,
    output_grid,
    synthesize_case,
    synthesize_phantom,
)
from fedll.data.scanner import (
    ScannerProfile,
    SpinEcho,
    Tissue,
    acquire,
    flair_null_ti,
    sample_scanner,
    tissue_signal,
)

SMALL = (48, 56, 44)  # 4 mm voxels: fast
MEDIUM = (64, 75, 59)  # 3 mm voxels: ventricles wide enough to measure CSF
TUMOUR = (Tissue.OEDEMA, Tissue.ENHANCING, Tissue.NECROSIS, Tissue.NON_ENHANCING)


@pytest.fixture(scope="module")
def atlas() -> Atlas:
    return load_atlas()


def reference_scanner(**changes: float) -> ScannerProfile:
    """DATA.md's reference protocol at 1.5 T: T2 TR 5000 / TE 100, FLAIR TR 9000 / TE 120."""
    fields = {
        "field": 1.5,
        "t2": SpinEcho(5000, 100),
        "flair": SpinEcho(9000, 120, flair_null_ti(4000, 9000)),
        "gain_t2": 1.0,
        "gain_flair": 1.0,
        "noise": 0.02,
        "bias": 0.1,
        "slice_thickness": 2.0,
        "blur": 0.5,
        "gamma": 1.0,
    }
    return ScannerProfile(**{**fields, **changes})


@pytest.mark.parametrize(
    ("tissue", "t2_ratio", "flair_ratio"),
    [  # DATA.md's table: signal / white matter at 1.5 T
        (Tissue.CSF, 3.7, 0.02),
        (Tissue.GREY, 1.5, 1.3),
        (Tissue.OEDEMA, 2.7, 2.3),
        (Tissue.ENHANCING, 2.0, 1.8),
        (Tissue.NECROSIS, 3.5, 1.4),
        (Tissue.NON_ENHANCING, 2.3, 2.0),
    ],
)
def test_tissue_signals_reproduce_the_data_table(
    tissue: Tissue, t2_ratio: float, flair_ratio: float
) -> None:
    scanner = reference_scanner()
    for sequence, expected in ((scanner.t2, t2_ratio), (scanner.flair, flair_ratio)):
        ratio = tissue_signal(tissue, sequence, 1.5) / tissue_signal(Tissue.WHITE, sequence, 1.5)
        assert ratio == pytest.approx(expected, abs=0.06)


@pytest.mark.parametrize(("field", "t1_csf"), [(1.5, 4000.0), (3.0, 4300.0)])
def test_finite_tr_null_point_suppresses_csf_and_t1_ln2_does_not(
    field: float, t1_csf: float
) -> None:
    for tr in (8000.0, 9000.0, 11000.0):
        nulled = SpinEcho(tr, 120, flair_null_ti(t1_csf, tr))
        naive = SpinEcho(tr, 120, t1_csf * math.log(2))
        white = tissue_signal(Tissue.WHITE, nulled, field)
        assert tissue_signal(Tissue.CSF, nulled, field) < 1e-6 * white
        assert tissue_signal(Tissue.CSF, naive, field) > 0.2 * white


def test_sampled_scanners_stay_in_the_documented_ranges() -> None:
    rng = np.random.default_rng(0)
    profiles = [sample_scanner(rng) for _ in range(200)]
    for p in profiles:
        assert p.field in (1.5, 3.0)
        assert 3000 <= p.t2.tr <= 6000 and 80 <= p.t2.te <= 120 and p.t2.ti is None
        assert 8000 <= p.flair.tr <= 11000 and 100 <= p.flair.te <= 150
        t1_csf = 4000.0 if p.field == 1.5 else 4300.0
        assert abs(p.flair.ti / flair_null_ti(t1_csf, p.flair.tr) - 1) <= 0.05
        assert 1 <= p.gain_t2 <= 10 and 1 <= p.gain_flair <= 10
        assert 0.01 <= p.noise <= 0.05 and 0.05 <= p.bias <= 0.3
        assert 1 <= p.slice_thickness <= 6 and 0.9 <= p.gamma <= 1.1
    assert {p.field for p in profiles} == {1.5, 3.0}


def test_smooth_and_bias_fields_are_bounded() -> None:
    rng = np.random.default_rng(1)
    field = smooth_field(rng, (20, 24, 18), (5, 6, 5))
    assert field.shape == (20, 24, 18) and field.dtype == np.float32
    assert np.abs(field).max() <= 1.0 + 1e-6 and field.std() > 0.05
    coil = bias_field(rng, (20, 24, 18), 0.3)
    assert coil.min() >= 0.7 - 1e-6 and coil.max() <= 1.3 + 1e-6


def test_phantom_is_a_partition_with_consistent_labels(atlas: Atlas) -> None:
    phantom = synthesize_phantom(atlas, SMALL, patient_rng(0, 0))
    f = phantom.fractions
    assert f.shape == (len(Tissue), *SMALL) and f.dtype == np.float32
    assert f.min() >= -1e-6
    np.testing.assert_allclose(f.sum(axis=0), 1.0, atol=1e-5)
    labels = phantom.labels
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}
    tumour = f[list(TUMOUR)].sum(axis=0)
    np.testing.assert_array_equal(labels > 0, tumour >= 0.5)
    assert (f[Tissue.OEDEMA][labels == 2] >= f[Tissue.ENHANCING][labels == 2]).all()
    # the tumour lies inside the skull: no labelled voxel is mostly bone, scalp or air
    outside = f[[Tissue.AIR, Tissue.BONE, Tissue.FAT]].sum(axis=0)
    assert outside[labels > 0].max() < 0.5
    assert phantom.spacing == pytest.approx(4.0)
    np.testing.assert_allclose(phantom.affine, output_grid(atlas, SMALL)[1])


def test_tumours_vary_in_size_grade_and_side(atlas: Atlas) -> None:
    volumes, enhancing, sides = [], [], []
    for index in range(16):
        phantom = synthesize_phantom(atlas, SMALL, patient_rng(3, index))
        labels = phantom.labels
        assert (labels > 0).any(), f"patient {index} has no tumour"
        volumes.append(int((labels > 0).sum()))
        enhancing.append(bool((labels == 4).any()))
        centre = np.argwhere(labels > 0).mean(axis=0)
        sides.append(float((phantom.affine @ np.append(centre, 1))[0]) > 0)
    assert max(volumes) > 5 * min(volumes)
    assert 0 < sum(enhancing) < len(enhancing)  # high and low grade both occur
    assert 0 < sum(sides) < len(sides)  # both hemispheres


def test_oedema_follows_white_matter_and_spares_csf(atlas: Atlas) -> None:
    """Normal tissue left in an oedema voxel keeps the anatomy's proportions (the tumour
    scales all of it alike), so it shows what the oedema grew into: more white matter and
    less CSF than in the ring of brain just outside the tumour."""
    for index in range(3):
        phantom = synthesize_phantom(atlas, MEDIUM, patient_rng(5, index))
        f, labels = phantom.fractions, phantom.labels
        normal = f[[Tissue.GREY, Tissue.WHITE, Tissue.CSF]]
        residual = normal[:, labels == 2]
        residual = residual[:, residual.sum(axis=0) > 0.05]
        ring = ndi.binary_dilation(labels > 0, iterations=3) & (labels == 0)
        ring &= normal.sum(axis=0) > 0.9
        _, white, csf = residual.sum(axis=1) / residual.sum()
        _, ring_white, ring_csf = normal[:, ring].sum(axis=1) / normal[:, ring].sum()
        assert white > ring_white + 0.1
        assert csf < 0.5 * ring_csf


def _tissue_means(image: np.ndarray, fractions: np.ndarray) -> dict[Tissue, float]:
    masks = {t: fractions[t] > 0.9 for t in (Tissue.CSF, Tissue.WHITE, Tissue.OEDEMA)}
    masks[Tissue.WHITE] = ndi.binary_erosion(masks[Tissue.WHITE])
    return {t: float(image[m].mean()) for t, m in masks.items()}


def test_contrast_of_a_generated_case(atlas: Atlas) -> None:
    """On an acquired (blurred, biased, noisy) case: CSF bright on T2 and suppressed on FLAIR,
    oedema bright on both."""
    phantom = synthesize_phantom(atlas, MEDIUM, patient_rng(0, 0))
    rng = np.random.default_rng(0)
    scanner = reference_scanner()
    coil = bias_field(rng, MEDIUM, scanner.bias)
    ratios = {}
    for modality in ("t2", "flair"):
        image = acquire(phantom.fractions, phantom.spacing, scanner, modality, coil, rng)
        mean = _tissue_means(image, phantom.fractions)
        ratios[modality] = {t: mean[t] / mean[Tissue.WHITE] for t in mean}
    assert ratios["t2"][Tissue.CSF] > 2.0
    assert ratios["flair"][Tissue.CSF] < 0.3
    assert ratios["t2"][Tissue.OEDEMA] > 1.5 and ratios["flair"][Tissue.OEDEMA] > 1.5
    # what fools a FLAIR-trained model on T2: CSF is brighter than oedema there
    assert ratios["t2"][Tissue.CSF] > ratios["t2"][Tissue.OEDEMA]


def test_every_sampled_site_keeps_the_modality_shift(atlas: Atlas) -> None:
    phantom = synthesize_phantom(atlas, MEDIUM, patient_rng(0, 1))
    for site in ("A", "B", "C", "D"):
        scanner = site_scanner(0, site)
        rng = np.random.default_rng(1)
        coil = bias_field(rng, MEDIUM, scanner.bias)
        t2, flair = (
            _tissue_means(
                acquire(phantom.fractions, phantom.spacing, scanner, modality, coil, rng),
                phantom.fractions,
            )
            for modality in ("t2", "flair")
        )
        assert t2[Tissue.CSF] / t2[Tissue.WHITE] > 2.0
        assert t2[Tissue.CSF] > t2[Tissue.OEDEMA] > 1.5 * t2[Tissue.WHITE]
        assert flair[Tissue.CSF] / flair[Tissue.WHITE] < 0.45  # TI up to 5% off the null
        # 3 T at short TE inverts part of the oedema's longer T1 too: lesion contrast drops
        assert flair[Tissue.OEDEMA] > 1.3 * flair[Tissue.WHITE]
        assert flair[Tissue.OEDEMA] > 3 * flair[Tissue.CSF]


def test_same_generator_same_case_and_patients_differ(atlas: Atlas) -> None:
    scanner = site_scanner(0, "A")
    first = synthesize_case(atlas, SMALL, scanner, patient_rng(0, 2))
    again = synthesize_case(atlas, SMALL, scanner, patient_rng(0, 2))
    other = synthesize_case(atlas, SMALL, scanner, patient_rng(0, 3))
    for modality in ("t2", "flair"):
        assert first[0][modality].tobytes() == again[0][modality].tobytes()
        assert first[0][modality].dtype == np.float32
        assert not np.array_equal(first[0][modality], other[0][modality])
    assert first[1].tobytes() == again[1].tobytes()
    np.testing.assert_array_equal(first[2], other[2])  # one grid for the whole cohort
