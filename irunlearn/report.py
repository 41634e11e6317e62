"""The report of a forgetting run: its standard figures and metrics table in one self-contained HTML file.

`write_report` writes any figures and table as `index.html` with plotly.js inlined once, so the file opens
offline, from a mail attachment or a CI artifact. `forgetting_figures` builds the standard set for one or
more `UnlearnResult`s of the same targets, and `forgetting_report` does both (what `irunlearn report` runs).
"""

from __future__ import annotations

import html
import random
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn import __version__
from irunlearn.activations import encode_latents, extract_activations
from irunlearn.entities import Entity, EntitySet
from irunlearn.io import atomic_dir
from irunlearn.methods.base import UnlearnResult
from irunlearn.plots import (
    feature_shift,
    latent_map,
    method_comparison,
    optimisation_history,
    probe_distributions,
    separation_bars,
)
from irunlearn.prompts import Template
from irunlearn.recognition import Recognizer

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
nav ul { columns: 2; } section { margin: 2.5em 0; border-top: 1px solid #ddd; }
table.metrics { border-collapse: collapse; font-size: 0.9em; display: block; overflow-x: auto; }
table.metrics th, table.metrics td { padding: 0.3em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
table.metrics th { background: #f4f4f4; }
"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def report_html(figures: Mapping[str, go.Figure], metrics: pd.DataFrame | None, title: str) -> str:
    """The report page as a string: title, metrics table, a contents list, then one section per figure.

    plotly.js is inlined with the first figure only (the later ones reuse it); figure `i` gets the div id
    `fig-<i>-<slug of its key>`, so a browser test can find each graph.
    """
    sections, contents = [], []
    for i, (name, fig) in enumerate(figures.items()):
        div_id = f"fig-{i}-{_slug(name)}"
        body = fig.to_html(full_html=False, include_plotlyjs=i == 0, div_id=div_id, config={"responsive": True})
        sections.append(f'<section id="s-{div_id}"><h2>{html.escape(name)}</h2>\n{body}\n</section>')
        contents.append(f'<li><a href="#s-{div_id}">{html.escape(name)}</a></li>')
    table = (
        metrics.to_html(index=False, classes="metrics", border=0, na_rep="–", float_format=lambda x: f"{x:.3f}")
        if metrics is not None and not metrics.empty
        else "<p>No metrics.</p>"
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">irunlearn {__version__} · {stamp} · figures: {len(figures)}</p>',
            "<h2>Metrics</h2>",
            table,
            f"<nav><ul>{''.join(contents)}</ul></nav>",
            *sections,
            "</body></html>",
        ]
    )


def write_report(
    out_dir: str | Path,
    figures: Mapping[str, go.Figure],
    metrics: pd.DataFrame | None = None,
    title: str = "irunlearn report",
    force: bool = False,
) -> Path:
    """Write `index.html` (figures + metrics table, plotly.js inlined: no network needed) into `out_dir`.

    The folder appears whole or not at all (`irunlearn.io.atomic_dir`); an existing non-empty `out_dir`
    is replaced only with `force`. Returns the path of `index.html`.

    >>> write_report("reports/run1", {"History": fig}, metrics_table(results, summaries), force=True)
    """
    if not figures:
        raise ValueError("No figures to report.")
    page = report_html(figures, metrics, title)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=force) as tmp:
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out_dir / "index.html"


def metrics_table(results: Sequence[UnlearnResult], summaries: Sequence[Mapping[str, float]]) -> pd.DataFrame:
    """One row per run: method, targets, stop reason, steps, seconds, then the evaluator's summary metrics.

    `summaries[i]` is the first element of `Evaluator.evaluate(results[i].model)`.
    """
    if len(results) != len(summaries):
        raise ValueError(f"{len(results)} results but {len(summaries)} summaries.")
    return pd.DataFrame(
        [
            {
                "method": r.method,
                "targets": ", ".join(r.targets),
                "stop_reason": r.stop_reason,
                "steps": r.steps,
                "seconds": r.seconds,
                **summary,
            }
            for r, summary in zip(results, summaries, strict=True)
        ]
    )


def forgetting_figures(
    model: HookedTransformer,
    sae: SAE,
    recognizer: Recognizer,
    results: Sequence[UnlearnResult],
    entities: EntitySet,
    metrics: pd.DataFrame | None = None,
    templates: Sequence[Template] | None = None,
    n_cloud: int = 200,
    max_targets: int = 3,
    seed: int = 0,
) -> dict[str, go.Figure]:
    """The standard figures of forgetting runs on the same targets, keyed by section heading.

    `model` is the original; `results` the runs (one per method). Figures: the recognizer's known- and
    unknown-latents; probe p_known of known and unknown people (`n_cloud` of each, targets excluded) and
    of the targets before and after each run; the latent map with one arrow per target and run; each
    run's optimisation history; feature shifts of up to `max_targets` targets per run; and, given a
    `metrics` table with a `method` column, the method comparison. Entity readings average over
    `templates` (default: the recognizer's training templates).
    """
    if not results:
        raise ValueError("No results: run at least one forgetting method first.")
    target_names = results[0].targets
    if any(r.targets != target_names for r in results):
        raise ValueError("All results must forget the same targets to share a latent map.")
    templates = list(templates or recognizer.templates)
    targets = [entities.get(name) for name in target_names]
    rng = random.Random(seed)
    known = [e for e in entities.known if e.name not in target_names]
    known = rng.sample(known, min(n_cloud, len(known)))
    unknown = rng.sample(entities.unknown, min(n_cloud, len(entities.unknown)))

    def read(edited: HookedTransformer, people: list[Entity], group: str) -> tuple[pd.DataFrame, torch.Tensor]:
        """Probe readings per person and mean latents per person, from one activation pass."""
        acts = extract_activations(
            edited, recognizer.hook_name, people, templates, prepend_bos=recognizer.prepend_bos, progress=False
        )
        latents = encode_latents(sae, acts.resid)
        readings = recognizer.describe(acts.resid, latents, acts.index["entity"]).assign(group=group)
        return readings, latents.reshape(len(people), len(templates), -1).mean(1)

    known_readings, known_latents = read(model, known, "known")
    unknown_readings, unknown_latents = read(model, unknown, "unknown")
    before_readings, before = read(model, targets, "targets before")
    after_reads = {r.method: read(r.model, targets, f"targets after {r.method}") for r in results}
    after = {method: latents for method, (_, latents) in after_reads.items()}
    probe_rows = [known_readings, unknown_readings, before_readings, *(rows for rows, _ in after_reads.values())]
    figures = {
        "Recognition: known- and unknown-latents": separation_bars(recognizer),
        "Recognition: probe p_known": probe_distributions(pd.concat(probe_rows, ignore_index=True)),
        "Latent map": latent_map(
            known_latents,
            unknown_latents,
            before,
            after,
            target_names,
            mu_known=recognizer.mu_known,
            mu_unknown=recognizer.mu_unknown,
            known_names=[e.name for e in known],
            unknown_names=[e.name for e in unknown],
        ),
    }
    for r in results:
        if not r.history.empty:
            figures[f"History: {r.method}"] = optimisation_history(
                r.history, r.stop_reason, f"{r.method}: optimisation history ({r.stop_reason} after {r.steps} steps)"
            )
        for i, name in enumerate(target_names[:max_targets]):
            figures[f"Feature shift: {r.method}, {name}"] = feature_shift(
                before[i], after[r.method][i], recognizer, f"{name} ({r.method})"
            )
    if metrics is not None and "method" in metrics:
        figures["Methods compared"] = method_comparison(metrics)
    return figures


def forgetting_report(
    out_dir: str | Path,
    model: HookedTransformer,
    sae: SAE,
    recognizer: Recognizer,
    results: Sequence[UnlearnResult],
    entities: EntitySet,
    metrics: pd.DataFrame,
    templates: Sequence[Template] | None = None,
    title: str | None = None,
    force: bool = False,
) -> Path:
    """`forgetting_figures` + `write_report`: the standard report of forgetting runs. Returns index.html.

    >>> forgetting_report("reports/demo", ew.model, ew.sae, recognizer, [result], ew.world.entities,
    ...                   metrics_table([result], [summary]))
    """
    figures = forgetting_figures(model, sae, recognizer, results, entities, metrics, templates)
    title = title or f"Forgetting {', '.join(results[0].targets)}: {', '.join(r.method for r in results)}"
    return write_report(out_dir, figures, metrics, title, force=force)
