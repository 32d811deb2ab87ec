"""report.html: self-contained, escaped, and checked in a real browser (headless Chromium)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import make_attention, make_results  # the hand-built run of test_report

from fedll.report import build_report
from fedll.report.page import (
    KEY_LABELS,
    arithmetic_text,
    provenance_rows,
    scenario_brief,
    trial_records,
)
from fedll.report.summary import MEASURES
from fedll.run.provenance import write_provenance

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_SECONDS = 90
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1366,2200",
)  # fmt: skip


def write_seal(
    run_dir: Path, trial: str, wall_s: float | None, events: dict, arithmetic: str | None = None
) -> None:
    seal = {"trial": trial, "events": events, "files": {}, "fingerprint": "x"}
    if wall_s is not None:
        seal["wall_s"] = wall_s
    if arithmetic is not None:
        seal["arithmetic"] = arithmetic
    (run_dir / "trials").mkdir(exist_ok=True)
    (run_dir / "trials" / f"{trial}.json").write_text(json.dumps(seal))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    make_results().to_csv(tmp_path / "results.csv", index=False)
    make_attention().to_csv(tmp_path / "attention.csv", index=False)
    (tmp_path / "scenario.yaml").write_text(
        "name: handmade\nsites:\n- {name: site_a, modality: t2, patients: 3}\n"
        "- {name: site_b, modality: flair, patients: 3}\n"
        "stream: {ordering: [blocked], arrival_batch: [2]}\n"
        "models:\n  static: {name: static, base_width: 8}\n  dycnn: {name: dycnn, kernels: 4}\n"
        "strategies: [{name: fedavg}]\nseeds: [0, 1]\n"
    )
    write_seal(
        tmp_path, "static-s0", 12.34, {"failed": {"site_b": [2]}, "rejected": {}}, "cpu AVX2, z"
    )
    write_seal(tmp_path, "dycnn-s1", None, {"failed": {}, "rejected": {"site_a": [1, 2]}})
    write_provenance(tmp_path)
    return tmp_path


def test_the_page_holds_the_run_and_needs_no_network(run_dir: Path) -> None:
    built = build_report(run_dir)
    html = built.html.read_text()
    assert built.html == run_dir / "report.html"
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) == len(built.plots) == 3
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched
    key, full = html.split("<details>")
    assert all(label in key for label in KEY_LABELS)
    assert "switch drop (max)" not in key  # the other measures are one click away
    assert all(label in full for label in MEASURES.values())
    assert 'id="detection"' not in html  # results without HD95: no HD95 and detection table
    assert "site_a (t2, 3 patients); site_b (flair, 3 patients)" in html
    assert "12.3 s" in html and "site_b (round 2)" in html and "site_a (rounds 1, 2)" in html
    # wall time and arithmetic: 1 and 0 recorded of 4 trials, then the arithmetic's count
    assert html.count("not recorded") == 3 + 3 + 1 and html.count("no seal") == 2 * 2
    assert "not recorded: 3 trials; cpu AVX2, z: 1 trial (trials of different" in html
    assert "git revision" in html and "CPUs" in html


def test_names_are_escaped(tmp_path: Path) -> None:
    results = make_results()
    results["model"] = results["model"].replace("static", "<script>bad()</script>")
    results.to_csv(tmp_path / "results.csv", index=False)
    html = build_report(tmp_path).html.read_text()
    assert "<script>bad()" not in html
    assert "&lt;script&gt;bad()&lt;/script&gt;" in html


def test_brief_and_trial_records_by_hand(tmp_path: Path) -> None:
    brief = dict(
        scenario_brief(
            {"sites": [{"name": "h", "modality": "t2", "patients": 2}], "seeds": [0, 1],
             "strategies": [{"name": "fedavg"}, {"name": "fedprox", "mu": 0.1}]}
        )
    )  # fmt: skip
    assert brief == {
        "sites": "h (t2, 2 patients)",
        "strategies": "fedavg, {name: fedprox, mu: 0.1}",
        "seeds": "0, 1",
    }
    write_seal(tmp_path, "a", 3.0, {"failed": {"h": [1, 3]}, "rejected": {}}, "cpu AVX2, x")
    assert trial_records(tmp_path, ["a", "b"]) == [
        {"trial": "a", "wall_s": 3.0, "arithmetic": "cpu AVX2, x",
         "failed": ["h (rounds 1, 3)"], "rejected": []},
        {"trial": "b", "wall_s": None, "arithmetic": None, "failed": None, "rejected": None},
    ]  # fmt: skip


def test_the_trials_arithmetic_is_counted_and_a_mixture_is_called_one():
    one = [{"arithmetic": "cpu AVX512, x"}] * 2
    assert arithmetic_text(one) == "cpu AVX512, x: 2 trials"
    mixed = [*one, {"arithmetic": None}]
    assert arithmetic_text(mixed) == (
        "cpu AVX512, x: 2 trials; not recorded: 1 trial (trials of different arithmetic "
        "agree in distribution, not bit for bit)"
    )
    rows = dict(provenance_rows({"cpus": 2, "arithmetic": "cpu AVX2, y"}, mixed))
    assert rows["arithmetic (cohort)"] == "cpu AVX2, y"
    assert rows["arithmetic (trials)"] == arithmetic_text(mixed)


CHECK = """<script>
window.__errors = [];
const __error = console.error.bind(console);
console.error = (...a) => { window.__errors.push(a.join(" ")); __error(...a); };
window.addEventListener(
  "error", e => window.__errors.push(String(e.message || e.target.src)), true);
