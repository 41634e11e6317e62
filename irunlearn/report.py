"""The report of a forgetting run: figures with a paragraph each, the metrics, a glossary and provenance.

`write_report` writes sections (a figure and the paragraph under it) and the metrics as one self-contained
`index.html`, plotly.js inlined once, so the file opens offline, from a mail attachment or a CI artifact.
The page opens on a compact headline table (one row per method, each heading marked ↑ / ↓ / → for which
direction is good) that fits a 1,400-px screen; the full table follows in a scrollable, sortable block,
then a glossary (every column in one line: definition, direction, what a genuine forget looks like, built
from the metric registry) and the provenance (version, commit, seeds, hook, configs, weight hashes).
`forgetting_sections` builds the standard sections of a saved run (`RunResults`), each paragraph generated
from the numbers it shows; `forgetting_report` runs, saves and renders (what `irunlearn report` runs), and
`render_report` redraws a saved run folder without a model; `screenshot` renders the first screen.
Where the targets are a forget set with an oracle (the world retrained without them, `matching_oracle`),
the run gains its row (`run(oracle=..., baselines=["oracle"])`), its own probes' readings in the glance
figure and relearning curves of every run, the oracle and strangers (`relearning_curves`): what exact
unlearning reaches, next to each method.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from sae_lens import SAE
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn import __version__
from irunlearn.bench import EntityBench
from irunlearn.depth import best_of_lr, relearn_attacks
from irunlearn.evaluation import Evaluator
from irunlearn.experiment import ORACLE, RunResults, run
from irunlearn.io import atomic_dir, check_output_dir
from irunlearn.methods.base import UnlearnResult
from irunlearn.metrics import metric_table
from irunlearn.plots import (
    PROBE_COLUMNS,
    axis_position,
    feature_shift,
    genuineness_at_a_glance,
    latent_map,
    loss_series,
    method_color,
    method_comparison,
    optimisation_history,
    probe_distributions,
    relearn_curves,
    separation_bars,
)
from irunlearn.readings import EntityReadings
from irunlearn.recognition import Recognizer

if TYPE_CHECKING:
    from irunlearn.world.artifacts import EmbeddedWorld
    from irunlearn.world.oracle import Oracle

# The evaluator's own columns and the run's: (definition, direction, what a genuine forget looks like).
# Direction: "↑" higher is better, "↓" lower is better, "→" closest to the stated reference, "" not a score.
CORE_COLUMNS: dict[str, tuple[str, str, str]] = {
    "run": ("the run's id: seed:targets:method", "", ""),
    "seed": ("the seed of the target draw, the method and the evaluator", "", ""),
    "method": ("the unlearning method", "", ""),
    "targets": ("the people forgotten together", "", ""),
    "stop_reason": ("why the run stopped (flipped, suppressed, max_steps, ...)", "", "flipped or suppressed"),
    "converged": ("whether the method's own stop rule was met before max_steps", "", "true"),
    "persistent": ("whether the edit is in the weights (false: inference-time hooks)", "", "true"),
    "steps": ("optimiser updates applied", "↓", "few"),
    "seconds": ("wall time of the run, setup included", "↓", "short"),
    "forget_acc": ("targets' facts still answered right, by the bench's judge (training phrasings)", "↓", "0"),
    "paraphrase_forget_acc": ("the same with held-out phrasings no method trains on", "↓", "0, like forget_acc"),
    "idk_rate": ("targets' questions answered as a stranger's are ('unknown')", "↑", "≈ 1, like a stranger"),
    "retain_acc": ("other people's facts kept, ÷ the original model's (people no method trains on)", "↑", "≈ 1"),
    "probe_p_known_sae": (
        "SAE-latent probe's p(known) on the targets, mean over phrasings",
        "↓",
        "< 0.5, as strangers",
    ),
    "probe_p_known_resid": ("residual-stream probe's p(known); no method optimises it", "↓", "< 0.5, as strangers"),
    "dist_to_unknown": ("squared distance of the targets' latents to μ_U, ÷ ‖μ_U − μ_K‖²", "↓", "small"),
    "dist_to_known": ("squared distance of the targets' latents to μ_K, ÷ ‖μ_U − μ_K‖²", "↑", "large"),
    "dist_ratio": ("dist_to_unknown ÷ dist_to_known", "↓", "< 1: nearer the strangers' centroid"),
    "ppl_ratio": ("perplexity on held-out generic text, after ÷ before", "→", "≈ 1"),
}
STRANGERS = "strangers (original model)"  # the relearning reference: strangers taught the targets' facts
# The relearning curves of the report: the attacker's best of these rates at each of these steps (a subset of
# `irunlearn.depth`'s full protocol, which runs 200 steps at five rates, to keep a report at minutes).
REPORT_RELEARN_STEPS = (0, 5, 10, 25, 50)
REPORT_RELEARN_LRS = (3e-4, 1e-3, 3e-3)
# Registered metrics declare the direction of their main column only; these are their other columns'.
SECONDARY_DIRECTIONS = {"indistinguishability_resid": "↑", "distinct2": "↑", "repetition_rate": "↓"}
DIRECTION_WORDS = {"↑": "higher is better", "↓": "lower is better", "→": "closest to its reference is best", "": ""}
# The headline table: heading, column, and how to show it. One row per run; fits a 1,400-px screen.
HEADLINE = (
    ("forget", "forget_acc"),
    ("idk", "idk_rate"),
    ("retain", "retain_acc"),
    ("p_known SAE", "probe_p_known_sae"),
    ("p_known resid", "probe_p_known_resid"),
    ("indist. SAE", "indistinguishability"),
    ("indist. resid", "indistinguishability_resid"),
    ("relearn (strangers)", "relearn_acc"),
    ("ppl ratio", "ppl_ratio"),
    ("steps", "steps"),
    ("seconds", "seconds"),
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.2em auto; max-width: 1320px; padding: 0 1em; color: #222; }
h1 { margin: 0 0 0.2em; font-size: 1.6em; } .meta { color: #555; margin: 0 0 0.8em; }
h2 { margin: 0.4em 0 0.3em; } p.note, p.caption { max-width: 70em; line-height: 1.4; }
p.caption { background: #f6f8fa; border-left: 4px solid #1f77b4; padding: 0.5em 0.8em; }
nav ul { columns: 3; margin: 0.4em 0; } section { margin: 1.8em 0; border-top: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 14px; }
th, td { padding: 0.25em 0.55em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { background: #f1f1f1; } td.text, th.text { text-align: left; }
table.headline { margin: 0.3em 0; } table.headline th { cursor: help; }
div.scroll { overflow: auto; max-height: 28em; border: 1px solid #ddd; }
table.sortable th { cursor: pointer; position: sticky; top: 0; }
table.glossary td, table.provenance td { white-space: normal; text-align: left; vertical-align: top; }
table.glossary td:nth-child(2) { white-space: nowrap; }
table.provenance td code { word-break: break-all; font-size: 12px; }
"""
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(table => table.querySelectorAll("th").forEach((th, col) => {
  th.addEventListener("click", () => {
    const up = th.dataset.order !== "asc"; th.dataset.order = up ? "asc" : "desc";
    const key = row => { const v = row.cells[col].dataset.value; const n = parseFloat(v); return isNaN(n) ? v : n; };
    const rows = [...table.tBodies[0].rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0));
    (up ? rows : rows.reverse()).forEach(row => table.tBodies[0].appendChild(row));
  });
}));
"""
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in containers; the page is our own local file
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",
)


@dataclass
class Section:
    """One section of the report: a figure and the paragraph under it (generated from the numbers shown)."""

    figure: go.Figure
    caption: str = ""


# Formatting ---------------------------------------------------------------------------------------


def format_value(value: object) -> str:
    """A number at 3 significant digits (below 0.001 shown as "<0.001"), "–" for missing; text unchanged."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "–" if value is None else str(value)
    if math.isnan(value):
        return "–"
    if value != 0 and abs(value) < 1e-3:
        return "<0.001" if value > 0 else "<0"
    if float(value).is_integer() and abs(value) >= 1:
        return str(int(value))
    return f"{value:.3g}"


