"""The built site: ``mkdocs build --strict`` passes (a warning is an error: a broken link or
anchor, a page out of the navigation) and holds every generated page, and in headless Chromium
(as tests/report/test_html.py drives it; skipped without it) every page renders, is reached by
following links from the home page, has the navigation, decodes its images, and no internal
link or anchor is broken."""

from __future__ import annotations

import contextlib
import functools
import html
import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest

from docgen import api, scenario

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MKDOCS = importlib.util.find_spec("mkdocs") is not None
BUILD_SECONDS = 600
BROWSER_SECONDS = 300
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1366,900", "--enable-logging=stderr", "--v=0",
)  # fmt: skip

needs_mkdocs = pytest.mark.skipif(not MKDOCS, reason="mkdocs is not installed (the docs extra)")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The site built from this tree into a fresh folder, and the build's output."""
    site = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return site, done.stdout + done.stderr


@pytest.mark.slow
@needs_mkdocs
def test_the_site_builds_strictly_with_every_page(built: tuple[Path, str]):
    site, output = built
    assert "WARNING" not in output
    for page in (ROOT / "docs").rglob("*.md"):
        assert (site / page.relative_to(ROOT / "docs").with_suffix(".html")).is_file(), page
    for uri in api.pages(ROOT):
        assert (site / Path(uri).with_suffix(".html")).is_file(), uri
    reference = (site / "reference" / "scenario.html").read_text()
    assert "fedll-docs:" not in reference
    for row in scenario.schema_rows():
        assert f"<code>{html.escape(row.key, quote=False)}</code>" in reference, row.key
    lifelong = (site / "reference" / "api" / "fedll.evaluation.metrics.lifelong.html").read_text()
    assert "backward_transfer" in lifelong and ":::" not in lifelong
    assert ":class:" not in lifelong and ":func:" not in lifelong
    for page in site.rglob("*.html"):
        fetched = re.findall(
            r"""<(?:script|img|iframe)[^>]*\ssrc=["'](?:https?:)?//[^"']*|"""
            r"""<link[^>]*\shref=["'](?:https?:)?//[^"']*""",
            page.read_text(),
        )
        assert fetched == [], page  # nothing is fetched from elsewhere


CRAWL = """<!doctype html><html><head><meta charset="utf-8"><title>crawl</title></head><body>
<iframe id="frame" style="width:1366px;height:900px"></iframe>
<script>
(async () => {
  const origin = location.origin;
  const frame = document.getElementById("frame");
  const load = url => new Promise(resolve => {
    frame.onload = () => resolve();
    frame.src = url;
  });
  const settle = doc => Promise.all([...doc.images].map(i => i.complete ? null :
    new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r); })));
  const pages = {};
  const queue = [origin + "/index.html"];
  const seen = new Set(queue);
  while (queue.length) {
    const url = queue.shift();
    await load(url);
    const doc = frame.contentDocument;
    await settle(doc);
    const article = doc.querySelector("article") || doc.body;
    const info = {
      h1: !!article.querySelector("h1"),
      text: article.innerText.length,
      raw: /fedll-docs:|^:::/m.test(article.innerText),
      images: doc.images.length,
      decoded: [...doc.images].filter(i => i.complete && i.naturalWidth > 0).length,
      nav: doc.querySelectorAll("nav.md-nav--primary a.md-nav__link[href]").length,
      search: !!doc.querySelector("input.md-search__input"),
      ids: [...doc.querySelectorAll("[id]")].map(e => e.id),
      external: frame.contentWindow.performance.getEntriesByType("resource")
        .map(e => e.name).filter(name => !name.startsWith(origin)),
      links: [],
    };
    for (const a of doc.querySelectorAll("a[href]")) {
      const target = new URL(a.getAttribute("href"), frame.contentWindow.location.href);
      if (target.origin !== origin) continue;
      info.links.push(target.pathname + target.hash);
      if (target.pathname.endsWith(".html") && !seen.has(origin + target.pathname)) {
        seen.add(origin + target.pathname);
        queue.push(origin + target.pathname);
      }
    }
    pages[new URL(url).pathname] = info;
  }
  const files = {};
  for (const info of Object.values(pages)) {
    for (const link of info.links) {
      const path = link.split("#")[0];
      if (path in pages || path in files) continue;
      files[path] = (await fetch(origin + path)).status;
    }
  }
  await load(origin + "/index.html");
  const definitions = [...frame.contentDocument.querySelectorAll("nav.md-nav--primary a")]
    .find(a => a.textContent.trim() === "Definitions");
  const clicked = new Promise(resolve => { frame.onload = () => resolve(); });
  definitions.click();
  await clicked;
  const landed = frame.contentWindow.location.pathname;
  const heading = frame.contentDocument.querySelector("article h1").textContent;
  await fetch(origin + "/crawl-result", {
    method: "POST", body: JSON.stringify({pages, files, landed, heading}),
  });
})().catch(error => fetch(location.origin + "/crawl-result", {
  method: "POST", body: JSON.stringify({error: String(error && error.stack || error)}),
}));
</script></body></html>
"""


