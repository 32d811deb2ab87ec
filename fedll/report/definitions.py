"""What each measure of a forgetting table is, for the page (one click from its column) and
for a reader offline: its formula, the references it follows, and when it is n/a.

The measures are computed by :mod:`fedll.evaluation.metrics.lifelong` from a trial's metric matrix
``R`` ((T + 1) x M: ``R[t, m]`` is the mean over modality m's test cases after round t; row 0
the untrained model); the docs' definitions page (docs/definitions.md) states the same with
their derivations. A column of another metric (HD95, surface Dice, detection rate) takes the
Dice column's definition with that metric in place of Dice; for HD95, where lower is better,
the measures are taken of ``-R``, so its forgetting is the rise of HD95 in mm.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Definition:
    """One measure: ``anchor`` (its id on the page), ``text`` (what it is), ``na`` (when
    the table says n/a; "" where it always has a value)."""

    anchor: str
    text: str
    na: str = ""


DICE = Definition(
    "def-dice",
    "Dice of a test case: 2|P ∩ G| / (|P| + |G|) over its whole 3-D volume (P the predicted, "
    "G the true tumour voxels; 1 where both are empty). R[t, m] is its mean over modality m's "
    "test cases after round t; R[0, m] the untrained model.",
)
DEFINITIONS: dict[str, Definition] = {  # a table's column label -> its definition
    "final Dice": Definition(
        "def-final", "R[T, m]: the mean Dice on modality m after the last round T."
    ),
    "forgetting (final)": Definition(
        "def-forgetting-final",
        "F[T, m] = max over t ≤ T of R[t, m] − R[T, m]: how far modality m's Dice ends below "
        "its best (Chaudhry et al. 2018, indexed by modality; t from 0, so a loss before m "
        "first arrives counts too). ≥ 0.",
    ),
    "forgetting (max)": Definition(
        "def-forgetting-max",
        "max over t of F[t, m]: the deepest fall below the best so far, at any round.",
    ),
    "switch drop (mean)": Definition(
        "def-switch-drop",
        "At each round t ≥ 2 where the arriving modalities change, R[t − 1, m] − R[t, m] for "
        "each modality m that arrived in t − 1 and not in t: the Dice lost in the round the "
        "stream switched away from m; the mean (and max) over those switches.",
        "the stream never switches away from this modality",
    ),
    "switch drop (max)": Definition(
        "def-switch-drop",
        "the largest of the switch drops (see switch drop (mean)).",
        "the stream never switches away from this modality",
    ),
    "BWT": Definition(
        "def-bwt",
        "Backward transfer R[T, m] − R[τ_m, m], τ_m the last round that trained m (Lopez-Paz "
        "& Ranzato 2017, per modality; negative = forgotten).",
        "the modality trained in the last round (or never), so nothing came after it: as the "
        "paper's sum leaves out the last task",
    ),
    "learning acc.": Definition(
        "def-learning-accuracy",
        "The mean of R[t, m] over the rounds t in which modality m arrives: how well m is "
        "learnt right when it trains.",
        "the modality never arrives",
    ),
    "AUC": Definition(
        "def-auc",
        "The mean of R[t, m] over rounds t = 1..T: the area under the Dice curve divided by T, "
        "in [0, 1] like Dice.",
    ),
    "mean final Dice": Definition(
        "def-mean-final",
        "The mean of R[T, m] over the evaluated modalities (the same on each modality's row).",
    ),
    "final HD95 (mm)": Definition(
        "def-hd95",
        "The 95th percentile of the symmetric surface distance between prediction and truth "
        "(MONAI's HD95, in mm at the image's voxel size), averaged over the test cases with a "
        "non-empty prediction; BraTS's convention (a missed case at 373.13 mm) is in "
        "tables/forgetting_hd95_brats.*.",
        "no test case of this modality had a non-empty prediction",
    ),
    "HD95 rise (max, mm)": Definition(
        "def-hd95-rise",
        "forgetting (max) of HD95: the largest rise of HD95 above its best (lowest) so far.",
        "no test case of this modality had a non-empty prediction",
    ),
    "final detection rate": Definition(
        "def-detection",
        "The share of test cases (each has tumour) with a non-empty prediction after round T.",
    ),
    "final surface Dice": Definition(
        "def-surface-dice",
        "The share of both surfaces (prediction and truth) within the tolerance "
        "(evaluation.surface_tolerance_mm) of the other (Nikolov et al. 2021, MONAI), mean "
        "over test cases after round T.",
    ),
    "detection rate (mean over rounds)": Definition(
        "def-auc", "the AUC of the detection rate (see AUC)."
    ),
    "detection rate forgetting (max)": Definition(
        "def-forgetting-max", "forgetting (max) of the detection rate."
    ),
    "surface Dice forgetting (max)": Definition(
        "def-forgetting-max", "forgetting (max) of surface Dice."
    ),
    "final ε": Definition(
        "def-epsilon",
        "The (ε, δ) differential privacy a trial spent by its last round, by the accountant of "
        "its DP strategy (see the Differential privacy section).",
        "the trial ran without differential privacy",
    ),
}
"""Each labelled measure's definition (the other labels of a metric's table take the Dice
column's, :func:`definition_of`)."""


def definition_of(label: str) -> Definition | None:
    """The definition of a table's column ``label``: its own, or for a measure of another
    metric (``forgetting (max)`` of surface Dice keeps its label) the Dice one; None for a
    column that is not a measure."""
    return DEFINITIONS.get(label)


def page_definitions() -> list[dict[str, str]]:
    """The page's definitions section: Dice, then each measure once (by anchor), in order."""
    seen, out = set(), [{"anchor": DICE.anchor, "label": "Dice", "text": DICE.text, "na": ""}]
    for label, d in DEFINITIONS.items():
        if d.anchor in seen:
            continue
        seen.add(d.anchor)
        name = "switch drop (mean, max)" if d.anchor == "def-switch-drop" else label
        out.append({"anchor": d.anchor, "label": name, "text": d.text, "na": d.na})
    return out