def column_direction(column: str) -> str:
    """The column's direction mark: "↑", "↓", "→" (closest to a reference) or "" (not a score)."""
    if column in CORE_COLUMNS:
        return CORE_COLUMNS[column][1]
    if column in SECONDARY_DIRECTIONS:
        return SECONDARY_DIRECTIONS[column]
    for row in metric_table().to_dict("records"):
        columns = [c.strip() for c in str(row["columns"]).split(",")]
        if column in (row["metric"], columns[0]):  # the main column: the metric's name, else its first
            better = row["higher_is_better"]
            return "→" if better is None or pd.isna(better) else "↑" if better else "↓"
    return ""


def glossary(columns: Sequence[str]) -> pd.DataFrame:
    """One row per column: its one-line meaning, direction and what a genuine forget looks like.

    The evaluator's and the run's columns come from `CORE_COLUMNS`; a registered metric's columns from
    `metric_table()` (its description, and its direction for the main column). A column neither knows is
    still listed, as not described, so nothing in the table goes unexplained silently.
    """
    registered = {
        column.strip(): row
        for row in metric_table().to_dict("records")
        for column in str(row["columns"]).split(",")
        if column.strip()
    }
    rows = []
    for column in columns:
        direction = column_direction(column)
        if column in CORE_COLUMNS:
            meaning, _, genuine = CORE_COLUMNS[column]
            source = "evaluator" if column not in ("method", "targets", "stop_reason", "steps", "seconds") else "run"
        elif column in registered:
            metric = registered[column]
            meaning = " ".join(str(metric["description"]).split())
            genuine = {"↑": "high", "↓": "low", "→": "at its reference (see meaning)"}.get(direction, "")
            source = f"metric {metric['metric']!r}"
        else:
            meaning, genuine, source = "not described: neither an evaluator column nor a registered metric", "", "?"
        rows.append(
            {
                "column": column,
                "direction": f"{direction} {DIRECTION_WORDS[direction]}".strip(),
                "meaning": meaning,
                "genuine forget": genuine,
                "source": source,
            }
        )
    return pd.DataFrame(rows, columns=["column", "direction", "meaning", "genuine forget", "source"])


