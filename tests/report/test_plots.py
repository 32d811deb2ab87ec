"""Plots of a run: the files each panel and dynamic configuration gets."""

from __future__ import annotations

from pathlib import Path

from test_report import make_attention, make_results  # the hand-built run of test_report
from test_routing import make_routing

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


def test_a_panel_with_dynamic_models_gets_a_routing_plot(tmp_path: Path) -> None:
    # dycnn (2 seeds, last rounds 2 and 1) and dycnn-grouped (1 seed) share one panel
    paths = write_plots(make_results(), tmp_path, routing=make_routing())
    routing = [p for p in paths if p.name.startswith("routing_")]
    assert [p.name for p in routing] == ["routing_blocked_2_fedavg.png"]
    assert routing[0].stat().st_size > 10_000
    import matplotlib.image

    image = matplotlib.image.imread(routing[0])
    assert image.shape[1] > image.shape[0] and image[..., :3].std() > 0.05  # drawn, not blank


def test_every_model_of_a_crowded_plot_gets_its_own_line_style():
    from fedll.report.plots import line_style

    styles = [line_style(i) for i in range(30)]
    assert len(set(styles)) == 30  # the routing study draws 9 models in one panel


def test_plot_files_names_the_plots_of_a_configuration(tmp_path: Path) -> None:
    from fedll.report.plots import plot_files

    paths = write_plots(make_results(), tmp_path, make_attention(), make_routing(("dycnn",)))
    written = {p.name for p in paths}
    keys = ["model", "ordering", "arrival_batch", "strategy"]
    dycnn = {"model": "dycnn", "ordering": "blocked", "arrival_batch": "2", "strategy": "fedavg"}
    assert set(plot_files(dycnn, keys)) == written
    static = plot_files({**dycnn, "model": "static"}, keys)
    assert static[2] not in written  # no attention: static; the panel's plots show it too
    assert set(static) - {static[2]} <= written


def test_the_curves_gain_a_row_for_hd95_and_for_surface_dice_where_results_have_them(
    tmp_path: Path,
) -> None:
    from PIL import Image

    (dice_only,) = [p for p in write_plots(make_results(), tmp_path / "a") if "curves" in p.name]
    scored = make_results().assign(hd95=4.0, surface_dice=0.5, surface_tolerance_mm=2.0)
    (three,) = [p for p in write_plots(scored, tmp_path / "b") if "curves" in p.name]
    width, height = Image.open(dice_only).size
    assert Image.open(three).size[0] == width  # the same columns (T2, FLAIR)
    assert Image.open(three).size[1] == round(height * (3.8 + 6.0) / 3.8)  # two more rows
