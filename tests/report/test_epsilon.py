"""Each site's ε and the words on what ε means: per site over the rounds it trains in, checked
against dp-accounting; the captions of the forgetting tables, privacy.md and report.html."""

from __future__ import annotations

from pathlib import Path

import dp_accounting
import numpy as np
import pandas as pd
import pytest

from fedll.report import build_report
from fedll.report.epsilon import format_privacy, privacy_table, site_privacy

DELTA = 1e-5
# rounds 1-4: site_a (T2) trains in rounds 1 and 2, site_b (FLAIR) in 3 and 4, site_c (FLAIR)
# in every round; round 5 plans nobody (nothing is released)
SITES = ["", "site_a;site_c", "site_a;site_c", "site_b;site_c", "site_b;site_c", ""]
ARRIVING = ["", "flair;t2", "flair;t2", "flair", "flair", ""]


def rdp_epsilon(z: float, releases: int) -> float:
    """dp-accounting's ε at δ = 1e-5 of ``releases`` Gaussian releases of multiplier ``z``
    under add/remove adjacency, no sampling amplification."""
    if releases == 0:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    accountant.compose(dp_accounting.GaussianDpEvent(z), releases)
    return float(accountant.get_epsilon(DELTA))


def private_results(z: float | None = 1.0, seeds=(0, 1)) -> pd.DataFrame:
    """One configuration x ``seeds``, rounds 0-5 as :data:`SITES` plans them, two modalities
    x one case; ``epsilon`` after each round as a trial's accountant states it (one release a
    round with planned sites), none where ``z`` is None."""
    releases = np.cumsum([0] + [1 if s else 0 for s in SITES[1:]])
    rows = []
    for seed in seeds:
        for t, (sites, arriving) in enumerate(zip(SITES, ARRIVING, strict=True)):
            for modality in ("t2", "flair"):
                rows.append(
                    {
                        "trial": f"static-s{seed}",
                        "model": "static",
                        "ordering": "blocked",
                        "arrival_batch": 2,
                        "strategy": "fedavg-dp-server-fixed-z1.0-c2.0",
                        "seed": seed,
                        "round": t,
                        "sites": sites,
                        "arriving": arriving,
                        "modality": modality,
                        "case": f"{modality}-p1",
                        "dice": 0.5,
                        "epsilon": np.nan if z is None else rdp_epsilon(z, int(releases[t])),
                        "dp_delta": np.nan if z is None else DELTA,
                    }
                )
    return pd.DataFrame(rows)


def test_a_sites_epsilon_is_that_of_the_rounds_it_trains_in():
    """site_a trains in 2 of the 5 rounds: its ε is dp-accounting's over 2 releases (7.08 at
    z = 1), below the trial's 10.73 over all 4 releases, which only site_c, in every round
    that released, spends."""
    sites = site_privacy(private_results()).set_index(["trial", "site"])
    for site, trained in (("site_a", 2), ("site_b", 2), ("site_c", 4)):
        row = sites.loc[("static-s1", site)]
        assert (row["trained"], row["rounds"], row["dp_delta"]) == (trained, 5, DELTA)
        assert row["epsilon"] == pytest.approx(rdp_epsilon(1.0, trained), rel=1e-12)
    assert sites.loc[("static-s0", "site_a"), "epsilon"] == pytest.approx(7.08, abs=0.005)
    assert sites.loc[("static-s0", "site_c"), "epsilon"] == pytest.approx(10.73, abs=0.005)
    table = privacy_table(private_results())
    assert table["site"].tolist() == ["site_a", "site_b", "site_c"]
    assert table["n_seeds"].tolist() == [2, 2, 2]
    view = format_privacy(table)
    assert view["rounds trained"].tolist() == ["2 of 5", "2 of 5", "4 of 5"]
    assert view["ε"].tolist() == ["7.08", "7.08", "10.7"]


def test_a_round_that_released_nothing_costs_its_sites_nothing():
    """An earlier fedll kept the model in a round whose every update was lost: its ε did not
    rise, and that round is no release for the sites it planned. Without an accountant, no
    site has an ε."""
    results = private_results(seeds=(0,))
    spent = {0: 0.0, 1: 4.0, 2: 4.0, 3: 6.0, 4: 7.0, 5: 7.0}  # round 2 released nothing
    results["epsilon"] = results["round"].map(spent)
    sites = site_privacy(results).set_index("site")
    assert sites["trained"].to_dict() == {"site_a": 1, "site_b": 2, "site_c": 3}
    assert sites["epsilon"].to_dict() == {"site_a": 4.0, "site_b": 6.0, "site_c": 7.0}
    assert site_privacy(private_results(z=None)).empty
    assert privacy_table(private_results(z=None)).empty


def test_the_captions_state_the_adjacency_the_sampling_and_delta(tmp_path: Path):
    """The forgetting tables' caption and privacy.md's say what ε is (site-level, add/remove
    of one site's whole update, n fixed in advance, every planned site each round, δ); the
    page says it too and shows each site's ε. Results without an accountant keep their
    caption and get no privacy table."""
    private_results().to_csv(tmp_path / "results.csv", index=False)
    report = build_report(tmp_path)
    stated = (
        "site-level (ε, δ)-DP at δ = 1e-05 under add/remove of one site's whole update",
        "its planned sites, fixed in advance, a lost update counting as zero",
        "Gaussian noise of std z·C/n",
        "every planned site asked each round (no sampling amplification)",
    )
    caption = report.markdown.read_text().splitlines()[0]
    assert all(words in caption for words in stated)
    assert "final ε: " in caption and "the ε of a site that trains in every round" in caption
    privacy = (tmp_path / "tables" / "privacy.md").read_text()
    assert privacy.startswith("ε of each site over the rounds it trains in")
    assert all(words in privacy.splitlines()[0] for words in stated)
    assert "| site_a | 2 | 2 of 5 | 7.08 |" in privacy
    assert {"privacy.csv", "privacy.md", "privacy.tex"} <= {p.name for p in report.tables}
    html = report.html.read_text()
    assert 'id="privacy"' in html and "ε of each site over the rounds it trains in" in html
    assert "Final ε: site-level" in html

    plain = tmp_path / "plain"
    plain.mkdir()
    private_results(z=None).to_csv(plain / "results.csv", index=False)
    report = build_report(plain)
    assert "ε" not in report.markdown.read_text().splitlines()[0]
    assert not (plain / "tables" / "privacy.md").exists()
    assert 'id="privacy"' not in report.html.read_text()
