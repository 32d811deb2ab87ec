"""What the ε of differential privacy means, and each site's own, from ``results.csv`` alone.

fedll's DP with fixed clipping over a mean (:mod:`strategies.privacy`) releases, each round
with planned sites, the clipped updates' sum over the round's planned number of sites ``n``
(fixed before training; a lost update counts as zero) plus Gaussian noise of std ``z C / n``:
one Gaussian mechanism of multiplier ``z`` under add/remove of one site's whole update
(site-level DP), every planned site asked each round (no sampling amplification). A trial's
``epsilon`` composes all its releases: the ε of a site that trains in every round. A site
that trains in ``k`` of the rounds took part in ``k`` releases; the others do not depend on
its data, so its own ε is that of ``k`` releases. Every release is the same mechanism, so
that is the trial's ε after its ``k``-th release, read off the ``epsilon`` column (which
rises at each release) without an accountant.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from fedll.results.columns import config_columns

SITE_COLUMNS: tuple[str, ...] = ("site", "trained", "rounds", "epsilon", "dp_delta")
"""Per site of a trial with an accountant (:func:`site_privacy`): the rounds it trained in
(``trained``) of the trial's ``rounds``, its ε over them, at δ ``dp_delta``."""


def mechanism(deltas: Iterable[float]) -> str:
    """What fedll's ε is, in one clause: the adjacency, the sampling assumption and δ."""
    at = ", ".join(f"{d:g}" for d in sorted(set(deltas)))
    return (
        f"site-level (ε, δ)-DP at δ = {at} under add/remove of one site's whole update (each "
        "round releases its clipped updates' sum over n, its planned sites, fixed in advance, "
        "a lost update counting as zero, plus Gaussian noise of std z·C/n), every planned site "
        "asked each round (no sampling amplification), RDP accounting"
    )


def deltas_of(results: pd.DataFrame) -> list[float]:
    """The δ at which the results state an ε (none without an accountant)."""
    return sorted(set(results.get("dp_delta", pd.Series(dtype=float)).dropna()))


def release_epsilons(trial_results: pd.DataFrame) -> tuple[list[float], dict[int, bool]]:
    """One trial's ε after 0, 1, 2, ... releases, and per round >= 1 whether it released (its
    ε rose over the round before's)."""
    spent = trial_results.groupby("round")["epsilon"].first().sort_index()
    after = [0.0]
    released: dict[int, bool] = {}
    previous = 0.0
    for server_round, epsilon in spent.items():
        if int(server_round) < 1:
            continue
        released[int(server_round)] = bool(np.isfinite(epsilon) and epsilon > previous)
        if released[int(server_round)]:
            after.append(float(epsilon))
            previous = float(epsilon)
    return after, released


def site_privacy(results: pd.DataFrame) -> pd.DataFrame:
    """Per trial with an accountant x site that trained in it: the trial's id, its
    configuration columns and seed, then :data:`SITE_COLUMNS`; a site's rounds are those
    whose ``sites`` name it and that released (see the module's docstring)."""
    keys = config_columns(results)
    rows = []
    if "epsilon" not in results.columns:
        return pd.DataFrame(columns=["trial", *keys, "seed", *SITE_COLUMNS])
    for trial, frame in results.groupby("trial", sort=False):
        if not frame["epsilon"].notna().any():
            continue
        after, released = release_epsilons(frame)
        sites = frame.groupby("round")["sites"].first()
        trained: dict[str, int] = {}
        for server_round, names in sites.items():
            if not released.get(int(server_round), False):
                continue
            for site in {s.strip() for s in str(names).split(";")} - {"", "nan"}:
                trained[site] = trained.get(site, 0) + 1
        first = frame.iloc[0]
        delta = float(frame["dp_delta"].dropna().iloc[0])
        for site in sorted(trained):
            rows.append(
                {
                    "trial": trial,
                    **{k: first[k] for k in keys},
                    "seed": first["seed"],
                    "site": site,
                    "trained": trained[site],
                    "rounds": len(released),
                    "epsilon": after[trained[site]],
                    "dp_delta": delta,
                }
            )
    return pd.DataFrame(rows, columns=["trial", *keys, "seed", *SITE_COLUMNS])


def privacy_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per configuration x site of :func:`site_privacy`: ``n_seeds`` and the largest
    ``trained``, ``rounds`` and ``epsilon`` over the seeds (the same for every seed when
    the plan is), at ``dp_delta``; empty without an accountant."""
    sites = site_privacy(results)
    keys = [*config_columns(sites), "site"]
    if sites.empty:
        return pd.DataFrame(columns=[*keys, "n_seeds", *SITE_COLUMNS[1:]])
    groups = sites.groupby(keys, sort=False, dropna=False)
    table = pd.concat(
        [
            groups["trial"].nunique().rename("n_seeds"),
            groups[["trained", "rounds", "epsilon", "dp_delta"]].max(),
        ],
        axis=1,
    ).reset_index()
    return table.sort_values(keys, kind="stable").reset_index(drop=True)


def format_privacy(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The readable view of :func:`privacy_table`: its configuration columns, the site, the
    seeds, "k of R" rounds trained and ε."""
    keys = [*config_columns(table), "site"]
    view = table[keys].copy()
    view["seeds"] = table["n_seeds"]
    view["rounds trained"] = [
        f"{k} of {r}" for k, r in zip(table["trained"], table["rounds"], strict=True)
    ]
    view["ε"] = [f"{e:.{digits}g}" for e in table["epsilon"]]
    return view.astype(str)


def privacy_caption(results: pd.DataFrame) -> str:
    """The title of ``privacy.md``: what each site's ε is."""
    return (
        "ε of each site over the rounds it trains in (a site in k of the R rounds takes part "
        f"in k releases and spends their ε): {mechanism(deltas_of(results))}."
    )


def epsilon_clause(results: pd.DataFrame) -> str:
    """The forgetting tables' words on their ``final ε`` column ("" without an accountant)."""
    deltas = deltas_of(results)
    if not deltas:
        return ""
    return (
        f"; final ε: {mechanism(deltas)}, over all of a trial's releases (the ε of a site "
        "that trains in every round; each site's own, over the rounds it trains in: privacy.md)"
    )