def _cell(value: object, text_class: bool = False) -> str:
    raw = "" if value is None or (isinstance(value, float) and math.isnan(value)) else value
    cls = ' class="text"' if text_class else ""
    return f'<td{cls} data-value="{html.escape(str(raw))}">{html.escape(format_value(value))}</td>'


def headline_html(metrics: pd.DataFrame) -> str:
    """The compact headline table: one row per run, the columns a researcher reads first, marked ↑/↓/→.

    Relearning shows `relearn_acc` with the strangers' reference (`relearn_acc_unknown_ref`) in brackets.
    Columns the table lacks are left out; each heading's tooltip is its glossary line.
    """
    present = [(heading, column) for heading, column in HEADLINE if column in metrics]
    described = glossary([c for _, c in present]).set_index("column")
    heads = ['<th class="text">method</th>']
    for heading, column in present:
        mark = column_direction(column)
        tip = f"{column}: {described.loc[column, 'meaning']} ({described.loc[column, 'direction']})"
        heads.append(f'<th title="{html.escape(tip)}">{html.escape(heading)} {mark}</th>')
    body = []
    for _, row in metrics.iterrows():
        cells = [f'<td class="text">{html.escape(str(row.get("method", "")))}</td>']
        for _, column in present:
            text = format_value(row[column])
            if column == "relearn_acc" and "relearn_acc_unknown_ref" in metrics:
                text += f" ({format_value(row['relearn_acc_unknown_ref'])})"
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<table class="headline" id="headline"><thead><tr>{"".join(heads)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def full_table_html(metrics: pd.DataFrame) -> str:
    """Every column, one row per run, in a scrollable block; click a heading to sort by it."""
    heads = "".join(
        f'<th class="text">{html.escape(c)}</th>'
        if metrics[c].dtype == object
        else f"<th>{html.escape(c)} {column_direction(c)}</th>"
        for c in metrics.columns
    )
    rows = "".join(
        "<tr>" + "".join(_cell(row[c], metrics[c].dtype == object) for c in metrics.columns) + "</tr>"
        for _, row in metrics.iterrows()
    )
    return (
        f'<div class="scroll"><table class="sortable metrics" id="full-table"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _definition_table(frame: pd.DataFrame, css: str, element_id: str) -> str:
    heads = "".join(f'<th class="text">{html.escape(str(c))}</th>' for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in frame.itertuples(False)
    )
    return f'<table class="{css}" id="{element_id}"><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table>'


def _provenance_html(provenance: Mapping[str, object]) -> str:
    rows = "".join(
        f'<tr><td class="text">{html.escape(str(key))}</td><td><code>{html.escape(str(value))}</code></td></tr>'
        for key, value in provenance.items()
    )
    return f'<table class="provenance" id="provenance"><tbody>{rows}</tbody></table>'


# The page -----------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "figure"


def report_html(
    figures: Mapping[str, go.Figure | Section],
    metrics: pd.DataFrame | None,
    title: str,
    provenance: Mapping[str, object] | None = None,
) -> str:
    """The report page as a string: title, headline table, contents, one section per figure (with its
    paragraph), the full sortable table, the glossary, and the provenance block.

    plotly.js is inlined with the first figure only (the later ones reuse it); figure `i` gets the div id
    `fig-<i>-<slug of its key>`, so a browser test can find each graph. The headline table has id
    `headline`, the full table `full-table`, the glossary `glossary`, the provenance `provenance`.
    """
    sections, contents = [], []
    for i, (name, item) in enumerate(figures.items()):
        section = item if isinstance(item, Section) else Section(item)
        div_id = f"fig-{i}-{_slug(name)}"
        body = section.figure.to_html(
            full_html=False, include_plotlyjs=i == 0, div_id=div_id, config={"responsive": True}
        )
        caption = f'<p class="caption">{html.escape(section.caption)}</p>' if section.caption else ""
        sections.append(f'<section id="s-{div_id}"><h2>{html.escape(name)}</h2>\n{body}\n{caption}\n</section>')
        contents.append(f'<li><a href="#s-{div_id}">{html.escape(name)}</a></li>')
    has_metrics = metrics is not None and not metrics.empty
    if has_metrics:
        contents += [
            '<li><a href="#s-table">All metrics (sortable)</a></li>',
            '<li><a href="#s-glossary">Glossary</a></li>',
        ]
    if provenance:
        contents.append('<li><a href="#s-provenance">Provenance</a></li>')
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">irunlearn {__version__} · {stamp} · figures: {len(figures)}</p>',
    ]
    if has_metrics:
        head += [
            headline_html(metrics),
            '<p class="note">↑ higher is better · ↓ lower is better · → closest to its reference is best '
            "(relearning: the strangers' level, in brackets; perplexity ratio: 1). Hover a heading for its "
            'definition; every column is defined in the <a href="#s-glossary">glossary</a>.</p>',
        ]
    else:
        head.append("<p>No metrics.</p>")
    tail = []
    if has_metrics:
        tail += [
            f'<section id="s-table"><h2>All metrics</h2>{full_table_html(metrics)}</section>',
            '<section id="s-glossary"><h2>Glossary</h2>'
            f"{_definition_table(glossary(list(metrics.columns)), 'glossary', 'glossary')}</section>",
        ]
    if provenance:
        tail.append(f'<section id="s-provenance"><h2>Provenance</h2>{_provenance_html(provenance)}</section>')
    return "\n".join(
        [
            *head,
            f"<nav><ul>{''.join(contents)}</ul></nav>",
            *sections,
            *tail,
            f"<script>{SORT_SCRIPT}</script>",
            "</body></html>",
        ]
    )


def write_report(
    out_dir: str | Path,
    figures: Mapping[str, go.Figure | Section],
    metrics: pd.DataFrame | None = None,
    title: str = "irunlearn report",
    force: bool = False,
    provenance: Mapping[str, object] | None = None,
) -> Path:
    """Write `index.html` (sections + metrics, plotly.js inlined: no network needed) into `out_dir`.

    `figures` maps each heading to a figure or a `Section` (figure + paragraph). The folder appears whole
    or not at all (`irunlearn.io.atomic_dir`); an existing non-empty `out_dir` is replaced only with
    `force`. Returns the path of `index.html`.

    >>> write_report("reports/run1", {"History": fig}, metrics_table(results, summaries), force=True)
    """
    if not figures:
        raise ValueError("No figures to report.")
    page = report_html(figures, metrics, title, provenance)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=force) as tmp:
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return out_dir / "index.html"