window.addEventListener("load", () => {
  const images = [...document.images];
  const out = document.createElement("pre");
  out.id = "fedll-check";
  out.textContent = JSON.stringify({
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    shrunk: images.filter(
      i => i.getBoundingClientRect().width < Math.min(i.naturalWidth, 800) - 1).length,
    widest: Math.max(...images.map(i => i.getBoundingClientRect().width)),
    errors: window.__errors,
    page_width: document.documentElement.scrollWidth,
  });
  document.body.appendChild(out);
});
</script>"""


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium once, time-bounded; every process it started is ended (its own
    process group, by the PID of the one started here)."""
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=BROWSER_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium ran past {BROWSER_SECONDS} s: {command}")
    finally:
        with contextlib.suppress(ProcessLookupError):  # helpers left behind, if any
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_in_headless_chromium(run_dir: Path) -> None:
    import matplotlib.image

    page = build_report(run_dir).html
    checked = run_dir / "checked.html"
    checked.write_text(page.read_text().replace("<head>", "<head>\n" + CHECK, 1))
    with tempfile.TemporaryDirectory() as profile:
        args = ["--virtual-time-budget=10000", "--dump-dom", checked.as_uri()]
        dom = chromium(args, Path(profile))
    found = re.search(r'<pre id="fedll-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["images"] == 3 and check["decoded"] == 3
    assert check["errors"] == []
    assert "Uncaught" not in dom.stderr
    assert check["page_width"] <= 1366  # no sideways scrolling on a laptop screen
    assert check["shrunk"] == 0  # each figure at its own size or at least 800 px wide
    assert 800 <= check["widest"] <= 1366
    shot = run_dir / "report.png"
    with tempfile.TemporaryDirectory() as profile:
        chromium([f"--screenshot={shot}", page.as_uri()], Path(profile))
    pixels = matplotlib.image.imread(shot)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert pixels.shape[1] == 1366
    assert len(colours) > 50  # figures and text, not a blank page


def test_columns_constant_over_the_rows_are_shown_once_above_the_table():
    from fedll.report.page import table_rows

    view = pd.DataFrame(
        {
            "model": ["static", "dycnn", "static", "dycnn"],
            "ordering": ["alternating"] * 4,
            "strategy": ["fedavg"] * 4,
            "modality": ["T2", "T2", "FLAIR", "FLAIR"],
            "seeds": ["3"] * 4,
            "final Dice": ["0.1", "0.2", "0.3", "0.4"],
        }
    )
    table = table_rows(view)
    assert table["constant"] == [
        ("ordering", "alternating"), ("strategy", "fedavg"), ("seeds", "3")
    ]  # fmt: skip
    assert table["columns"] == ["model", "modality", "final Dice"]
    assert table["rows"][1] == ["dycnn", "T2", "0.2"]
    one_row = table_rows(view.head(1))  # one row: every column is its own, nothing moves up
    assert one_row["constant"] == [] and one_row["columns"] == list(view.columns)


def test_the_page_shows_the_constant_columns_once(run_dir: Path) -> None:
    build_report(run_dir)
    page = (run_dir / "report.html").read_text()
    assert '<p class="constant">In every row: <span><b>ordering</b> blocked</span>' in page
    assert "<th>ordering</th>" not in page


def test_hd95_detection_and_surface_dice_are_on_the_page(tmp_path: Path) -> None:
    """Results with HD95 and surface Dice put each measure's final value and forgetting in
    the page's table beside the detection rate."""
    make_results().assign(hd95=4.0, surface_dice=0.5, surface_tolerance_mm=2.0).to_csv(
        tmp_path / "results.csv", index=False
    )
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    section = page[page.index('<h2 id="detection">') :]
    for column in ("final HD95 (mm)", "final detection rate", "final surface Dice",
                   "surface Dice forgetting (max)"):  # fmt: skip
        assert f">{column}</a></th>" in section or f"<th>{column}</th>" in section
    assert "<td>0.500" in section  # surface Dice 0.5 on every case and round


def test_figures_are_inlined_with_a_palette_and_keep_their_size(tmp_path: Path) -> None:
    """The page carries a 256-colour copy of each plot: same pixels' layout, a third of the
    bytes of a many-colour PNG; the plot's file keeps every colour."""
    from PIL import Image

    from fedll.report.page import data_uri

    rng = np.random.default_rng(0)
    pixels = (rng.random((120, 160, 3)) * 255).astype(np.uint8)  # noise: ~19,000 colours
    pixels[:60] = pixels[:60] // 64 * 64  # half of it in 64 colours
    source = tmp_path / "plot.png"
    Image.fromarray(pixels).save(source)
    uri = data_uri(source)
    assert uri.startswith("data:image/png;base64,")
    import base64
    import io

    inlined = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert inlined.size == (160, 120) and len(inlined.convert("RGB").getcolors(2**24)) <= 256
    assert len(uri) * 3 / 4 < source.stat().st_size / 2
    assert len(Image.open(source).getcolors(2**24)) > 256  # the file itself is untouched
