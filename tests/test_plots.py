"""Figures and the HTML report: what each figure draws, checked on constructed inputs and on the world."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from irunlearn.activations import encode_latents, extract_activations
from irunlearn.plots import (
    LatentProjection,
    feature_shift,
    latent_map,
    mean_latents,
    method_comparison,
    optimisation_history,
    probe_distributions,
    separation_bars,
)
from irunlearn.probes import LinearProbe
from irunlearn.recognition import Recognizer, separation_scores
from irunlearn.report import forgetting_figures, metrics_table, report_html, write_report


def traces(fig) -> dict[str, object]:
    return {t.name: t for t in fig.data}


@pytest.fixture(scope="module")
def clouds():
    """Known and unknown latent clouds in 16 dimensions: latents 0-1 fire only for known people, 2-3 for
    all known and half the unknown, 4-5 only for unknown people, 6-15 at random for both."""
    gen = torch.Generator().manual_seed(0)
    known = torch.zeros(50, 16)
    unknown = torch.zeros(40, 16)
    known[:, :4] = 2.0 + 0.3 * torch.rand(50, 4, generator=gen)
    unknown[::2, 2:4] = 1.0
    unknown[:, 4:6] = 3.0 + 0.3 * torch.rand(40, 2, generator=gen)
    known[:, 6:] = (torch.randn(50, 10, generator=gen)).relu()
    unknown[:, 6:] = (torch.randn(40, 10, generator=gen)).relu()
    return known, unknown, known.mean(0), unknown.mean(0)


@pytest.fixture(scope="module")
def small_recognizer(clouds):
    """A Recognizer fitted on the synthetic clouds: its top-2 known-latents are 0 and 1, unknown-latents 4 and 5."""
    known, unknown, mu_known, mu_unknown = clouds
    latents = torch.cat([known, unknown])
    labels = torch.tensor([1] * len(known) + [0] * len(unknown))
    probe = LinearProbe.fit(latents, labels, latents, labels)
    return Recognizer(
        hook_name="blocks.0.hook_resid_post",
        prepend_bos=True,
        templates=[],
        scores=separation_scores(latents, labels),
        mu_known=mu_known,
        mu_unknown=mu_unknown,
        sae_probe=probe,
        resid_probe=probe,
        top_k=2,
    )


def history_frame(steps: int = 8, targets=("Ana Bel", "Kor Vel")) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "step": s,
                "target": t,
                "p_known_sae": 0.95 - 0.1 * s,
                "p_known_resid": 0.9 - 0.08 * s,
                "dist_to_unknown": 1.0 - 0.1 * s,
                "dist_to_known": 0.1 * s,
                "loss": 1.0 / (s + 1),
                "loss_forget": 0.9 / (s + 1),
                "loss_act": 0.01 * s,
                "loss_lm": 0.001 * s,
                "retain_kl": 0.001 * s,
            }
            for s in range(steps)
            for t in targets
        ]
    )


# Latent map ------------------------------------------------------------------------------------------


def test_pca_projection_finds_the_main_axis_with_stable_signs():
    gen = torch.Generator().manual_seed(1)
    points = torch.randn(200, 5, generator=gen) * torch.tensor([5.0, 2.0, 0.1, 0.1, 0.1])
    projection = LatentProjection.fit(points)
    assert torch.allclose(projection.basis.T @ projection.basis, torch.eye(2), atol=1e-5)
    assert projection.basis[0, 0] > 0.99 and projection.basis[1, 1].abs() > 0.99
    assert projection.axis_titles[0].startswith("PC1") and "variance" in projection.axis_titles[0]
    flipped = LatentProjection.fit(-points)
    assert torch.allclose(flipped.basis, projection.basis, atol=1e-5)  # same axes whatever the data's sign


def test_centroid_projection_puts_unknown_to_the_right(clouds):
    known, unknown, mu_known, mu_unknown = clouds
    projection = LatentProjection.fit(torch.cat([known, unknown]), "centroids", mu_known, mu_unknown)
    xy = projection(torch.stack([mu_known, mu_unknown]))
    assert xy[1, 0] > xy[0, 0]
    assert abs(float(projection.basis[:, 0] @ projection.basis[:, 1])) < 1e-5
    assert "μ_K → μ_U" in projection.axis_titles[0]
    with pytest.raises(ValueError, match="needs mu_known"):
        LatentProjection.fit(known, "centroids")


def test_latent_map_draws_one_arrow_per_target_and_run_from_before_to_after(clouds):
    known, unknown, mu_known, mu_unknown = clouds
    before, names = known[:2], ["Ana Bel", "Kor Vel"]
    fig = latent_map(
        known, unknown, before, {"sae_guided": unknown[:2], "grad_ascent": known[2:4]}, names,
        mu_known=mu_known, mu_unknown=mu_unknown,
    )  # fmt: skip
    drawn = traces(fig)
    assert list(drawn) == [
        "known people", "unknown people", "centroids", "targets before", "targets sae_guided", "targets grad_ascent",
    ]  # fmt: skip
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 4
    start = drawn["targets before"]
    ends = ["targets sae_guided"] * 2 + ["targets grad_ascent"] * 2
    for arrow, end_trace, i in zip(arrows, ends, [0, 1, 0, 1], strict=True):
        assert (arrow.ax, arrow.ay) == pytest.approx((start.x[i], start.y[i]))
        assert (arrow.x, arrow.y) == pytest.approx((drawn[end_trace].x[i], drawn[end_trace].y[i]))
        assert arrow.axref == "x" and arrow.ayref == "y"  # tail in data coordinates, not pixels
    assert fig.layout.xaxis.title.text.startswith("PC1")
    assert list(drawn["targets before"].text) == names


def test_latent_map_draws_optimisation_paths_and_rejects_mismatched_rows(clouds):
    known, unknown, _, _ = clouds
    path = torch.stack([known[:1] + (unknown[:1] - known[:1]) * a for a in torch.linspace(0, 1, 6)])
    fig = latent_map(known, unknown, known[:1], unknown[:1], ["Ana Bel"], path=path)
    line = traces(fig)["path: Ana Bel"]
    assert len(line.x) == 6
    end = traces(fig)["targets after"]
    assert (line.x[-1], line.y[-1]) == pytest.approx((end.x[0], end.y[0]), abs=1e-4)
    with pytest.raises(ValueError, match="2 rows but there are 1 targets"):
        latent_map(known, unknown, known[:1], unknown[:2], ["Ana Bel"])


# Feature shift -------------------------------------------------------------------------------------


def test_feature_shift_ranks_by_absolute_change_and_colours_by_latent_kind(small_recognizer):
    before = torch.zeros(16)
    after = torch.zeros(16)
    before[0], after[0] = 2.0, 0.0  # a known-latent switches off
    after[4] = 3.0  # an unknown-latent switches on
    after[10] = -0.5  # an unrelated latent moves a little
    fig = feature_shift(before, after, small_recognizer, "Ana Bel", top_n=3)
    drawn = traces(fig)
    assert set(drawn) == {"known-latent", "unknown-latent", "other"}
    assert list(drawn["known-latent"].y) == ["latent 0"] and list(drawn["known-latent"].x) == [-2.0]
    assert list(drawn["unknown-latent"].x) == [3.0]
    assert list(fig.layout.yaxis.categoryarray) == ["latent 10", "latent 0", "latent 4"]  # biggest |Δ| on top
    s_known = small_recognizer.scores.set_index("latent").loc[0, "s_known"]
    assert drawn["known-latent"].customdata[0][2] == pytest.approx(s_known)
    assert "separation" in drawn["known-latent"].hovertemplate
    assert "Ana Bel" in fig.layout.title.text and fig.layout.xaxis.title.text.startswith("Δ activation")


# History -------------------------------------------------------------------------------------------


def test_history_has_loss_probe_and_distance_panels_and_marks_the_stop():
    fig = optimisation_history(history_frame(), stop_reason="flipped")
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == [
        "loss terms",
        "probe p_known per target",
        "distance to centroids per target (÷ ‖μ_U − μ_K‖²)",
    ]
    assert "stop: flipped (step 7)" in titles
    assert len(fig.data) == 4 + 2 * 2 + 2 * 2  # loss terms + (probe, distance) × 2 targets
    assert "Ana Bel: d(z, μ_U)" in traces(fig) and "Kor Vel: residual probe" in traces(fig)
    stops = [s for s in fig.layout.shapes if s.x0 == 7 and s.x1 == 7]
    thresholds = [s for s in fig.layout.shapes if s.y0 == 0.5 and s.y1 == 0.5]
    assert len(stops) == 3 and len(thresholds) == 1
    assert fig.layout.xaxis3.title.text == "step" and fig.layout.yaxis2.title.text == "p_known"


def test_history_leaves_out_panels_a_method_does_not_log():
    frame = history_frame().drop(columns=["dist_to_unknown", "dist_to_known", "p_known_resid"])
    fig = optimisation_history(frame)
    assert [a.text for a in fig.layout.annotations][:2] == ["loss terms", "probe p_known per target"]
    assert len(fig.data) == 4 + 2
    with pytest.raises(ValueError, match="empty"):
        optimisation_history(pd.DataFrame())


# Method comparison ---------------------------------------------------------------------------------


def comparison_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["sae_guided", "grad_ascent", "npo"],
            "forget_acc": [0.0, 0.1, 0.2],
            "forget_acc_std": [0.0, 0.05, 0.1],
            "retain_acc": [0.99, 0.8, 0.9],
            "idk_rate": [1.0, 0.0, 0.1],
            "probe_p_known_sae": [0.1, 0.9, 0.8],
            "probe_p_known_resid": [0.2, 0.9, 0.85],
            "ppl_ratio": [1.01, 1.4, 1.2],
            "repetition_rate": [0.0, 0.3, 0.1],
            "distinct2": [0.9, 0.4, 0.7],
        }
    )


def test_method_comparison_draws_three_panels_with_error_bars():
    fig = method_comparison(comparison_table())
    assert [a.text for a in fig.layout.annotations][:3] == [
        "forget vs retain",
        "probe p_known on targets",
        "generation health",
    ]
    drawn = traces(fig)
    assert list(drawn)[:3] == ["sae_guided", "grad_ascent", "npo"]
    assert list(drawn["grad_ascent"].error_x.array) == [0.05] and drawn["grad_ascent"].error_y.array is None
    assert list(drawn["probe_p_known_sae"].x) == ["sae_guided", "grad_ascent", "npo"]
    assert {"ppl_ratio", "repetition_rate", "distinct2"} <= set(drawn)
    bar_colors = [t.marker.color for t in fig.data if t.type == "bar"]
    method_colors = [t.marker.color for t in fig.data if t.type == "scatter"]
    assert len(set(bar_colors)) == len(bar_colors) == 5 and not set(bar_colors) & set(method_colors)
    assert any(s.y0 == 0.5 for s in fig.layout.shapes)
    assert fig.layout.xaxis.title.text == "forget_acc (↓)"


def test_method_comparison_tolerates_missing_columns_and_averages_repeated_methods():
    table = comparison_table()[["method", "probe_p_known_sae", "ppl_ratio"]]
    table = pd.concat([table, table.assign(probe_p_known_sae=0.0)])
    fig = method_comparison(table)
    assert [a.text for a in fig.layout.annotations][:2] == ["probe p_known on targets", "generation health"]
    assert list(traces(fig)["probe_p_known_sae"].y) == pytest.approx([0.05, 0.45, 0.4])
    with pytest.raises(ValueError, match="'method' column"):
        method_comparison(table.drop(columns="method"))
    with pytest.raises(ValueError, match="no comparable metrics"):
        method_comparison(table[["method"]])


# Recognition ---------------------------------------------------------------------------------------


def test_separation_bars_show_the_top_latents_in_order(small_recognizer):
    fig = separation_bars(small_recognizer)
    known, unknown = fig.data
    assert list(known.x) == ["latent 0", "latent 1"] and list(unknown.x) == ["latent 4", "latent 5"]
    assert list(known.y) == pytest.approx([1.0, 1.0]) and list(unknown.y) == pytest.approx([1.0, 1.0])
    assert list(known.customdata[0]) == pytest.approx([1.0, 0.0])  # fires on all known, no unknown
    assert fig.layout.yaxis.title.text == "s_known" and fig.layout.yaxis2.title.text == "s_unknown"


def test_probe_distributions_one_box_per_group_and_probe():
    readings = pd.DataFrame(
        {
            "entity": ["a", "b", "c", "d", "t"],
            "group": ["known", "known", "unknown", "unknown", "targets after sae_guided"],
            "p_known_sae": [0.9, 0.8, 0.1, 0.2, 0.3],
            "p_known_resid": [0.95, 0.7, 0.05, 0.3, 0.4],
        }
    )
    fig = probe_distributions(readings)
    assert len(fig.data) == 3 * 2
    assert [t.name for t in fig.data if t.showlegend] == ["known", "unknown", "targets after sae_guided"]
    assert sum(s.y0 == 0.5 for s in fig.layout.shapes) == 2
    with pytest.raises(ValueError, match="'group' column"):
        probe_distributions(readings.drop(columns="group"))


# Report --------------------------------------------------------------------------------------------


def test_write_report_inlines_plotly_once_and_writes_atomically(tmp_path, small_recognizer):
    figures = {
        "Separation": separation_bars(small_recognizer),
        "Methods compared": method_comparison(comparison_table()),
    }
    path = write_report(tmp_path / "report", figures, comparison_table(), "A <test> report")
    page = path.read_text()
    assert path.name == "index.html" and list(path.parent.iterdir()) == [path]
    assert page.count("Plotly.newPlot(") >= 2 and "<script src=" not in page
    assert page.count("plotly.js v") == 1  # the library's banner: inlined exactly once
    assert 'id="fig-0-separation"' in page and 'id="fig-1-methods-compared"' in page
    assert "A &lt;test&gt; report" in page and "<td>grad_ascent</td>" in page and "0.050" in page
    with pytest.raises(FileExistsError):
        write_report(tmp_path / "report", figures, None)
    write_report(tmp_path / "report", {"Only": separation_bars(small_recognizer)}, None, force=True)
    assert 'id="fig-1-' not in path.read_text() and "No metrics." in path.read_text()


def test_report_html_rejects_nothing_but_write_report_needs_figures(tmp_path):
    assert "<h1>empty</h1>" in report_html({}, None, "empty")
    with pytest.raises(ValueError, match="No figures"):
        write_report(tmp_path / "r", {}, None)


# On the embedded world ------------------------------------------------------------------------------


def test_mean_latents_average_the_templates_per_entity(ew):
    people = ew.world.known[:3]
    templates = ew.world.question_templates("train")[:4]
    means = mean_latents(ew.model, ew.sae, people, templates)
    acts = extract_activations(ew.model, ew.hook_name, people[1:2], templates, progress=False)
    assert means.shape == (3, ew.sae.cfg.d_sae)
    assert torch.allclose(means[1], encode_latents(ew.sae, acts.resid).mean(0), atol=1e-5)


def test_forgetting_figures_for_a_short_run(ew, recognizer):
    from irunlearn.methods import forget
    from irunlearn.world.tasks import resolve_targets, world_task

    task = world_task(ew, resolve_targets(ew, n_random=2, seed=5), recognizer)
    result = forget(ew.model, ew.sae, task, max_steps=3, progress=False)
    metrics = metrics_table([result], [{"forget_acc": 0.5, "retain_acc": 1.0}])
    assert metrics.loc[0, "targets"] == ", ".join(result.targets) and metrics.loc[0, "steps"] == result.steps
    figures = forgetting_figures(
        ew.model, ew.sae, recognizer, [result], ew.world.entities, metrics, n_cloud=20, max_targets=1
    )
    assert list(figures) == [
        "Recognition: known- and unknown-latents",
        "Recognition: probe p_known",
        "Latent map",
        "History: sae_guided",
        f"Feature shift: sae_guided, {result.targets[0]}",
        "Methods compared",
    ]
    boxes = {t.name for t in figures["Recognition: probe p_known"].data}
    assert boxes == {"known", "unknown", "targets before", "targets after sae_guided"}
    assert len([a for a in figures["Latent map"].layout.annotations if a.showarrow]) == 2
    assert len(traces(figures["Latent map"])["known people"].x) == 20