# Metrics and provenance ----------------------------------------------------------------------------


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


# The oracle and relearning curves ------------------------------------------------------------------


def relearning_curves(
    evaluator: Evaluator,
    models: Mapping[str, HookedTransformer],
    attack: str = "half",
    steps: Sequence[int] = REPORT_RELEARN_STEPS,
    lrs: Sequence[float] = REPORT_RELEARN_LRS,
    strangers: bool = True,
    progress: bool = False,
) -> pd.DataFrame:
    """Relearning curves for `genuineness_at_a_glance`: one row per model (`method` = its label) and a
    column `relearn_<attack>_recall_k<step>` per step, the attacker's best recall over `lrs` there.

    The attack is `irunlearn.depth`'s (`half`: fine-tune on half of each target's facts, every training
    phrasing, and ask the other half). With `strangers`, a last row (`STRANGERS`) runs the same attack on
    the original model for strangers given the targets' facts: the curve of a name never learned. Pass
    the edited models and, where one exists, the oracle's (`{"sae_guided": r.model, "oracle": o.model}`):
    a genuine forget relearns along the oracle's and the strangers' curves, suppression jumps back.
    """
    runs = [(label, model, False) for label, model in models.items()]
    if strangers:
        runs.append((STRANGERS, evaluator.model, True))
    bar = tqdm(runs, desc="relearning curves", disable=not progress, leave=True)
    rows = []
    for label, model, as_strangers in bar:
        bar.set_postfix_str(label)
        curves = relearn_attacks(evaluator, model, [attack], strangers=as_strangers, lrs=lrs, steps=steps)
        best = best_of_lr(curves)
        rows.append(
            {"method": label} | {f"relearn_{attack}_recall_k{int(r.step)}": float(r.recall) for r in best.itertuples()}
        )
    return pd.DataFrame(rows)


def matching_oracle(ew: EmbeddedWorld, targets: Sequence[str]) -> Oracle | None:
    """The world's oracle whose forget set is exactly `targets` (in any order), or None where the targets
    are no standard forget set or its oracle was not built. An oracle is a reference only for the very
    people it never saw, so no partial match is offered."""
    from irunlearn.world.oracle import load_oracle

    for name, people in ew.world.forget_sets.items():
        if sorted(people) == sorted(targets):
            try:
                return load_oracle(name, ew)
            except FileNotFoundError:
                return None
    return None


# Paragraphs from the numbers ------------------------------------------------------------------------


def _people(n: int) -> str:
    return "the target" if n == 1 else f"the {n} targets"


def _band_verdict(probes: pd.DataFrame, model: str, column: str, band: tuple[float, float]) -> tuple[str, str]:
    """Where the targets sit against the strangers' band under `model`, as (verdict, numbers)."""
    rows = probes[probes["model"] == model]
    strangers = rows.loc[rows["role"] == "stranger", column]
    low, high = float(strangers.quantile(band[0])), float(strangers.quantile(band[1]))
    values = rows.loc[rows["role"] == "target", column]
    inside = int(((values >= low) & (values <= high)).sum())
    below = int((values < low).sum())
    if inside == len(values):
        verdict = "inside"
    elif below == len(values):
        verdict = "below"
    elif inside + below == 0:
        verdict = "above"
    else:
        verdict = f"inside for {inside} of {len(values)}"
    return verdict, f"targets {format_value(float(values.mean()))}, band {format_value(low)}–{format_value(high)}"


