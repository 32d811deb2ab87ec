"""Plots of a run: the files each panel and dynamic configuration gets."""

from __future__ import annotations

from pathlib import Path

from test_report import make_attention, make_results  # the hand-built run of test_report

from fedll.report.plots import write_plots


def test_write_plots(tmp_path: Path) -> None:
    paths = write_plots(make_results(), tmp_path, attention=make_attention())
    names = sorted(p.name for p in paths)
    assert names == [
        "attention_dycnn_blocked_2_fedavg.png",
        "curves_blocked_2_fedavg.png",
        "dice_matrix_blocked_2_fedavg.png",
    ]
    assert all(p.stat().st_size > 10_000 for p in paths)
    # seeds with different arrival orders (a random ordering) are drawn without shading
    flipped = make_results()
    flipped.loc[(flipped["seed"] == 1) & (flipped["round"] == 1), "arriving"] = "flair"
    flipped.loc[(flipped["seed"] == 1) & (flipped["round"] == 2), "arriving"] = "t2"
    assert len(write_plots(flipped, tmp_path / "random")) == 2


def test_every_model_of_a_crowded_plot_gets_its_own_line_style():
    from fedll.report.plots import line_style

    styles = [line_style(i) for i in range(30)]
    assert len(set(styles)) == 30  # the routing study draws 9 models in one panel


def test_plot_files_names_the_plots_of_a_configuration(tmp_path: Path) -> None:
    from fedll.report.plots import plot_files

    written = {p.name for p in write_plots(make_results(), tmp_path, make_attention())}
    keys = ["model", "ordering", "arrival_batch", "strategy"]
    dycnn = {"model": "dycnn", "ordering": "blocked", "arrival_batch": "2", "strategy": "fedavg"}
    assert set(plot_files(dycnn, keys)) <= written
    static = plot_files({**dycnn, "model": "static"}, keys)
    assert set(static[:2]) <= written and static[2] not in written  # no attention: static
