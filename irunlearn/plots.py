"""Plotly figures that show forgetting happen: recognition, latent maps, feature shifts, histories, methods.

Every figure function takes plain tensors and DataFrames and returns a `plotly.graph_objects.Figure`, so it
works the same in a notebook (`fig.show()`), in the HTML report (`irunlearn.report`) and in tests. The one
function here that runs a model, `mean_latents`, computes the per-entity latents the latent map draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

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
# Series colours (methods, targets, metrics) that stay clear of the known (blue) / unknown (orange) pair.
PALETTE = ("#D62728", "#2CA02C", "#9467BD", "#8C564B", "#E377C2", "#17BECF", "#BCBD22", "#393B79")
LOSS_COLUMNS = ("loss", "loss_forget", "loss_act", "loss_lm")
PROBE_COLUMNS = {"p_known_sae": "SAE probe", "p_known_resid": "residual probe"}
DISTANCE_COLUMNS = {"dist_to_unknown": "d(z, μ_U)", "dist_to_known": "d(z, μ_K)"}
COLLAPSE_COLUMNS = ("ppl_ratio", "generation_health", "repetition_rate", "distinct2")
# One fixed colour per compared metric, from a palette apart from the methods' (vega category20b).
METRIC_COLORS = dict(
    zip(
        ("probe_p_known_sae", "probe_p_known_resid", *COLLAPSE_COLUMNS),
        ("#393B79", "#9C9EDE", "#637939", "#B5CF6B", "#8C6D31", "#E7BA52"),
        strict=True,
    )
)


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


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


def latent_map(
    known: Float[torch.Tensor, "n_known d_sae"],
    unknown: Float[torch.Tensor, "n_unknown d_sae"],
    before: Float[torch.Tensor, "n_targets d_sae"],
    after: Float[torch.Tensor, "n_targets d_sae"] | Mapping[str, Float[torch.Tensor, "n_targets d_sae"]],
    targets: Sequence[str],
    path: Float[torch.Tensor, "steps n_targets d_sae"] | None = None,
    mu_known: Float[torch.Tensor, " d_sae"] | None = None,
    mu_unknown: Float[torch.Tensor, " d_sae"] | None = None,
    projection: Literal["pca", "centroids"] = "pca",
    known_names: Sequence[str] | None = None,
    unknown_names: Sequence[str] | None = None,
    title: str = "Where the targets sit among known and unknown people",
) -> go.Figure:
    """Known and unknown clouds in a 2-D projection, each target before and after with an arrow between.

    The projection (`LatentProjection`) is fitted on the two clouds only, so the edit cannot bend the
    axes. `after` is one tensor or a `{label: tensor}` mapping (e.g. one per method), each drawn with its
    own marker trace and arrows. `path`, the target latents at successive optimisation steps, adds a
    line per target. With `mu_known`/`mu_unknown` the centroids are marked (and `"centroids"` projection
    becomes available).

    >>> latent_map(mean_latents(m, sae, known, ts), mean_latents(m, sae, unknown, ts),
    ...            mean_latents(m, sae, targets, ts), mean_latents(edited, sae, targets, ts), ["Kalo Renvi"])
    """
    afters = {"after": after} if isinstance(after, torch.Tensor) else dict(after)
    for label, points in {"before": before, **afters}.items():
        if points.shape[0] != len(targets):
            raise ValueError(f"{label!r} has {points.shape[0]} rows but there are {len(targets)} targets.")
    project = LatentProjection.fit(torch.cat([known, unknown]), projection, mu_known, mu_unknown)
    fig = go.Figure()
    for name, cloud, names, color in (
        ("known people", known, known_names, KNOWN_COLOR),
        ("unknown people", unknown, unknown_names, UNKNOWN_COLOR),
    ):
        xy = project(cloud)
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0].tolist(),
                y=xy[:, 1].tolist(),
                mode="markers",
                name=name,
                marker={"color": color, "size": 5, "opacity": 0.45},
                text=list(names) if names is not None else None,
                hovertemplate="%{text}<extra>" + name + "</extra>" if names is not None else None,
            )
        )
    if mu_known is not None and mu_unknown is not None:
        xy = project(torch.stack([mu_known, mu_unknown]))
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0].tolist(),
                y=xy[:, 1].tolist(),
                mode="markers+text",
                name="centroids",
                text=["μ_K", "μ_U"],
                textposition="top center",
                marker={"color": [KNOWN_COLOR, UNKNOWN_COLOR], "size": 14, "symbol": "x", "line": {"width": 1}},
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
            marker={"color": "black", "size": 11, "symbol": "circle-open", "line": {"width": 2}},
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
    for j, (label, points) in enumerate(afters.items()):
        end = project(points)
        color = _color(j)
        fig.add_trace(
            go.Scatter(
                x=end[:, 0].tolist(),
                y=end[:, 1].tolist(),
                mode="markers",
                name=f"targets {label}",
                text=list(targets),
                hovertemplate="%{text}<extra>" + label + "</extra>",
                marker={"color": color, "size": 13, "symbol": "star", "line": {"width": 1, "color": "black"}},
            )
        )
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
                arrowsize=1.3,
                arrowwidth=2,
                arrowcolor=color,
                text="",
            )
    fig.update_layout(title=title, xaxis_title=project.axis_titles[0], yaxis_title=project.axis_titles[1])
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


# Optimisation history ------------------------------------------------------------------------------


def optimisation_history(history: pd.DataFrame, stop_reason: str | None = None, title: str | None = None) -> go.Figure:
    """Per-step panels of an unlearning run: loss terms, probe p_known per target, distances to centroids.

    `history` is `UnlearnResult.history` (one row per step × target). Panels whose columns are missing
    (other methods log other terms) are left out. The last step is marked with a vertical line labelled
    with `stop_reason`; the probe panel shows the 0.5 decision threshold.
    """
    if history.empty or "step" not in history:
        raise ValueError("The history is empty (no optimisation step was recorded): nothing to plot.")
    per_step = history.groupby("step", sort=True).first()
    losses = [c for c in history.columns if c in LOSS_COLUMNS or c.startswith("loss_")]
    probes = [c for c in PROBE_COLUMNS if c in history]
    distances = [c for c in DISTANCE_COLUMNS if c in history]
    panels = [
        (name, columns)
        for name, columns in (
            ("loss terms", losses),
            ("probe p_known per target", probes),
            ("distance to centroids per target (÷ ‖μ_U − μ_K‖²)", distances),
        )
        if columns
    ]
    if not panels:
        raise ValueError(f"The history has none of the plotted columns; it has {list(history.columns)}.")
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=[p[0] for p in panels])
    targets = list(pd.unique(history["target"])) if "target" in history else []
    dashes = {"p_known_sae": "solid", "p_known_resid": "dot", "dist_to_unknown": "solid", "dist_to_known": "dash"}
    for row, (name, columns) in enumerate(panels, start=1):
        if name == "loss terms":
            for i, column in enumerate(columns):
                fig.add_trace(
                    go.Scatter(x=per_step.index, y=per_step[column], mode="lines", name=column, line_color=_color(i)),
                    row=row,
                    col=1,
                )
            fig.update_yaxes(title_text="loss", row=row, col=1)
            continue
        for i, target in enumerate(targets):
            rows = history[history["target"] == target].sort_values("step")
            for column in columns:
                label = {**PROBE_COLUMNS, **DISTANCE_COLUMNS}[column]
                fig.add_trace(
                    go.Scatter(
                        x=rows["step"],
                        y=rows[column],
                        mode="lines",
                        name=f"{target}: {label}",
                        legendgroup=target,
                        line={"color": _color(len(losses) + i), "dash": dashes.get(column, "solid")},
                    ),
                    row=row,
                    col=1,
                )
        if name.startswith("probe"):
            fig.add_hline(y=0.5, line_dash="dash", line_color=OTHER_COLOR, row=row, col=1)
            fig.update_yaxes(title_text="p_known", range=[0, 1], row=row, col=1)
        else:
            fig.update_yaxes(title_text="d", row=row, col=1)
    last = int(history["step"].max())
    fig.add_vline(x=last, line_dash="dot", line_color="black", row="all", col=1)
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
    fig.update_xaxes(title_text="step", row=len(panels), col=1)
    fig.update_layout(title=title or "Optimisation history", height=260 * len(panels) + 120)
    return fig


# Method comparison ---------------------------------------------------------------------------------


def method_comparison(table: pd.DataFrame, title: str = "Methods compared") -> go.Figure:
    """Compare methods from a table with a `method` column and metric columns (e.g. the `compare` table).

    Panels, each shown only when its columns exist: forget vs retain accuracy (one marker per method,
    `<metric>_std` columns as error bars, `idk_rate` in the hover), probe p_known by method with the 0.5
    threshold, and collapse metrics (`ppl_ratio`, `generation_health`, `repetition_rate`, `distinct2`).
    Several rows of one method are averaged.
    """
    if "method" not in table:
        raise ValueError(f"The table needs a 'method' column; it has {list(table.columns)}.")
    table = table.groupby("method", sort=False).mean(numeric_only=True).reset_index()
    scatter = all(c in table for c in ("forget_acc", "retain_acc"))
    probes = [c for c in ("probe_p_known_sae", "probe_p_known_resid") if c in table]
    collapse = [c for c in COLLAPSE_COLUMNS if c in table]
    panels = [
        name
        for name, present in (
            ("forget vs retain", scatter),
            ("probe p_known on targets", probes),
            ("generation health", collapse),
        )
        if present
    ]
    if not panels:
        raise ValueError(
            "The table has no comparable metrics (forget_acc+retain_acc, probe_p_known_*, ppl_ratio, "
            f"repetition_rate, distinct2); it has {list(table.columns)}."
        )
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.1)
    methods = table["method"].tolist()
    for col, panel in enumerate(panels, start=1):
        if panel == "forget vs retain":
            for i, row in table.iterrows():
                fig.add_trace(
                    go.Scatter(
                        x=[row["forget_acc"]],
                        y=[row["retain_acc"]],
                        mode="markers+text",
                        text=[row["method"]],
                        textposition="top center",
                        name=row["method"],
                        legendgroup=row["method"],
                        marker={"size": 14, "color": _color(i)},
                        error_x=_error(row, "forget_acc"),
                        error_y=_error(row, "retain_acc"),
                        customdata=[[row.get("idk_rate", float("nan"))]],
                        hovertemplate="forget_acc %{x:.2f}<br>retain_acc %{y:.2f}<br>idk_rate %{customdata[0]:.2f}",
                    ),
                    row=1,
                    col=col,
                )
            fig.update_xaxes(title_text="forget_acc (↓)", range=[-0.05, 1.05], row=1, col=col)
            fig.update_yaxes(title_text="retain_acc (→ 1)", row=1, col=col)
            continue
        columns = probes if panel.startswith("probe") else collapse
        for column in columns:
            fig.add_trace(
                go.Bar(
                    x=methods,
                    y=table[column],
                    name=column,
                    marker_color=METRIC_COLORS[column],
                    error_y=_error(table, column),
                ),
                row=1,
                col=col,
            )
        if panel.startswith("probe"):
            fig.add_hline(y=0.5, line_dash="dash", line_color=OTHER_COLOR, row=1, col=col)
            fig.update_yaxes(title_text="p_known (< 0.5: unknown)", range=[0, 1], row=1, col=col)
        else:
            fig.update_yaxes(title_text="value (ppl_ratio ≤ 1.05)", row=1, col=col)
    fig.update_layout(
        title=title, barmode="group", height=520, legend={"orientation": "h", "y": -0.25, "yanchor": "top"}
    )
    return fig


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
                x=[f"latent {j}" for j in top["latent"]],
                y=top[f"s_{which}"],
                name=f"{which}-latents",
                marker_color=color,
                customdata=top[["freq_known", "freq_unknown"]].to_numpy(),
                hovertemplate=(
                    "%{x}: score %{y:.2f}<br>fires on %{customdata[0]:.0%} known, "
                    "%{customdata[1]:.0%} unknown<extra></extra>"
                ),
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(title_text=f"s_{which}", range=[0, 1], row=1, col=col)
    fig.update_layout(title=title, showlegend=False, height=420)
    return fig


def probe_distributions(
    readings: pd.DataFrame, title: str = "Probe p_known by group (0.5 = decision threshold)"
) -> go.Figure:
    """Box plots with every point of probe p_known per group, one panel per probe (SAE, residual).

    `readings` has a `group` column (e.g. "known", "unknown", "targets before", "targets after
    sae_guided") and `p_known_sae` and/or `p_known_resid` (one row per entity, as `Recognizer.p_known`
    returns). Groups are drawn in order of first appearance; known and unknown get their usual colours.
    """
    probes = [c for c in PROBE_COLUMNS if c in readings]
    if "group" not in readings or not probes:
        raise ValueError(
            f"readings need a 'group' column and p_known_sae / p_known_resid; got {list(readings.columns)}."
        )
    fig = make_subplots(rows=1, cols=len(probes), subplot_titles=[PROBE_COLUMNS[c] for c in probes], shared_yaxes=True)
    fixed = {"known": KNOWN_COLOR, "unknown": UNKNOWN_COLOR}
    for i, group in enumerate(pd.unique(readings["group"])):
        rows = readings[readings["group"] == group]
        for col, column in enumerate(probes, start=1):
            fig.add_trace(
                go.Box(
                    y=rows[column],
                    name=str(group),
                    legendgroup=str(group),
                    showlegend=col == 1,
                    boxpoints="all",
                    jitter=0.4,
                    pointpos=0,
                    marker={"color": fixed.get(group, _color(i)), "size": 4},
                    text=rows.get("entity"),
                ),
                row=1,
                col=col,
            )
    for col in range(1, len(probes) + 1):
        fig.add_hline(y=0.5, line_dash="dash", line_color=OTHER_COLOR, row=1, col=col)
    fig.update_yaxes(range=[-0.02, 1.02])
    fig.update_yaxes(title_text="p_known", row=1, col=1)
    fig.update_layout(title=title, height=450)
    return fig