def genuineness_caption(
    readings: EntityReadings,
    metrics: pd.DataFrame | None,
    oracle_probes: pd.DataFrame | None = None,
    relearning: pd.DataFrame | None = None,
    band: tuple[float, float] = (0.05, 0.95),
) -> str:
    """One sentence per method (and the oracle, given its readings): where its targets sit against the
    strangers' band on each probe, and how much relearning brought back against the strangers' reference;
    with relearning curves, one more sentence on the recall each model reached at the last step."""
    n = len(readings.targets)
    probes = [c for c in PROBE_COLUMNS if c in readings.probes]
    frame = readings.probes if oracle_probes is None else pd.concat([readings.probes, oracle_probes])
    models = [*readings.after, *([ORACLE] if oracle_probes is not None else [])]
    sentences = []
    for method in models:
        verdicts = {c: _band_verdict(frame, method, c, band) for c in probes}
        words = {v for v, _ in verdicts.values()}
        where = (
            f"{next(iter(words))} the strangers' band on both probes"
            if len(words) == 1 and len(probes) == 2
            else "; ".join(f"{verdict} the band on the {PROBE_COLUMNS[c]}" for c, (verdict, _) in verdicts.items())
        )
        numbers = "; ".join(f"{PROBE_COLUMNS[c]}: {text}" for c, (_, text) in verdicts.items())
        verb = "(retrained without them) reads" if method == ORACLE else "left"
        sentence = f"{method} {verb} {_people(n)} {where} ({numbers})"
        row = metrics[metrics["method"] == method] if metrics is not None and "method" in metrics else None
        if row is not None and len(row) and {"relearn_acc", "relearn_acc_unknown_ref"} <= set(row.columns):
            sentence += (
                f"; relearning brought back {format_value(float(row['relearn_acc'].iloc[0]))} of the held-back facts "
                f"against {format_value(float(row['relearn_acc_unknown_ref'].iloc[0]))} for strangers taught the same"
            )
        sentences.append(sentence + ".")
    curves = relearn_curves(relearning) if relearning is not None else {}
    if curves and "method" in relearning:
        series, points = next(iter(curves.items()))
        last_step, column = points[-1]
        labels, values = relearning["method"], relearning[column]
        reached = ", ".join(f"{label} {format_value(float(v))}" for label, v in zip(labels, values, strict=True))
        sentences.append(f"Relearning ({series}), recall of the held-back facts after {last_step} steps: {reached}.")
    intro = (
        f"Genuine forgetting puts the targets inside the strangers' {band[0]:.0%}–{band[1]:.0%} band on both "
        "probes (the strangers read by the same edited model) and relearns them no faster than strangers. "
        "Below the band means the edit overshoots: the targets read as more unknown than strangers, which "
        "a probe can tell apart too."
    )
    return " ".join([intro, *sentences])


def latent_map_caption(readings: EntityReadings, recognizer: Recognizer) -> str:
    """Where the targets moved along the μ_K → μ_U axis (0 at μ_K, 1 at μ_U), per method, and overshoots."""
    start = axis_position(readings.before, recognizer.mu_known, recognizer.mu_unknown)
    strangers = axis_position(readings.unknown_latents, recognizer.mu_known, recognizer.mu_unknown)
    sentences = [
        f"Along the μ_K → μ_U axis (μ_K = 0, μ_U = 1; the strangers' middle half spans "
        f"{format_value(float(strangers.quantile(0.25)))}–{format_value(float(strangers.quantile(0.75)))}), "
        f"{_people(len(readings.targets))} started at a mean of {format_value(float(start.mean()))}."
    ]
    for method, points in readings.after.items():
        end = axis_position(points, recognizer.mu_known, recognizer.mu_unknown)
        past = int((end > 1).sum())
        note = f", {past} of {len(end)} past μ_U" if past and len(end) > 1 else ", past μ_U" if past else ""
        pronoun = "it" if len(end) == 1 else "them"
        sentences.append(f"{method} moved {pronoun} to {format_value(float(end.mean()))}{note}.")
    return " ".join(sentences)


def probe_caption(readings: EntityReadings) -> str:
    """The strangers' and known people's median p_known, and the targets' mean before and after each run."""
    probes = [c for c in PROBE_COLUMNS if c in readings.probes]
    original = readings.probes[readings.probes["model"] == "original"]

    def level(rows: pd.DataFrame, stat: str) -> str:
        return " / ".join(format_value(float(getattr(rows[c], stat)())) for c in probes)

    names = " / ".join(PROBE_COLUMNS[c] for c in probes)
    by_role = {role: original[original["role"] == role] for role in ("known", "stranger", "target")}
    parts = [
        f"p_known ({names}), original model: known people median {level(by_role['known'], 'median')}, "
        f"strangers median {level(by_role['stranger'], 'median')}, targets {level(by_role['target'], 'mean')}."
    ]
    for method in readings.after:
        rows = readings.probes[(readings.probes["model"] == method) & (readings.probes["role"] == "target")]
        parts.append(f"After {method}: targets {level(rows, 'mean')}.")
    return " ".join(parts)


