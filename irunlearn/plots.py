"""Plotly figures that show forgetting happen: recognition, latent maps, genuineness, histories, methods.

Every figure function takes plain tensors and DataFrames and returns a `plotly.graph_objects.Figure`, so it
works the same in a notebook (`fig.show()`), in the HTML report (`irunlearn.report`) and in tests. Every
axis is titled and every legend entry names one thing: a series that recurs in several panels appears in
the legend once (its later traces share its `legendgroup` and hide their own entry). The one function here
that runs a model, `mean_latents`, computes the per-entity latents the latent map draws.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from plotly.subplots import make_subplots
from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn.activations import encode_latents, extract_activations
from irunlearn.entities import Entity
from irunlearn.prompts import Template
from irunlearn.recognition import Recognizer

KNOWN_COLOR = "#1F77B4"
UNKNOWN_COLOR = "#FF7F0E"
OTHER_COLOR = "#9E9E9E"
BAND_COLOR = "rgba(255, 127, 14, 0.25)"  # the strangers' band: the unknown colour, light
# Series colours (methods, targets) that stay clear of the known (blue) / unknown (orange) pair, and one
# marker symbol per method, so two methods that land on the same point stay apart.
PALETTE = ("#D62728", "#2CA02C", "#9467BD", "#8C564B", "#E377C2", "#17BECF", "#BCBD22", "#393B79")
SYMBOLS = ("star", "diamond", "square", "triangle-up", "pentagon", "hexagram", "triangle-down", "cross")
PROBE_COLUMNS = {"p_known_sae": "SAE probe", "p_known_resid": "residual probe"}
# History quantities read per target: legend label, colour, dash. Stop criteria are the methods' own.
HISTORY_READINGS = {
    "p_known_sae": ("SAE probe p_known", "#D62728", "solid"),
    "p_known_resid": ("residual probe p_known", "#2CA02C", "dash"),
    "question_flipped": ("question tokens flipped (stop criterion)", "#8C564B", "dot"),
    "forget_acc_train": ("forget_acc_train (stop criterion)", "#17BECF", "dot"),
}
HISTORY_DISTANCES = {
    "dist_to_unknown": ("d(z, μ_U)", UNKNOWN_COLOR, "solid"),
    "dist_to_known": ("d(z, μ_K)", KNOWN_COLOR, "dash"),
}
# Loss terms get their own colours (the total in black), apart from the per-target quantities'.
LOSS_PALETTE = ("#000000", "#9467BD", "#E377C2", "#BCBD22", "#7F7F7F", "#393B79", "#637939", "#8C6D31")
HEALTH_COLUMNS = {
    "generation_health": ("generation_health ↑", "#637939"),
    "repetition_rate": ("repetition_rate ↓", "#E7BA52"),
}
RELEARN_CURVE = re.compile(r"^relearn_(?P<series>.+)_recall_k(?P<step>\d+)$")


def method_color(i: int) -> str:
    """The colour of the `i`-th method (or target) in every figure."""
    return PALETTE[i % len(PALETTE)]


def method_symbol(i: int) -> str:
    """The marker symbol of the `i`-th method in every figure."""
    return SYMBOLS[i % len(SYMBOLS)]


# Inputs from a model -------------------------------------------------------------------------------


@torch.no_grad()
def mean_latents(
    model: HookedTransformer,
    sae: SAE,
    entities: Sequence[Entity],
    templates: Sequence[Template],
    prepend_bos: bool | None = None,
    progress: bool = False,
) -> Float[torch.Tensor, "n_entities d_sae"]:
    """SAE latents at each entity's last name token, averaged over `templates`: one row per entity.

    The hook is the SAE's own. This is what `latent_map` and `feature_shift` draw, e.g. the same targets
    read by the original and by the edited model.
    """
    acts = extract_activations(
        model, sae.cfg.metadata.hook_name, entities, templates, prepend_bos=prepend_bos, progress=progress
    )
    latents = encode_latents(sae, acts.resid)
    return latents.reshape(len(entities), len(templates), -1).mean(1)


# Latent map ----------------------------------------------------------------------------------------


@dataclass
class LatentProjection:
    """A fixed 2-D linear view of latent space: `(z − center) @ basis`, fitted once on the reference clouds.

    `"pca"`: the cloud's top two principal components (SVD, deterministic signs). `"centroids"`: x is the
    known→unknown direction `μ_U − μ_K`, y the cloud's top principal component orthogonal to it, so a
    target moving right is moving towards the unknowns.
    """

    center: Float[torch.Tensor, " d"]
    basis: Float[torch.Tensor, "d 2"]
    axis_titles: tuple[str, str]

    @classmethod
    def fit(
        cls,
        cloud: Float[torch.Tensor, "n d"],
        method: Literal["pca", "centroids"] = "pca",
        mu_known: Float[torch.Tensor, " d"] | None = None,
        mu_unknown: Float[torch.Tensor, " d"] | None = None,
    ) -> LatentProjection:
        cloud = cloud.float()
        center = cloud.mean(0)
        centered = cloud - center
        total = centered.square().sum()
        if method == "pca":
            _, singular, vh = torch.linalg.svd(centered, full_matrices=False)
            basis = _fix_signs(vh[:2].T)
            explained = (singular[:2].square() / total).tolist()
            titles = (f"PC1 ({explained[0]:.0%} of variance)", f"PC2 ({explained[1]:.0%} of variance)")
            return cls(center, basis, titles)
        if method != "centroids":
            raise ValueError(f"Unknown projection {method!r}; use 'pca' or 'centroids'.")
        if mu_known is None or mu_unknown is None:
            raise ValueError("The 'centroids' projection needs mu_known and mu_unknown.")
        axis = (mu_unknown - mu_known).float()
        axis = axis / axis.norm()
        rest = centered - (centered @ axis)[:, None] * axis
        _, singular, vh = torch.linalg.svd(rest, full_matrices=False)
        basis = torch.stack([axis, _fix_signs(vh[:1].T)[:, 0]], dim=1)
        along = float((centered @ axis).square().sum() / total)
        explained = float(singular[0].square() / total)
        titles = (f"μ_K → μ_U direction ({along:.0%} of variance)", f"top PC ⊥ ({explained:.0%} of variance)")
        return cls(center, basis, titles)

    def __call__(self, points: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, "n 2"]:
        return (points.float() - self.center) @ self.basis


def _fix_signs(basis: Float[torch.Tensor, "d k"]) -> Float[torch.Tensor, "d k"]:
    """Flip each column so its largest-magnitude entry is positive: SVD signs are otherwise arbitrary."""
    rows = basis.abs().argmax(0)
    return basis * basis[rows, torch.arange(basis.shape[1])].sign()


def axis_position(
    points: Float[torch.Tensor, "n d"], mu_known: Float[torch.Tensor, " d"], mu_unknown: Float[torch.Tensor, " d"]
) -> Float[torch.Tensor, " n"]:
    """Where each point sits along the known→unknown axis: 0 at μ_K, 1 at μ_U (past 1: beyond μ_U).

    `(z − μ_K)·(μ_U − μ_K) / ‖μ_U − μ_K‖²`, computed in latent space, so it does not depend on the 2-D view.
    """
    axis = (mu_unknown - mu_known).float()
    return (points.float() - mu_known.float()) @ axis / axis.square().sum()


def latent_map(
    known: Float[torch.Tensor, "n_known d_sae"],
    unknown: Float[torch.Tensor, "n_unknown d_sae"],
    before: Float[torch.Tensor, "n_targets d_sae"],
    after: Float[torch.Tensor, "n_targets d_sae"] | Mapping[str, Float[torch.Tensor, "n_targets d_sae"]],
    targets: Sequence[str],
    path: Float[torch.Tensor, "steps n_targets d_sae"] | None = None,
    mu_known: Float[torch.Tensor, " d_sae"] | None = None,
    mu_unknown: Float[torch.Tensor, " d_sae"] | None = None,
    projection: Literal["pca", "centroids"] | None = None,
    known_names: Sequence[str] | None = None,
    unknown_names: Sequence[str] | None = None,
    title: str = "Where the targets sit among known people and strangers",
) -> go.Figure:
    """Known and unknown clouds in a 2-D projection, each target before and after with an arrow between.

    The projection (`LatentProjection`) is fitted on the two clouds only, so the edit cannot bend the
    axes. By default it is `"centroids"` when `mu_known`/`mu_unknown` are given (x is the μ_K → μ_U
    direction, so "moved right" reads as "moved towards the strangers"), `"pca"` otherwise. `after` is one
    tensor or a `{label: tensor}` mapping (e.g. one per method): each label gets its own colour and marker
    symbol, drawn above the open "before" circle and a little smaller, so a method that barely moves the
    target stays visible. A target that lands past μ_U along the axis (`axis_position` > 1) is named in a
    note under the plot. `path`, the target latents at successive optimisation steps, adds a line per target.

    >>> latent_map(mean_latents(m, sae, known, ts), mean_latents(m, sae, unknown, ts),
    ...            mean_latents(m, sae, targets, ts), {"sae_guided": mean_latents(edited, sae, targets, ts)},
    ...            ["Kalo Renvi"], mu_known=recognizer.mu_known, mu_unknown=recognizer.mu_unknown)
    """
    afters = {"after": after} if isinstance(after, torch.Tensor) else dict(after)
    for label, points in {"before": before, **afters}.items():
        if points.shape[0] != len(targets):
            raise ValueError(f"{label!r} has {points.shape[0]} rows but there are {len(targets)} targets.")
    centroids = mu_known is not None and mu_unknown is not None
    projection = projection or ("centroids" if centroids else "pca")
    project = LatentProjection.fit(torch.cat([known, unknown]), projection, mu_known, mu_unknown)
    fig = go.Figure()
    for name, cloud, names, color in (
        ("known people", known, known_names, KNOWN_COLOR),
        ("strangers (unknown people)", unknown, unknown_names, UNKNOWN_COLOR),
    ):
        xy = project(cloud)
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0].tolist(),
                y=xy[:, 1].tolist(),
                mode="markers",
                name=name,
                marker={"color": color, "size": 5, "opacity": 0.4},
                text=list(names) if names is not None else None,
                hovertemplate="%{text}<extra>" + name + "</extra>" if names is not None else None,
            )
        )
    if centroids:
        xy = project(torch.stack([mu_known, mu_unknown]))
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0].tolist(),
                y=xy[:, 1].tolist(),
                mode="markers+text",
                name="centroids μ_K, μ_U",
                text=["<b>μ_K</b>", "<b>μ_U</b>"],
                textposition="top center",
                textfont={"size": 18, "color": [KNOWN_COLOR, UNKNOWN_COLOR]},
                cliponaxis=False,
                marker={
                    "color": [KNOWN_COLOR, UNKNOWN_COLOR],
                    "size": 16,
                    "symbol": "x-thin",
                    "line": {"width": 3, "color": [KNOWN_COLOR, UNKNOWN_COLOR]},
                },
            )
        )
    start = project(before)
    fig.add_trace(
        go.Scatter(
            x=start[:, 0].tolist(),
            y=start[:, 1].tolist(),
            mode="markers",
            name="targets before",
            text=list(targets),
            hovertemplate="%{text}<extra>before</extra>",
            marker={"color": "black", "size": 22, "symbol": "circle-open", "line": {"width": 2}},
        )
    )
    if path is not None:
        steps = project(path.reshape(-1, path.shape[-1])).reshape(path.shape[0], path.shape[1], 2)
        for i, target in enumerate(targets):
            fig.add_trace(
                go.Scatter(
                    x=steps[:, i, 0].tolist(),
                    y=steps[:, i, 1].tolist(),
                    mode="lines+markers",
                    name=f"path: {target}",
                    line={"color": "black", "width": 1, "dash": "dot"},
                    marker={"size": 3, "color": "black"},
                )
            )
    overshoots = []
    for j, (label, points) in enumerate(afters.items()):
        end = project(points)
        color = method_color(j)
        for (x0, y0), (x1, y1) in zip(start.tolist(), end.tolist(), strict=True):
            fig.add_annotation(
                x=x1,
                y=y1,
                ax=x0,
                ay=y0,
                xref="x",
                yref="y",
                axref="x",
                ayref="y",
                showarrow=True,
                arrowhead=3,
                arrowsize=1.2,
                arrowwidth=2,
                arrowcolor=color,
                standoff=7,
                startstandoff=11,
                text="",
            )
        fig.add_trace(
            go.Scatter(
                x=end[:, 0].tolist(),
                y=end[:, 1].tolist(),
                mode="markers",
                name=f"targets after {label}" if label != "after" else "targets after",
                text=list(targets),
                hovertemplate="%{text}<extra>" + label + "</extra>",
                marker={
                    "color": color,
                    "size": max(16 - 2 * j, 9),
                    "symbol": method_symbol(j),
                    "line": {"width": 1, "color": "white"},
                },
            )
        )
        if centroids:
            positions = axis_position(points, mu_known, mu_unknown).tolist()
            overshoots += [f"{t} ({label}) at {p:.2f}" for t, p in zip(targets, positions, strict=True) if p > 1]
    if overshoots:
        spread = axis_position(unknown, mu_known, mu_unknown).quantile(torch.tensor([0.25, 0.75])).tolist()
        fig.add_annotation(
            text=f"Past μ_U along the μ_K → μ_U axis (μ_K = 0, μ_U = 1; strangers' middle half "
            f"{spread[0]:.2f}–{spread[1]:.2f}): " + "; ".join(overshoots),
            xref="paper",
            yref="paper",
            x=0,
            y=-0.16,
            xanchor="left",
            yanchor="top",
            showarrow=False,
        )
    fig.update_layout(
        title=title,
        xaxis_title=project.axis_titles[0],
        yaxis_title=project.axis_titles[1],
        height=560,
        margin={"b": 110 if overshoots else 70},
    )
    return fig


# Feature shift -------------------------------------------------------------------------------------


def feature_shift(
    before: Float[torch.Tensor, " d_sae"],
    after: Float[torch.Tensor, " d_sae"],
    recognizer: Recognizer,
    target: str = "target",
    top_n: int = 20,
) -> go.Figure:
    """The `top_n` latents whose activation on `target` changed most (after − before), as horizontal bars.

    Bars are coloured by the recognizer's lists: known-latents (its top by `s_known`), unknown-latents
    (top by `s_unknown`), other. Hover shows before, after and the latent's separation score and firing
    frequencies. A genuine forgetting shows known-latents falling and unknown-latents rising.
    """
    delta = (after - before).float()
    order = delta.abs().argsort(descending=True)[:top_n].tolist()
    known = set(recognizer.top_latents("known")["latent"].tolist())
    unknown = set(recognizer.top_latents("unknown")["latent"].tolist())
    scores = recognizer.scores.set_index("latent")
    frame = pd.DataFrame(
        {
            "latent": order,
            "label": [f"latent {j}" for j in order],
            "delta": delta[order].tolist(),
            "before": before[order].tolist(),
            "after": after[order].tolist(),
            "s_known": scores.loc[order, "s_known"].to_numpy(),
            "freq_known": scores.loc[order, "freq_known"].to_numpy(),
            "freq_unknown": scores.loc[order, "freq_unknown"].to_numpy(),
            "kind": ["known-latent" if j in known else "unknown-latent" if j in unknown else "other" for j in order],
        }
    )
    fig = go.Figure()
    for kind, color in (("known-latent", KNOWN_COLOR), ("unknown-latent", UNKNOWN_COLOR), ("other", OTHER_COLOR)):
        rows = frame[frame["kind"] == kind]
        if rows.empty:
            continue
        fig.add_trace(
            go.Bar(
                x=rows["delta"],
                y=rows["label"],
                orientation="h",
                name=kind,
                marker_color=color,
                customdata=rows[["before", "after", "s_known", "freq_known", "freq_unknown"]].to_numpy(),
                hovertemplate=(
                    "%{y}: Δ %{x:.3f} (%{customdata[0]:.3f} → %{customdata[1]:.3f})<br>"
                    "separation s_known %{customdata[2]:+.2f} "
                    "(fires on %{customdata[3]:.0%} known, %{customdata[4]:.0%} unknown)<extra>%{fullData.name}</extra>"
                ),
            )
        )
    fig.update_layout(
        title=f"Feature shift of {target}: top {len(order)} latents by |Δ activation|",
        xaxis_title="Δ activation (after − before)",
        yaxis={"title": "SAE latent", "categoryorder": "array", "categoryarray": frame["label"].tolist()[::-1]},
        height=max(350, 22 * len(order) + 120),
    )
    return fig


# Genuineness at a glance --------------------------------------------------------------------------


def relearn_curves(table: pd.DataFrame) -> dict[str, list[tuple[int, str]]]:
    """Per-step relearning columns of `table` (`relearn_<series>_recall_k<step>`), by series, sorted by step."""
    curves: dict[str, list[tuple[int, str]]] = {}
    for column in table.columns:
        match = RELEARN_CURVE.match(str(column))
        if match:
            curves.setdefault(match["series"], []).append((int(match["step"]), str(column)))
    return {series: sorted(points) for series, points in curves.items()}


def genuineness_at_a_glance(
    readings: pd.DataFrame,
    relearning: pd.DataFrame | None = None,
    band: tuple[float, float] = (0.05, 0.95),
    title: str = "Genuineness at a glance: do the targets read like strangers, and do their facts come back?",
) -> go.Figure:
    """Per model (original, each method, an oracle): the targets' probe readings against the strangers' band.

    `readings` has one row per entity and model: `model` (the row label, e.g. "original", "sae_guided",
    "oracle"; rows are drawn in order of first appearance, top to bottom), `role` ("target" or
    "stranger"), and `p_known_sae` and/or `p_known_resid`. Each probe gets a panel: the strangers' `band`
    quantiles (5–95 % by default) as a shaded bar, their median as a tick, each target as a point, and the
    0.5 decision threshold. Genuine forgetting puts the targets inside the band on both probes; suppression
    leaves them at the original row's place.

    `relearning` (one row per `method`, matching `model` labels) adds a last panel: `relearn_acc` against
    `relearn_acc_unknown_ref` (the same fine-tuning given to strangers) as bars, or, when the table has
    per-step columns `relearn_<series>_recall_k<step>`, one recall curve per method and series instead.
    """
    probes = [c for c in PROBE_COLUMNS if c in readings]
    missing = {"model", "role"} - set(readings.columns)
    if missing or not probes:
        raise ValueError(
            f"readings need 'model', 'role' and p_known_sae / p_known_resid columns; got {list(readings.columns)}."
        )
    rows = list(pd.unique(readings["model"]))
    curves = relearn_curves(relearning) if relearning is not None else {}
    has_relearn = relearning is not None and (bool(curves) or {"method", "relearn_acc"} <= set(relearning.columns))
    panels = [f"{PROBE_COLUMNS[c]} p_known" for c in probes] + (["relearning"] if has_relearn else [])
    widths = [1.0] * len(probes) + ([1.2] if has_relearn else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, column_widths=widths, horizontal_spacing=0.06)
    low, high = band
    for col, column in enumerate(probes, start=1):
        strangers = readings[readings["role"] == "stranger"].groupby("model", sort=False)[column]
        q_low, q_mid, q_high = (strangers.quantile(q).reindex(rows) for q in (low, 0.5, high))
        first = col == 1
        fig.add_trace(
            go.Bar(
                x=(q_high - q_low).tolist(),
                base=q_low.tolist(),
                y=rows,
                orientation="h",
                name=f"strangers' {low:.0%}–{high:.0%} band",
                legendgroup="band",
                showlegend=first,
                marker={"color": BAND_COLOR, "line": {"width": 0}},
                width=0.5,
                hovertemplate="%{y}: strangers %{base:.2f}–%{x:.2f} wide<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=q_mid.tolist(),
                y=rows,
                mode="markers",
                name="strangers' median",
                legendgroup="median",
                showlegend=first,
                marker={"symbol": "line-ns", "size": 22, "line": {"width": 3, "color": UNKNOWN_COLOR}},
                hovertemplate="%{y}: strangers' median %{x:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        targets = readings[readings["role"] == "target"]
        fig.add_trace(
            go.Scatter(
                x=targets[column].tolist(),
                y=targets["model"].tolist(),
                mode="markers",
                name="targets",
                legendgroup="targets",
                showlegend=first,
                text=targets.get("entity"),
                marker={"symbol": "diamond", "size": 12, "color": "black", "line": {"width": 1, "color": "white"}},
                hovertemplate="%{text} (%{y}): %{x:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.add_vline(x=0.5, line_dash="dash", line_color=OTHER_COLOR, row=1, col=col)
        fig.update_xaxes(
            title_text=f"{PROBE_COLUMNS[column]} p_known (0.5 = threshold)", range=[-0.02, 1.02], row=1, col=col
        )
        axis = {"categoryorder": "array", "categoryarray": rows, "autorange": "reversed", "type": "category"}
        if first:
            fig.update_yaxes(title_text="model", **axis, row=1, col=col)
        else:
            fig.update_yaxes(matches="y", showticklabels=False, row=1, col=col)
    if has_relearn:
        _relearning_panel(fig, relearning, curves, rows, len(panels))
    fig.update_layout(
        title=title,
        barmode="overlay",
        height=max(320, 90 * len(rows) + 200),
        legend={"orientation": "h", "y": -0.22, "yanchor": "top"},
        margin={"b": 120},
    )
    return fig


def _relearning_panel(
    fig: go.Figure, table: pd.DataFrame, curves: dict[str, list[tuple[int, str]]], rows: list[str], col: int
) -> None:
    """The relearning panel: recall curves per method when the table has them, else the two accuracies as bars."""
    table = table.groupby("method", sort=False).mean(numeric_only=True)
    if curves:
        for i, method in enumerate(table.index):
            for dash, (series, points) in zip(("solid", "dash", "dot", "dashdot"), curves.items(), strict=False):
                fig.add_trace(
                    go.Scatter(
                        x=[step for step, _ in points],
                        y=[table.loc[method, c] for _, c in points],
                        mode="lines+markers",
                        name=f"{method}: {series}",
                        line={"color": method_color(i), "dash": dash},
                    ),
                    row=1,
                    col=col,
                )
        fig.update_xaxes(title_text="relearning step", row=1, col=col)
        fig.update_yaxes(title_text="recall of held-back facts", range=[-0.02, 1.02], row=1, col=col)
        return
    labelled = [r for r in rows if r in table.index]
    for column, name, color in (
        ("relearn_acc", "relearned: targets", "#393B79"),
        ("relearn_acc_unknown_ref", "relearned: strangers given the same facts", UNKNOWN_COLOR),
    ):
        if column not in table:
            continue
        values = table.loc[labelled, column]
        fig.add_trace(
            go.Bar(
                x=values.tolist(),
                y=labelled,
                orientation="h",
                name=name,
                marker_color=color,
                text=[f"{v:.2f}" for v in values],
                textposition="outside",
                cliponaxis=False,
                offsetgroup=column,
                hovertemplate="%{y}: %{x:.3f}<extra>" + name + "</extra>",
            ),
            row=1,
            col=col,
        )
    fig.update_traces(selector={"offsetgroup": "relearn_acc"}, width=0.3, offset=-0.3)
    fig.update_traces(selector={"offsetgroup": "relearn_acc_unknown_ref"}, width=0.3, offset=0.0)
    fig.update_xaxes(title_text="accuracy on held-back facts after relearning", range=[0, 1.12], row=1, col=col)
    fig.update_yaxes(matches="y", showticklabels=False, row=1, col=col)


# Optimisation history ------------------------------------------------------------------------------


def loss_series(per_step: pd.DataFrame) -> dict[str, pd.Series]:
    """The loss terms to draw, labelled: columns `loss` and `loss_*`; identical series are drawn once.

    A method with a single term logs `loss` equal to it (grad_ascent: `loss` = `loss_forget`); drawing
    both would hide one exactly under the other, so they become one series labelled "loss = loss_forget".
    """
    columns = [c for c in per_step.columns if c == "loss" or str(c).startswith("loss_")]
    series: dict[str, pd.Series] = {}
    for column in columns:
        values = per_step[column].astype(float)
        same = next((label for label, s in series.items() if np.allclose(s, values, equal_nan=True)), None)
        if same is None:
            series[column] = values
        else:
            series[f"{same} = {column}"] = series.pop(same)
    return series


def _log_scale(values: Sequence[pd.Series]) -> bool:
    """Log y when no value is negative and the positive ones span more than two orders of magnitude."""
    flat = pd.concat(list(values)).dropna()
    positive = flat[flat > 0]
    return bool(len(positive)) and not (flat < 0).any() and positive.max() / positive.min() > 100


def optimisation_history(
    history: pd.DataFrame,
    stop_reason: str | None = None,
    title: str | None = None,
    stop_threshold: float | None = None,
    max_targets: int = 4,
) -> go.Figure:
    """An unlearning run step by step: the loss terms, then one column of panels per target.

    `history` is `UnlearnResult.history` (one row per step × target). The top panel draws the loss terms
    (shared by all targets), on a log axis when they span orders of magnitude; below it, per target (up
    to `max_targets`), the probes' p_known with the method's own stop criterion (`forget_acc_train` of the
    suppression baselines, with `stop_threshold`; the fraction of question tokens flipped for
    sae_guided), and the distances to the centroids. Each quantity keeps one colour in every panel and
    one legend entry. The last step is marked in every panel, labelled with `stop_reason`; panels whose
    columns a method does not log are left out.
    """
    if history.empty or "step" not in history:
        raise ValueError("The history is empty (no optimisation step was recorded): nothing to plot.")
    per_step = history.groupby("step", sort=True).first()
    losses = loss_series(per_step)
    readings = [c for c in HISTORY_READINGS if c in history]
    distances = [c for c in HISTORY_DISTANCES if c in history]
    targets = list(pd.unique(history["target"]))[:max_targets] if "target" in history else []
    facet_rows = [(name, cols) for name, cols in (("readings", readings), ("distances", distances)) if cols and targets]
    if not losses and not facet_rows:
        raise ValueError(f"The history has none of the plotted columns; it has {list(history.columns)}.")
    n_cols = max(len(targets), 1)
    specs = ([[{"colspan": n_cols}] + [None] * (n_cols - 1)] if losses else []) + [[{}] * n_cols for _ in facet_rows]
    titles = (["loss terms (shared by all targets)"] if losses else []) + [
        f"{target}: {'p_known and stop criteria' if name == 'readings' else 'distance to centroids'}"
        for name, _ in facet_rows
        for target in targets
    ]
    fig = make_subplots(
        rows=len(specs), cols=n_cols, specs=specs, subplot_titles=titles, vertical_spacing=0.12, horizontal_spacing=0.06
    )
    if losses:
        log = _log_scale(list(losses.values()))
        terms = [label for label in losses if label.split(" = ")[0] != "loss"]
        for label, values in losses.items():
            shown = values.where(values > 0) if log else values
            if not shown.notna().any():  # e.g. a term logged only from the second step of a one-step run
                continue
            color = (
                LOSS_PALETTE[1 + terms.index(label) % (len(LOSS_PALETTE) - 1)] if label in terms else LOSS_PALETTE[0]
            )
            fig.add_trace(
                go.Scatter(x=per_step.index, y=shown, mode="lines", name=label, line={"color": color}), row=1, col=1
            )
        fig.update_yaxes(
            title_text="loss (log scale; zeros not drawn)" if log else "loss",
            type="log" if log else "linear",
            row=1,
            col=1,
        )
        fig.update_xaxes(title_text="step", row=1, col=1)
    quantities = {**HISTORY_READINGS, **HISTORY_DISTANCES}
    in_legend: set[str] = set()  # each quantity's first drawn trace carries its legend entry
    for row, (name, columns) in enumerate(facet_rows, start=2 if losses else 1):
        for col, target in enumerate(targets, start=1):
            rows = history[history["target"] == target].sort_values("step")
            for column in columns:
                label, color, dash = quantities[column]
                if not rows[column].notna().any():  # nothing logged for this target: no empty trace
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=rows["step"],
                        y=rows[column],
                        mode="lines",
                        name=label,
                        legendgroup=column,
                        showlegend=column not in in_legend,
                        line={"color": color, "dash": dash},
                    ),
                    row=row,
                    col=col,
                )
                in_legend.add(column)
            if name == "readings":
                fig.add_hline(y=0.5, line_dash="dash", line_color=OTHER_COLOR, row=row, col=col)
                if stop_threshold is not None and "forget_acc_train" in columns:
                    fig.add_hline(
                        y=stop_threshold,
                        line_dash="dot",
                        line_color=HISTORY_READINGS["forget_acc_train"][1],
                        row=row,
                        col=col,
                    )
                fig.update_yaxes(title_text="p_known / fraction", range=[-0.02, 1.02], row=row, col=col)
            else:
                fig.update_yaxes(title_text="d ÷ ‖μ_U − μ_K‖²", row=row, col=col)
            fig.update_xaxes(title_text="step", row=row, col=col)
    last = int(history["step"].max())
    for row in range(1, len(specs) + 1):
        for col in range(1, (1 if losses and row == 1 else n_cols) + 1):
            fig.add_vline(x=last, line_dash="dot", line_color="black", row=row, col=col)
    fig.add_annotation(
        x=last,
        y=1.0,
        xref="x",
        yref="paper",
        text=f"stop: {stop_reason or 'end'} (step {last})",
        showarrow=False,
        xanchor="right",
        yanchor="bottom",
    )
    more = history["target"].nunique() - len(targets) if "target" in history else 0
    heading = title or "Optimisation history"
    fig.update_layout(
        title=heading + (f" (first {len(targets)} of {len(targets) + more} targets)" if more > 0 else ""),
        height=300 * len(specs) + 140,
        legend={"orientation": "h", "y": -0.08, "yanchor": "top"},
    )
    return fig


# Method comparison ---------------------------------------------------------------------------------


def method_comparison(table: pd.DataFrame, title: str = "Methods compared") -> go.Figure:
    """Compare methods on the axes that separate them, from a table with a `method` column (e.g. `compare`'s).

    Panels, each shown only when its columns exist: forget vs retain accuracy; indistinguishability from
    strangers (● SAE probe, ○ residual probe) vs relearning accuracy, with the strangers' relearning as a
    line; the perplexity ratio on its own axis around 1; and generation health (`generation_health`,
    `repetition_rate`). One colour and symbol per method, one legend entry each; `<metric>_std` columns
    become error bars; several rows of one method are averaged. Axis ranges are padded and labels are
    not clipped, so methods at the edge (forget_acc 0) stay readable.
    """
    if "method" not in table:
        raise ValueError(f"The table needs a 'method' column; it has {list(table.columns)}.")
    table = table.groupby("method", sort=False).mean(numeric_only=True).reset_index()
    has = set(table.columns).issuperset
    panels = [
        name
        for name, present in (
            ("forget vs retain", has({"forget_acc", "retain_acc"})),
            ("indistinguishability vs relearning", has({"indistinguishability", "relearn_acc"})),
            ("perplexity ratio", has({"ppl_ratio"})),
            ("generation health", bool(set(HEALTH_COLUMNS) & set(table.columns))),
        )
        if present
    ]
    if not panels:
        raise ValueError(
            "The table has no comparable metrics (forget_acc+retain_acc, indistinguishability+relearn_acc, "
            f"ppl_ratio, generation_health, repetition_rate); it has {list(table.columns)}."
        )
    n_cols = min(len(panels), 2)
    n_rows = math.ceil(len(panels) / n_cols)
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=panels, horizontal_spacing=0.12, vertical_spacing=0.2)
    methods = table["method"].tolist()
    legend_shown: set[str] = set()

    def point(i: int, row: pd.Series, **scatter) -> go.Scatter:
        """One method's marker; its legend entry only the first time the method is drawn."""
        method = row["method"]
        shown = method not in legend_shown
        legend_shown.add(method)
        marker = {"size": 15 - (i % 3), "color": method_color(i), "symbol": method_symbol(i)} | scatter.pop(
            "marker", {}
        )
        return go.Scatter(name=method, legendgroup=method, showlegend=shown, marker=marker, cliponaxis=False, **scatter)

    for k, panel in enumerate(panels):
        r, c = k // n_cols + 1, k % n_cols + 1
        if panel == "forget vs retain":
            for i, row in table.iterrows():
                fig.add_trace(
                    point(
                        i,
                        row,
                        x=[row["forget_acc"]],
                        y=[row["retain_acc"]],
                        mode="markers+text",
                        text=[row["method"]],
                        textposition="top right" if i % 2 == 0 else "bottom right",
                        error_x=_error(row, "forget_acc"),
                        error_y=_error(row, "retain_acc"),
                        customdata=[[row.get("idk_rate", float("nan"))]],
                        hovertemplate="forget_acc %{x:.3f}<br>retain_acc %{y:.3f}<br>idk_rate %{customdata[0]:.2f}",
                    ),
                    row=r,
                    col=c,
                )
            fig.update_xaxes(title_text="forget_acc ↓ (target facts still answered)", range=[-0.1, 1.15], row=r, col=c)
            fig.update_yaxes(
                title_text="retain_acc ↑ (others' facts kept)", range=_padded(table["retain_acc"], 1.0), row=r, col=c
            )
        elif panel == "indistinguishability vs relearning":
            for i, row in table.iterrows():
                resid = row.get("indistinguishability_resid", float("nan"))
                xs = [row["indistinguishability"]] + ([resid] if not math.isnan(resid) else [])
                fig.add_trace(
                    point(
                        i,
                        row,
                        x=xs,
                        y=[row["relearn_acc"]] * len(xs),
                        mode="lines+markers",
                        line={"color": method_color(i), "width": 1},
                        marker={"symbol": [method_symbol(i), method_symbol(i) + "-open"][: len(xs)]},
                        hovertemplate="indistinguishability %{x:.3f}<br>relearn_acc %{y:.3f}",
                    ),
                    row=r,
                    col=c,
                )
            if "relearn_acc_unknown_ref" in table:
                reference = float(table["relearn_acc_unknown_ref"].mean())
                fig.add_hline(
                    y=reference,
                    line_dash="dash",
                    line_color=UNKNOWN_COLOR,
                    row=r,
                    col=c,
                    annotation_text=f"strangers relearn {reference:.2f}",
                    annotation_position="top right",
                )
            fig.update_xaxes(
                title_text="indistinguishability ↑ (● SAE, ○ residual probe)", range=[-0.05, 1.1], row=r, col=c
            )
            fig.update_yaxes(title_text="relearn_acc → strangers' level", range=[-0.08, 1.1], row=r, col=c)
        elif panel == "perplexity ratio":
            for i, row in table.iterrows():
                fig.add_trace(
                    point(
                        i,
                        row,
                        x=[row["method"]],
                        y=[row["ppl_ratio"]],
                        mode="markers+text",
                        text=[f"{row['ppl_ratio']:.3f}"],
                        textposition="middle right",
                        error_y=_error(row, "ppl_ratio"),
                        hovertemplate="ppl_ratio %{y:.4f}",
                    ),
                    row=r,
                    col=c,
                )
            fig.add_hline(y=1.0, line_dash="dash", line_color=OTHER_COLOR, row=r, col=c)
            fig.update_xaxes(title_text="method", range=[-0.5, len(methods) - 0.5], row=r, col=c)
            fig.update_yaxes(
                title_text="ppl_ratio → 1 (generic text, after ÷ before)",
                range=_padded(table["ppl_ratio"], 1.0, minimum_pad=0.01),
                row=r,
                col=c,
            )
        else:
            for column, (label, color) in HEALTH_COLUMNS.items():
                if column in table:
                    fig.add_trace(
                        go.Bar(
                            x=methods, y=table[column], name=label, marker_color=color, error_y=_error(table, column)
                        ),
                        row=r,
                        col=c,
                    )
            health_top = max(1.05, float(table[[c for c in HEALTH_COLUMNS if c in table]].max().max()) + 0.05)
            fig.update_xaxes(title_text="method", row=r, col=c)
            fig.update_yaxes(title_text="value", range=[0, health_top], row=r, col=c)
    fig.update_layout(
        title=title,
        barmode="group",
        height=430 * n_rows + 60,
        legend={"orientation": "h", "y": -0.08, "yanchor": "top"},
    )
    return fig


def _padded(values: pd.Series, include: float, minimum_pad: float = 0.05) -> list[float]:
    """An axis range covering `values` and `include`, padded by a fifth of the span (at least `minimum_pad`)."""
    low, high = min(float(values.min()), include), max(float(values.max()), include)
    pad = max(minimum_pad, 0.2 * (high - low))
    return [low - pad, high + pad]


def _error(source: pd.Series | pd.DataFrame, column: str) -> dict | None:
    """Plotly error-bar settings from the `<column>_std` entries, if present."""
    std = f"{column}_std"
    if std not in source:
        return None
    values = source[std]
    return {"type": "data", "array": list(values) if isinstance(values, pd.Series) else [values], "visible": True}


# Recognition ---------------------------------------------------------------------------------------


def separation_bars(recognizer: Recognizer, title: str = "Known- and unknown-latents") -> go.Figure:
    """Bar charts of the recognizer's top latents by separation score, `s_known` and `s_unknown`.

    Each bar is one SAE latent; hover shows how often it fires on known and on unknown people
    (Ferrando et al.: `s_known = f_known − f_unknown`). Generic latents are already left out.
    """
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("top known-latents (s_known)", "top unknown-latents (s_unknown)")
    )
    for col, (which, color) in enumerate((("known", KNOWN_COLOR), ("unknown", UNKNOWN_COLOR)), start=1):
        top = recognizer.top_latents(which)
        fig.add_trace(
            go.Bar(
                x=[str(j) for j in top["latent"]],
                y=top[f"s_{which}"],
                name=f"{which}-latents",
                marker_color=color,
                customdata=top[["freq_known", "freq_unknown"]].to_numpy(),
                hovertemplate=(
                    "latent %{x}: score %{y:.2f}<br>fires on %{customdata[0]:.0%} known, "
                    "%{customdata[1]:.0%} unknown<extra></extra>"
                ),
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(title_text=f"s_{which}", range=[0, 1], row=1, col=col)
        fig.update_xaxes(title_text=f"SAE latent (top {len(top)} by s_{which})", type="category", row=1, col=col)
    fig.update_layout(title=title, showlegend=False, height=420)
    return fig


def probe_distributions(
    readings: pd.DataFrame,
    title: str = "Probe p_known by group (0.5 = decision threshold)",
    strangers: str = "unknown",
    min_box: int = 5,
    colors: Mapping[str, str] | None = None,
) -> go.Figure:
    """p_known per group, one panel per probe (SAE, residual): a box with every point, or points alone.

    `readings` has a `group` column (e.g. "known", "unknown", "targets before", "after sae_guided") and
    `p_known_sae` and/or `p_known_resid` (one row per entity, as `Recognizer.p_known` returns). Groups are
    drawn in order of first appearance; known and unknown get their usual colours, `colors` sets others'
    (e.g. each method's own). A group of fewer than
    `min_box` entities (a single target) is drawn as points, since a box of one point has no width. The
    `strangers` group's median is drawn as a line: where a genuinely forgotten target should sit.
    """
    probes = [c for c in PROBE_COLUMNS if c in readings]
    if "group" not in readings or not probes:
        raise ValueError(
            f"readings need a 'group' column and p_known_sae / p_known_resid; got {list(readings.columns)}."
        )
    fig = make_subplots(rows=1, cols=len(probes), subplot_titles=[PROBE_COLUMNS[c] for c in probes], shared_yaxes=True)
    fixed = {"known": KNOWN_COLOR, strangers: UNKNOWN_COLOR, **(colors or {})}
    groups = list(pd.unique(readings["group"]))
    for i, group in enumerate(groups):
        rows = readings[readings["group"] == group]
        color = fixed.get(group, method_color(i))
        for col, column in enumerate(probes, start=1):
            common = {
                "x": [str(group)] * len(rows),
                "y": rows[column],
                "name": str(group),
                "legendgroup": str(group),
                "showlegend": col == 1,
                "text": rows.get("entity"),
            }
            if len(rows) >= min_box:
                trace = go.Box(boxpoints="all", jitter=0.4, pointpos=0, marker={"color": color, "size": 4}, **common)
            else:
                trace = go.Scatter(mode="markers", marker={"color": color, "size": 12, "symbol": "diamond"}, **common)
            fig.add_trace(trace, row=1, col=col)
    stranger_rows = readings[readings["group"] == strangers]
    for col, column in enumerate(probes, start=1):
        fig.add_hline(y=0.5, line_dash="dash", line_color=OTHER_COLOR, row=1, col=col)
        if len(stranger_rows):
            level = float(stranger_rows[column].median())
            fig.add_hline(
                y=level,
                line_dash="dot",
                line_color=UNKNOWN_COLOR,
                row=1,
                col=col,
                annotation_text=f"strangers' median {level:.2f}",
                annotation_position="top right",
            )
        fig.update_xaxes(title_text="group", tickangle=0, categoryorder="array", categoryarray=groups, row=1, col=col)
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_yaxes(title_text="p_known", row=1, col=1)
    fig.update_layout(title=title, height=460, legend={"orientation": "h", "y": -0.2, "yanchor": "top"})
    return fig
