"""`mrc graph --format html` opened in a real browser: headless Chromium loads the page of a few
specs from a file:// URL, offline, runs its script and dumps the DOM. The page must have rendered
(`<body data-rendered="1">`) with nothing in `<pre id="errors">` (where its script writes any error),
and its timeline must have exactly one row per partition (per brain × partition with brains) and
one column per step of the period. A screenshot of each page is saved under the test's tmp_path.

Skipped only when no browser is installed (`.ci/run` installs Debian's `chromium`)."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mrc.api import compile_spec
from mrc.cli import main
from mrc.ir.html import to_html
from mrc.techniques.brains.tables import BRAINS

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason=f"no browser found (looked for {', '.join(BROWSERS)}): `apt-get install chromium` "
    "to test the schedule page in headless Chromium")


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert BROWSER is not None
    cmd = [BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


class _Page(HTMLParser):
    """What the test reads from the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.errors = ""
        self.rows = self.steps = 0
        self._in_errors = False
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "body":
            self.body = a
        if tag == "pre" and a.get("id") == "errors":
            self._in_errors = True
        if tag == "tr" and "row-partition" in classes:
            self.rows += 1
        if tag == "th" and "step" in classes:
            self.steps += 1
        for key in ("src", "href"):
            if a.get(key) and not str(a[key]).startswith("#"):
                self.external.append(str(a[key]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_errors = False

    def handle_data(self, data: str) -> None:
        if self._in_errors:
            self.errors += data


def _page(tmp_path: Path, html: Path) -> _Page:
    run = _browser(tmp_path, "--dump-dom", html.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    page = _Page()
    page.feed(run.stdout)
    return page


@pytest.mark.parametrize("name", ["transfer", "brains_two", "multirate_layers", "partitions"])
def test_the_page_renders_one_row_per_partition_and_one_column_per_step(tmp_path: Path, name: str) -> None:
    spec = ROOT / "specs" / f"{name}.mrs"
    graph = compile_spec(spec, ["train.device=cpu"]).graph
    html = tmp_path / f"{name}.html"
    html.write_text(to_html(graph, title=f"specs/{name}.mrs"))  # what `mrc graph --format html` writes

    page = _page(tmp_path, html)
    assert page.errors.strip() == ""
    assert page.body.get("data-rendered") == "1"
    assert page.rows == len(graph.partitions) * max(1, len(graph.table(BRAINS).replicas))
    assert page.steps == sum(stage.period for stage in graph.stages)
    assert page.external == []  # nothing to fetch: the page works offline

    shot = tmp_path / f"{name}.png"
    run = _browser(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", html.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_script_error_shows_in_the_page(tmp_path: Path) -> None:
    """The check above can fail: an error in the page's script lands in #errors and the page is
    not marked rendered."""
    html = tmp_path / "partitions.html"
    assert main(["graph", str(ROOT / "specs" / "partitions.mrs"), "--format", "html", "-o", str(html)]) == 0
    text = html.read_text()
    assert "    buildTimeline();" in text
    html.write_text(text.replace("    buildTimeline();", "    buildTimeline(); notAFunction();"))
    page = _page(tmp_path, html)
    assert "notAFunction" in page.errors
    assert page.body.get("data-rendered") == "0"


def test_labels_are_whole_and_skip_edges_go_around_the_nodes() -> None:
    """The page once cut update labels (no learning rates) and drew skip edges through nodes."""
    import re

    from mrc.api import compile_spec
    from mrc.ir.html import layers_of, pattern_svg

    graph = compile_spec(Path(__file__).resolve().parents[2] / "specs" / "modules_trgl.mrs").graph
    pattern = graph.stage.patterns[0]
    svg, _ = pattern_svg(pattern, "p0")
    shown = [" ".join(re.findall(r"<tspan[^>]*>([^<]*)</tspan>", g))
             for g in re.findall(r'<text text-anchor="middle" class="op-text">(.*?)</text>', svg)]
    import html as html_lib

    shown = [html_lib.unescape(s) for s in shown]
    for op in pattern.ops():
        assert op.text() in shown, op.text()  # whole, learning rates included
    assert any("lr=[0.1]" in s for s in shown)
    boxes = [tuple(map(float, m)) for m in re.findall(r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" '
                                                       r'height="([\d.]+)"', svg)]
    skips = re.findall(r'd="M[\d.,]+ C[\d.,]+ [\d.,]+ ([\d.]+),([\d.]+) L[\d.]+,([\d.]+) C', svg)
    assert skips, "modules_trgl has edges that skip layers (the batch to each module)"
    assert len(layers_of(pattern)) > 3
    for side, top, bottom in skips:  # the straight part of a routed edge runs beside the nodes it passes
        passed = [(x, w) for x, y, w, h in boxes if y < float(bottom) and y + h > float(top)]
        assert passed and not any(x < float(side) < x + w for x, w in passed), (side, top, bottom)