class _Site(http.server.SimpleHTTPRequestHandler):
    """The site's files; a POST to ``/crawl-result`` hands the crawl's JSON to the test."""

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()
        self.server.crawl = body.decode()  # type: ignore[attr-defined]
        self.server.done.set()  # type: ignore[attr-defined]


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[http.server.ThreadingHTTPServer]:
    """``folder`` over HTTP on 127.0.0.1 (a free port) while the block runs."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Site, directory=str(folder))
    )
    server.done = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def browsing(url: str, profile: Path) -> Iterator[subprocess.Popen]:
    """Headless Chromium on ``url`` while the block runs, in its own process group, which is
    ended (by the PID of the process started here) when the block leaves."""
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", url]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=(profile / "stderr.txt").open("w"),
        start_new_session=True,
    )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.mark.slow
@needs_mkdocs
@needs_chromium
def test_the_site_in_headless_chromium(built: tuple[Path, str]):
    site, _ = built
    (site / "crawl.html").write_text(CRAWL)
    with serve(site) as server, tempfile.TemporaryDirectory() as folder:
        profile = Path(folder)
        port = server.server_address[1]
        with browsing(f"http://127.0.0.1:{port}/crawl.html", profile):
            finished = server.done.wait(BROWSER_SECONDS)  # type: ignore[attr-defined]
        stderr = (profile / "stderr.txt").read_text(errors="replace")
    assert finished, f"the crawl did not finish in {BROWSER_SECONDS} s: {stderr[-3000:]}"
    crawl = json.loads(server.crawl)  # type: ignore[attr-defined]
    assert "error" not in crawl, crawl.get("error")
    pages = crawl["pages"]
    built_pages = {
        "/" + p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if p.name not in ("404.html", "crawl.html")
    }
    assert set(pages) == built_pages  # every page is reached by links from the home page
    for path, info in pages.items():
        assert info["h1"] and info["text"] > 40, path
        assert not info["raw"], path
        assert info["images"] == info["decoded"], path
        assert info["nav"] >= 30 and info["search"], path
        assert info["external"] == [], path  # nothing is fetched from elsewhere
    assert pages["/index.html"]["images"] >= 1
    assert {path: status for path, status in crawl["files"].items() if status != 200} == {}
    broken = []
    for path, info in pages.items():
        for link in info["links"]:
            target, _, anchor = link.partition("#")
            if anchor and target in pages and unquote(anchor) not in pages[target]["ids"]:
                broken.append(f"{path} -> {link}")
    assert broken == []
    assert crawl["landed"] == "/definitions.html" and "Definitions" in crawl["heading"]
    assert "Uncaught" not in stderr
