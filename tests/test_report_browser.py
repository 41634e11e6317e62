"""The report of a real forgetting run opens offline in headless Chromium and every figure draws its traces."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from irunlearn.methods import forget
from irunlearn.report import forgetting_figures, metrics_table, write_report
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task

pytestmark = pytest.mark.browser
METHODS = ("sae_guided", "grad_ascent")

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    "--virtual-time-budget=10000",
]


def find_or_install_chromium() -> str:
    """The Chromium binary; installs Debian's `chromium` with apt-get when absent, skips if that fails."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it (Debian/Ubuntu only).")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium: `{' '.join(command)}` failed: {done.stderr.strip()[-400:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no `chromium` binary is on PATH.")
    return found


MARKS = {("path", "point"), ("g", "point"), ("path", "box"), ("path", "js-line")}  # markers, bars, boxes, lines


class PlotlyGraphs(HTMLParser):
    """Per plotly graph div (by id): the marks each drawn trace (`g.trace`) holds, and the arrows drawn.

    A mark is a marker, bar, box or line path inside the trace's group; legend swatches are not in it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.graphs: dict[str, dict[str, list[int] | int]] = {}
        self._stack: list[tuple[str | None, bool]] = []  # per open element: (graph id it opens, is a trace)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
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


@pytest.fixture(scope="module")
def report(ew, recognizer, tmp_path_factory):
    """Short sae_guided and grad_ascent runs on one embedded-world person, their figures and the report."""
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=3), recognizer)
    evaluator = world_evaluator(ew, task, n_retain_eval=40)
    results = [forget(ew.model, ew.sae, task, method=m, max_steps=4, progress=False) for m in METHODS]
    summaries = [evaluator.evaluate(r.model, genuineness=True)[0] for r in results]
    metrics = metrics_table(results, summaries)
    figures = forgetting_figures(ew.model, ew.sae, recognizer, results, ew.world.entities, metrics, n_cloud=60)
    path = write_report(tmp_path_factory.mktemp("report") / "out", figures, metrics, "browser test")
    return path, figures


def test_report_renders_every_figure_in_headless_chromium(report, tmp_path):
    path, figures = report
    html = path.read_text()
    assert "<script src=" not in html, "the report must not load scripts from the network"
    chromium = find_or_install_chromium()
    profile = tmp_path / "profile"
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", Path(path).as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    parser = PlotlyGraphs()
    parser.feed(done.stdout)
    expected = {f"fig-{i}-": fig for i, fig in enumerate(figures.values())}
    assert len(parser.graphs) == len(figures), (sorted(parser.graphs), list(figures))
    for prefix, fig in expected.items():
        (graph_id,) = [g for g in parser.graphs if g.startswith(prefix)]
        marks = parser.graphs[graph_id]["marks_per_trace"]
        assert len(marks) == len(fig.data), (graph_id, marks, [t.name for t in fig.data])
        assert all(count > 0 for count in marks), (graph_id, marks)  # every trace drew something
    (latent_map_id,) = [g for g in parser.graphs if g.endswith("latent-map")]
    assert parser.graphs[latent_map_id]["arrows"] == len(METHODS)  # one target: one before→after arrow per method
    assert "<h2>Metrics</h2>" in done.stdout and "<th>forget_acc</th>" in done.stdout
    assert all(f"<td>{method}</td>" in done.stdout for method in METHODS)
