"""The report of a real forgetting run opens offline in headless Chromium: every figure draws its traces, the
headline table fits a 1,400-px screen, every figure keeps its promises (titled axes, distinct legend entries,
read from the plotly JSON in the page), and the glossary and provenance are there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import plotly.graph_objects as go
import pytest
from figure_checks import figure_problems

from irunlearn.bench import EntityBench
from irunlearn.experiment import RunResults
from irunlearn.report import CHROMIUM_FLAGS, find_chromium, forgetting_report, screenshot

pytestmark = pytest.mark.browser
METHODS = ("sae_guided", "grad_ascent")
VIEWPORT = (1400, 1000)
# Appended to a copy of the page: writes what the layout measures into the DOM, for --dump-dom to show.
MEASURE = """<script>window.addEventListener("load", () => {
  const headline = document.getElementById("headline");
  document.body.dataset.viewport = window.innerWidth;
  document.body.dataset.pageWidth = document.documentElement.scrollWidth;
  document.body.dataset.headlineRight = Math.ceil(headline.getBoundingClientRect().right);
});</script>"""


def find_or_install_chromium() -> str:
    """The Chromium binary; installs Debian's `chromium` with apt-get when absent, skips if that fails."""
    found = find_chromium()
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it (Debian/Ubuntu only).")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium: `{' '.join(command)}` failed: {done.stderr.strip()[-400:]}")
    found = find_chromium()
    if not found:
        pytest.skip("apt-get installed chromium but no `chromium` binary is on PATH.")
    return found


MARKS = {("path", "point"), ("g", "point"), ("path", "box"), ("path", "js-line")}  # markers, bars, boxes, lines


class PlotlyGraphs(HTMLParser):
    """Per plotly graph div (by id): the marks each drawn trace (`g.trace`) holds, and the arrows drawn;
    and the `data-*` attributes of `<body>`.

    A mark is a marker, bar, box or line path inside the trace's group; legend swatches are not in it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.graphs: dict[str, dict[str, list[int] | int]] = {}
        self.body: dict[str, str | None] = {}
        self._stack: list[tuple[str | None, bool]] = []  # per open element: (graph id it opens, is a trace)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body = {k.removeprefix("data-"): v for k, v in attributes.items() if k.startswith("data-")}
        classes = set((attributes.get("class") or "").split())
        graph = next((g for g, _ in reversed(self._stack) if g), None)
        in_trace = any(is_trace for _, is_trace in self._stack)
        if tag == "div" and "js-plotly-plot" in classes:
            self.graphs[attributes["id"]] = {"marks_per_trace": [], "arrows": 0}
            self._stack.append((attributes["id"], False))
            return
        is_trace = graph is not None and tag == "g" and "trace" in classes
        if is_trace:
            self.graphs[graph]["marks_per_trace"].append(0)
        elif graph is not None and in_trace and any((tag, c) in MARKS for c in classes):
            self.graphs[graph]["marks_per_trace"][-1] += 1
        if graph is not None and tag == "g" and "annotation-arrow-g" in classes:
            self.graphs[graph]["arrows"] += 1
        self._stack.append((None, is_trace))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self._stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if self._stack:
            self._stack.pop()


def page_figures(page: str) -> dict[str, go.Figure]:
    """Every `Plotly.newPlot(id, data, layout, config)` call of the page, as a figure, by div id."""
    decoder, figures, start = json.JSONDecoder(), {}, 0
    while (start := page.find("Plotly.newPlot(", start)) != -1:
        values, position = [], start + len("Plotly.newPlot(")
        for _ in range(3):  # the div id, the data, the layout
            while page[position] in " \n\t,":
                position += 1
            value, position = decoder.raw_decode(page, position)
            values.append(value)
        div_id, data, layout = values
        figures[div_id] = go.Figure(data=data, layout=layout)
        start = position
    return figures


@pytest.fixture(scope="module")
def report(ew, recognizer, tmp_path_factory):
    """Short runs of every method on one embedded-world person, evaluated, and their report."""
    bench = EntityBench.from_world(ew)
    target = bench.targets(n_random=1, seed=3)[0].name
    out = tmp_path_factory.mktemp("report") / "out"
    path = forgetting_report(
        out, bench, ew.model, ew.sae, list(METHODS), [target], recognizer=recognizer, n_retain_eval=40,
        n_cloud=60, progress=False, max_steps=4,
    )  # fmt: skip
    return path, RunResults.load(out).summary


def test_report_renders_every_figure_and_fits_the_first_screen_in_headless_chromium(report, tmp_path):
    path, metrics = report
    html = path.read_text()
    assert "<script src=" not in html, "the report must not load scripts from the network"
    figures = page_figures(html)
    measured = tmp_path / "measured.html"
    measured.write_text(html.replace("</body>", MEASURE + "</body>"))
    chromium = find_or_install_chromium()
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
         f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", measured.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    parser = PlotlyGraphs()
    parser.feed(done.stdout)
    assert sorted(parser.graphs) == sorted(figures)
    for graph_id, fig in figures.items():
        marks = parser.graphs[graph_id]["marks_per_trace"]
        assert len(marks) == len(fig.data), (graph_id, marks, [t.name for t in fig.data])
        assert all(count > 0 for count in marks), (graph_id, marks)  # every trace drew something
        assert figure_problems(fig) == [], graph_id
    (latent_map_id,) = [g for g in parser.graphs if g.endswith("latent-map")]
    assert parser.graphs[latent_map_id]["arrows"] == len(METHODS)  # one target: one before→after arrow per method
    # the headline table fits a 1,400-px screen: no horizontal scroll, nothing past the right edge
    viewport = int(parser.body["viewport"])
    assert viewport == VIEWPORT[0]
    assert int(parser.body["page-width"]) <= viewport
    assert int(parser.body["headline-right"]) <= viewport
    assert '<table class="headline" id="headline">' in done.stdout
    assert all(f'<td class="text">{method}</td>' in done.stdout for method in METHODS)
    # the glossary defines every column of the full table; the provenance names what made the report
    assert done.stdout.count("<tr>", done.stdout.index('id="glossary"')) >= len(metrics.columns)
    assert all(f"<td>{column}</td>" in done.stdout for column in metrics.columns)
    runs = [f"config: {run}" for run in metrics["run"]]
    for entry in ("commit", "model_hash", "sae", "hook_name", *runs):
        assert f'<td class="text">{entry}</td>' in done.stdout, entry


def test_screenshot_renders_the_first_screen(report, tmp_path):
    path, _ = report
    png = screenshot(path, tmp_path / "first_screen.png", find_or_install_chromium())
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == VIEWPORT