def history_caption(trace: RunTrace) -> str:
    """When each probe first read every target as unknown, when the stop criterion was first met, how the loss
    went."""
    history, stop_threshold = trace.history, trace.stop_threshold
    per_step = history.groupby("step", sort=True)
    sentences = [f"{trace.method} stopped after {trace.steps} updates ({trace.stop_reason})."]
    crossings = []
    for column, name in PROBE_COLUMNS.items():
        if column in history:
            below = per_step[column].max() < 0.5
            last = format_value(float(per_step[column].mean().iloc[-1]))
            crossings.append(
                f"the {name} first read every target as unknown at step {int(below.idxmax())}"
                if below.any()
                else f"the {name} never read every target as unknown (last {last})"
            )
    if crossings:
        sentences.append(crossings[0][0].upper() + "; ".join(crossings)[1:] + ".")
    if "forget_acc_train" in history and stop_threshold is not None:
        met = per_step["forget_acc_train"].max() <= stop_threshold
        sentences.append(
            f"Its stop criterion, forget_acc_train ≤ {format_value(stop_threshold)} for every target, "
            + (f"was first met at step {int(met.idxmax())}." if met.any() else "was never met.")
        )
    if "question_flipped" in history:
        flipped = per_step["question_flipped"].min() >= 1.0
        if flipped.any():
            sentences.append(f"Every question token first read nearer μ_U than μ_K at step {int(flipped.idxmax())}.")
    losses = loss_series(per_step.first())
    total = next(iter(losses.items()), None)
    if total is not None:
        label, values = total
        sentences.append(
            f"{label} went from {format_value(float(values.iloc[0]))} to {format_value(float(values.iloc[-1]))}."
        )
    return " ".join(sentences)


def feature_shift_caption(
    before: Float[torch.Tensor, " d_sae"], after: Float[torch.Tensor, " d_sae"], recognizer: Recognizer, top_n: int = 20
) -> str:
    """How many of the latents that moved most are known- and unknown-latents, and which way they moved."""
    delta = (after - before).float()
    order = delta.abs().argsort(descending=True)[:top_n].tolist()
    parts = []
    for which, kind in (("known", "known-latents"), ("unknown", "unknown-latents")):
        chosen = [j for j in order if j in set(recognizer.top_latents(which)["latent"].tolist())]
        if chosen:
            verb = "is a" if len(chosen) == 1 else "are"
            parts.append(
                f"{len(chosen)} {verb} {kind.removesuffix('s') if len(chosen) == 1 else kind} "
                f"(mean Δ {float(delta[chosen].mean()):+.2f})"
            )
        else:
            parts.append(f"none are {kind}")
    return (
        f"Of the {len(order)} latents that changed most, {parts[0]} and {parts[1]}. A genuine forget switches "
        "known-latents off and unknown-latents on."
    )


def methods_caption(metrics: pd.DataFrame) -> str:
    """Which method is best on each axis the comparison shows, with the numbers."""
    table = metrics.groupby("method", sort=False).mean(numeric_only=True)
    sentences = []

    def best(column: str, lowest: bool) -> str:
        values = table[column].dropna()
        top = float(values.min() if lowest else values.max())
        tied = [m for m, v in values.items() if math.isclose(v, top, rel_tol=1e-9, abs_tol=1e-9)]
        return f"{' and '.join(tied)} ({format_value(top)})"

    for column, lowest, words in (
        ("forget_acc", True, "Fewest facts left: "),
        ("retain_acc", False, "most of the others' facts kept: "),
        ("indistinguishability", False, "hardest to tell from strangers (SAE probe): "),
        ("indistinguishability_resid", False, "on the residual probe: "),
    ):
        if column in table:
            sentences.append(words + best(column, lowest))
    if {"relearn_acc", "relearn_acc_unknown_ref"} <= set(table.columns):
        gap = (table["relearn_acc"] - table["relearn_acc_unknown_ref"]).abs()
        closest = [m for m, v in gap.items() if math.isclose(v, gap.min(), abs_tol=1e-9)]
        reference = format_value(float(table.loc[closest[0], "relearn_acc_unknown_ref"]))
        sentences.append(
            f"relearning closest to the strangers' {reference}: {' and '.join(closest)} "
            f"({format_value(float(table.loc[closest[0], 'relearn_acc']))})"
        )
    if "ppl_ratio" in table:
        sentences.append(
            f"perplexity ratio from {format_value(float(table['ppl_ratio'].min()))} "
            f"to {format_value(float(table['ppl_ratio'].max()))}"
        )
    return ("; ".join(sentences) + ".") if sentences else ""


def recognition_caption(recognizer: Recognizer) -> str:
    """The best separating latents and the probes' held-out AUROC."""
    known, unknown = recognizer.top_latents("known").iloc[0], recognizer.top_latents("unknown").iloc[0]
    text = (
        f"Best known-latent: latent {int(known['latent'])} (s_known {known['s_known']:.2f}: fires on "
        f"{known['freq_known']:.0%} of known people, {known['freq_unknown']:.0%} of strangers); best "
        f"unknown-latent: latent {int(unknown['latent'])} (s_unknown {unknown['s_unknown']:.2f}: fires on "
        f"{unknown['freq_unknown']:.0%} of strangers, {unknown['freq_known']:.0%} of known people)."
    )
    probes = {"probe_auroc_sae": "SAE probe", "probe_auroc_resid": "residual probe"}
    aurocs = [f"{name} {recognizer.metrics[key]:.3f}" for key, name in probes.items() if key in recognizer.metrics]
    if aurocs:
        text += " Held-out AUROC (held-out people × phrasings): " + ", ".join(aurocs) + "."
    return text


# The standard sections -----------------------------------------------------------------------------


@dataclass
class RunTrace:
    """One run as its history figure needs it: the method, how it stopped, its per-step history and the
    suppression stop threshold of its config (None for methods that stop on the probes)."""

    label: str
    method: str
    steps: int
    stop_reason: str
    history: pd.DataFrame
    stop_threshold: float | None


