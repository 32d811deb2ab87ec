"""How differently T2 and FLAIR inputs are routed: attention distance per layer."""

from __future__ import annotations

import pandas as pd

from fedll.data import MODALITIES


def attention_distance(attention: pd.DataFrame) -> pd.DataFrame:
    """Total-variation distance between T2 and FLAIR attention, per trial x round x layer.

    Each modality's ``mass`` over a layer's kernels is normalised to sum 1, then
    ``tv = 0.5 * sum_k |p_t2(k) - p_flair(k)|`` (0 = same routing, 1 = disjoint kernels).
    """
    keys = ["trial", "round", "layer"]
    mass = attention.groupby([*keys, "kernel", "modality"], sort=False)["mass"].mean()
    wide = mass.unstack("modality").reindex(columns=list(MODALITIES))
    wide = wide / wide.groupby(level=keys, sort=False).transform("sum")
    tv = (wide["t2"] - wide["flair"]).abs().groupby(level=keys, sort=False).sum(min_count=1) / 2
    return tv.rename("tv").reset_index()