def run_traces(run: RunResults, rows: pd.DataFrame) -> list[RunTrace]:
    """The `RunTrace` of each of `rows` (summary rows of `run`), labelled by method when each method appears
    once, else by run id."""
    by_method = rows["method"].nunique() == len(rows)
    history = run.history if not run.history.empty else pd.DataFrame(columns=["run"])
    return [
        RunTrace(
            label=row["method"] if by_method else row["run"],
            method=row["method"],
            steps=int(row["steps"]),
            stop_reason=str(row["stop_reason"]),
            history=history[history["run"] == row["run"]].drop(columns="run").reset_index(drop=True),
            stop_threshold=run.configs.get(row["run"], {}).get("max_forget_acc"),
        )
        for row in rows.to_dict("records")
    ]


def shown_rows(run: RunResults) -> pd.DataFrame:
    """The summary rows the figures draw: with entity readings, the runs they read (the readings' targets,
    the first seed that forgot them); else every row."""
    summary = run.summary
    if run.readings is None:
        return summary
    same = summary[(summary["targets"] == ", ".join(run.readings.targets)) & summary["method"].isin(run.readings.after)]
    return same[same["seed"] == same["seed"].iloc[0]] if len(same) else same


def forgetting_sections(run: RunResults, max_targets: int = 3) -> dict[str, Section]:
    """The standard sections of a run, keyed by heading, each with its paragraph; drawn from the saved
    tables, recognizer and entity readings alone (no model needed).

    In order, each where its data is there: genuineness at a glance (targets vs the strangers' band on both
    probes, and relearning), the latent map (centroid-axis projection, one arrow per target and run), the
    method comparison, probe p_known by group (these need `run.readings`: `RunResults.read_entities`),
    each run's optimisation history, feature shifts of up to `max_targets` targets per run, and the
    recognizer's known- and unknown-latents.
    """
    readings, recognizer, summary = run.readings, run.recognizer, run.summary
    rows = shown_rows(run)
    sections: dict[str, Section] = {}
    if readings is not None:
        if recognizer is None:
            raise ValueError("Entity readings without the run's recognizer: save the run with its recognizer.")
        probes = readings.probes
        glance = probes[probes["role"] != "known"].assign(
            model=lambda f: f["model"].where(f["model"] != "original", "original (before)")
        )
        if run.oracle_probes is not None:
            glance = pd.concat([glance, run.oracle_probes], ignore_index=True)
        relearning = run.relearning if run.relearning is not None else rows if "relearn_acc" in rows else None
        sections["Genuineness at a glance"] = Section(
            genuineness_at_a_glance(glance, relearning),
            genuineness_caption(readings, rows, run.oracle_probes, run.relearning),
        )
        sections["Latent map"] = Section(
            latent_map(
                readings.known_latents,
                readings.unknown_latents,
                readings.before,
                readings.after,
                readings.targets,
                mu_known=recognizer.mu_known,
                mu_unknown=recognizer.mu_unknown,
                known_names=readings.known_names,
                unknown_names=readings.unknown_names,
            ),
            latent_map_caption(readings, recognizer),
        )
    if not summary.empty:
        sections["Methods compared"] = Section(method_comparison(summary), methods_caption(summary))
    if readings is not None:
        groups = probes[(probes["model"] == "original") | (probes["role"] == "target")]
        groups = groups.assign(
            group=[
                {"known": "known", "stranger": "unknown", "target": "targets before"}[role]
                if label == "original"
                else f"after {label}"
                for label, role in zip(groups["model"], groups["role"], strict=True)
            ]
        )
        colors = {"targets before": "black"} | {f"after {m}": method_color(j) for j, m in enumerate(readings.after)}
        sections["Recognition: probe p_known"] = Section(
            probe_distributions(groups, colors=colors), probe_caption(readings)
        )
    for trace in run_traces(run, rows):
        if not trace.history.empty:
            sections[f"History: {trace.label}"] = Section(
                optimisation_history(
                    trace.history,
                    trace.stop_reason,
                    f"{trace.label}: optimisation history ({trace.stop_reason} after {trace.steps} steps)",
                    stop_threshold=trace.stop_threshold,
                ),
                history_caption(trace),
            )
        if readings is not None and trace.method in readings.after:
            for i, name in enumerate(readings.targets[:max_targets]):
                before, after = readings.before[i], readings.after[trace.method][i]
                sections[f"Feature shift: {trace.method}, {name}"] = Section(
                    feature_shift(before, after, recognizer, f"{name} ({trace.method})"),
                    feature_shift_caption(before, after, recognizer),
                )
    if recognizer is not None:
        sections["Recognition: known- and unknown-latents"] = Section(
            separation_bars(recognizer), recognition_caption(recognizer)
        )
    return sections


def forgetting_figures(run: RunResults, max_targets: int = 3) -> dict[str, go.Figure]:
    """The figures of `forgetting_sections` alone, keyed by heading (e.g. to show them in a notebook)."""
    return {name: section.figure for name, section in forgetting_sections(run, max_targets).items()}


def page_provenance(run: RunResults) -> dict[str, str]:
    """The provenance block of a run's page: its recorded provenance (bench, seeds, hook, version, commit,
    model and SAE identity and hashes, recognizer figures, the command) and each run's method config."""
    entries = {
        key: value if isinstance(value, str) else json.dumps(value, default=str)
        for key, value in run.provenance.items()
    }
    entries |= {f"config: {run_id}": json.dumps(config, default=str) for run_id, config in run.configs.items()}
    return entries


def render_report(
    run_dir: str | Path, out_dir: str | Path | None = None, title: str | None = None, force: bool = False
) -> Path:
    """`index.html` of a saved run folder (`RunResults.save`), drawn from its files alone: no model is loaded
    and nothing is recomputed. Returns the page's path.

    Without `out_dir` the page is written into the run folder itself (replacing an earlier page there,
    atomically); with it, into `out_dir` (`write_report`: a non-empty folder is replaced only with `force`).

    >>> render_report("runs/demo")                     # what `irunlearn report --from runs/demo` does
    """
    run = RunResults.load(run_dir)
    if run.summary.empty:
        raise ValueError(f"The run at {run_dir} has no rows to report.")
    sections = forgetting_sections(run)
    rows = shown_rows(run)
    title = title or f"Forgetting {rows['targets'].iloc[0]}: {', '.join(dict.fromkeys(rows['method']))}"
    if out_dir is not None:
        return write_report(out_dir, sections, run.summary, title, force=force, provenance=page_provenance(run))
    page = Path(run_dir) / "index.html"
    partial = page.with_name(f".index.html.partial.{os.getpid()}")
    partial.write_text(report_html(sections, run.summary, title, page_provenance(run)), encoding="utf-8")
    os.replace(partial, page)
    return page


def forgetting_report(
    out_dir: str | Path,
    bench: EntityBench,
    model: HookedTransformer,
    sae: SAE,
    methods: Sequence[str] = ("sae_guided", "grad_ascent"),
    targets: Sequence[str] = (),
    n_targets: int = 1,
    seed: int = 0,
    recognizer: Recognizer | None = None,
    n_retain_eval: int | None = None,
    n_cloud: int = 200,
    force: bool = False,
    provenance: Mapping[str, object] | None = None,
    progress: bool = True,
    oracle: Oracle | None = None,
    **overrides,
) -> Path:
    """The standard report: `irunlearn.run` the methods on one seed (targets forgotten together, full
    battery), read the entities for the figures, save the run folder at `out_dir` and render its
    `index.html` there (`render_report`). Returns the page's path; `render_report(out_dir)` redraws it later
    from the folder alone. What `irunlearn report` runs.

    `provenance` adds entries (e.g. the command line); `n_cloud` known people and strangers, drawn with
    `seed`, make the clouds; `overrides` go to every method's config (e.g. `max_steps=4`). Given the
    targets' `oracle` (the world retrained without them, `matching_oracle`), the run gains its row, its
    probes' readings and relearning curves with it: what exact unlearning reaches.

    >>> forgetting_report("reports/demo", EntityBench.from_world(ew), ew.model, ew.sae, targets=["Ana Bel"])
    """
    check_output_dir(out_dir, overwrite=force)
    results = run(
        bench,
        model,
        sae,
        methods,
        targets,
        0 if targets else n_targets,
        seeds=[seed],
        recognizer=recognizer,
        n_retain_eval=n_retain_eval,
        oracle=oracle,
        baselines=[ORACLE] if oracle is not None else [],
        progress=progress,
        **overrides,
    )
    results.read_entities(model, sae, bench.entities, n_cloud=n_cloud, seed=seed, progress=progress)
    if oracle is not None:
        task = bench.task(model, bench.targets([e.name for e in oracle.forget]), results.recognizer)
        evaluator = bench.evaluator(model, sae, task, n_retain_eval, seed)
        edits = {r.method: r.model for r in results.edits.values()}
        results.relearning = relearning_curves(evaluator, edits | {ORACLE: oracle.model}, progress=progress)
    results.provenance |= dict(provenance or {})
    results.save(out_dir, force=force)
    return render_report(out_dir)


# Screenshot ----------------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """A Chromium (or Chrome) binary on PATH, or None."""
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((found for found in map(shutil.which, names) if found), None)


def screenshot(
    index_html: str | Path, png: str | Path, chromium: str | None = None, width: int = 1400, height: int = 1000
) -> Path | None:
    """Render the first screen of `index_html` (`width` × `height`) to `png` with headless Chromium.

    Without a Chromium binary (`chromium` or one on PATH) it prints how to get one and returns None, so a
    demo without a browser still finishes. Returns the PNG's path.

    >>> screenshot("reports/demo/index.html", "reports/demo/first_screen.png")
    """
    index_html, png = Path(index_html).resolve(), Path(png).resolve()
    if not index_html.is_file():
        raise FileNotFoundError(f"No report at {index_html}: write one first (irunlearn report --out DIR).")
    chromium = chromium or find_chromium()
    if chromium is None:
        print(
            f"screenshot skipped: no chromium on PATH (apt-get install chromium); {png.name} was not written.",
            file=sys.stderr,
        )
        return None
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--window-size={width},{height}",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                index_html.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"{chromium} could not render {index_html}: {done.stderr.strip()[-800:]}")
    return png
