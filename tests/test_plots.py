"""Figures and the HTML report: what each figure draws, checked on constructed inputs and on the world."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from figure_checks import figure_problems

from irunlearn.activations import encode_latents, extract_activations
from irunlearn.plots import (
    LatentProjection,
    axis_position,
    feature_shift,
    genuineness_at_a_glance,
    latent_map,
    loss_series,
    mean_latents,
    method_color,
    method_comparison,
    optimisation_history,
    probe_distributions,
    separation_bars,
)
from irunlearn.probes import LinearProbe
from irunlearn.recognition import Recognizer, separation_scores
from irunlearn.report import (
    Section,
    forgetting_sections,
    format_value,
    glossary,
    headline_html,
    report_html,
    screenshot,
    write_report,
)


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


def test_axis_position_is_zero_at_mu_known_one_at_mu_unknown(clouds):
    _, _, mu_known, mu_unknown = clouds
    points = torch.stack([mu_known, mu_unknown, mu_known + 1.5 * (mu_unknown - mu_known)])
    assert axis_position(points, mu_known, mu_unknown).tolist() == pytest.approx([0.0, 1.0, 1.5], abs=1e-5)


def test_latent_map_draws_one_arrow_per_target_and_run_from_before_to_after(clouds):
    known, unknown, mu_known, mu_unknown = clouds
    before, names = known[:2], ["Ana Bel", "Kor Vel"]
    near_unknown = torch.stack([mu_known + 0.9 * (mu_unknown - mu_known)] * 2)
    fig = latent_map(
        known, unknown, before, {"sae_guided": near_unknown, "grad_ascent": known[2:4]}, names,
        mu_known=mu_known, mu_unknown=mu_unknown,
    )  # fmt: skip
    drawn = traces(fig)
    assert list(drawn) == [
        "known people", "strangers (unknown people)", "centroids μ_K, μ_U", "targets before",
        "targets after sae_guided", "targets after grad_ascent",
    ]  # fmt: skip
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 4
    start = drawn["targets before"]
    ends = ["targets after sae_guided"] * 2 + ["targets after grad_ascent"] * 2
    for arrow, end_trace, i in zip(arrows, ends, [0, 1, 0, 1], strict=True):
        assert (arrow.ax, arrow.ay) == pytest.approx((start.x[i], start.y[i]))
        assert (arrow.x, arrow.y) == pytest.approx((drawn[end_trace].x[i], drawn[end_trace].y[i]))
        assert arrow.axref == "x" and arrow.ayref == "y"  # tail in data coordinates, not pixels
    # centroids given: the centroid-axis projection by default, so "right" means "towards the strangers"
    assert "μ_K → μ_U" in fig.layout.xaxis.title.text
    assert list(drawn["targets before"].text) == names
    # the methods stay apart even on the same point: own symbol and colour, smaller than the before circle,
    # drawn after (on top of) it
    after_markers = [drawn[f"targets after {m}"].marker for m in ("sae_guided", "grad_ascent")]
    assert len({m.symbol for m in after_markers}) == 2 and len({m.color for m in after_markers}) == 2
    assert all(m.size < drawn["targets before"].marker.size for m in after_markers)
    assert list(drawn).index("targets before") < list(drawn).index("targets after grad_ascent")
    assert figure_problems(fig) == []
    assert not any("Past μ_U" in (a.text or "") for a in fig.layout.annotations)  # nobody overshoots here


def test_latent_map_notes_a_target_past_mu_unknown_and_keeps_pca_on_request(clouds):
    known, unknown, mu_known, mu_unknown = clouds
    beyond = (mu_known + 1.6 * (mu_unknown - mu_known))[None]
    fig = latent_map(known, unknown, known[:1], {"sae_guided": beyond}, ["Ana Bel"], mu_known=mu_known,
                     mu_unknown=mu_unknown)  # fmt: skip
    (note,) = [a.text for a in fig.layout.annotations if "Past μ_U" in (a.text or "")]
    assert "Ana Bel (sae_guided) at 1.60" in note
    pca = latent_map(known, unknown, known[:1], beyond, ["Ana Bel"], mu_known=mu_known, mu_unknown=mu_unknown,
                     projection="pca")  # fmt: skip
    assert pca.layout.xaxis.title.text.startswith("PC1")


def test_latent_map_draws_optimisation_paths_and_rejects_mismatched_rows(clouds):
    known, unknown, _, _ = clouds
    path = torch.stack([known[:1] + (unknown[:1] - known[:1]) * a for a in torch.linspace(0, 1, 6)])
    fig = latent_map(known, unknown, known[:1], unknown[:1], ["Ana Bel"], path=path)
    assert fig.layout.xaxis.title.text.startswith("PC1")  # no centroids: PCA
    line = traces(fig)["path: Ana Bel"]
    assert len(line.x) == 6
    end = traces(fig)["targets after"]
    assert (line.x[-1], line.y[-1]) == pytest.approx((end.x[0], end.y[0]), abs=1e-4)
    with pytest.raises(ValueError, match="2 rows but there are 1 targets"):
        latent_map(known, unknown, known[:1], unknown[:2], ["Ana Bel"])


# Genuineness at a glance -------------------------------------------------------------------------------


def glance_readings() -> pd.DataFrame:
    """Strangers at p = 0.00, 0.01, ..., 0.19 under every model; one target per model."""
    rows = []
    for model, target_p in (("original", 0.97), ("sae_guided", 0.05), ("grad_ascent", 0.9)):
        rows += [{"model": model, "role": "stranger", "entity": f"u{i}", "p_known_sae": i / 100,
                  "p_known_resid": i / 200} for i in range(20)]  # fmt: skip
        rows.append({"model": model, "role": "target", "entity": "Ana Bel", "p_known_sae": target_p,
                     "p_known_resid": target_p})  # fmt: skip
    return pd.DataFrame(rows)


def test_genuineness_at_a_glance_draws_the_strangers_band_and_each_target_per_model():
    readings = glance_readings()
    relearning = pd.DataFrame(
        {"method": ["sae_guided", "grad_ascent"], "relearn_acc": [0.1, 0.7], "relearn_acc_unknown_ref": [0.08, 0.08]}
    )
    fig = genuineness_at_a_glance(readings, relearning)
    assert [a.text for a in fig.layout.annotations][:3] == ["SAE probe p_known", "residual probe p_known", "relearning"]
    band = next(t for t in fig.data if t.name.startswith("strangers' 5%–95%") and t.xaxis == "x")
    strangers = pd.Series([i / 100 for i in range(20)])
    assert list(band.y) == ["original", "sae_guided", "grad_ascent"]
    assert band.base[0] == pytest.approx(strangers.quantile(0.05))
    assert band.base[0] + band.x[0] == pytest.approx(strangers.quantile(0.95))
    targets = next(t for t in fig.data if t.name == "targets" and t.xaxis == "x2")
    assert list(targets.x) == [0.97, 0.05, 0.9] and list(targets.y) == ["original", "sae_guided", "grad_ascent"]
    bars = {t.name: t for t in fig.data if t.xaxis == "x3"}
    assert list(bars["relearned: targets"].x) == [0.1, 0.7]
    assert list(bars["relearned: strangers given the same facts"].x) == [0.08, 0.08]
    assert fig.layout.yaxis.autorange == "reversed"  # the original row on top
    assert figure_problems(fig) == []
    with pytest.raises(ValueError, match="'model', 'role'"):
        genuineness_at_a_glance(readings.drop(columns="role"))


def test_genuineness_at_a_glance_draws_relearning_curves_and_an_oracle_row_when_given():
    readings = pd.concat([glance_readings(), glance_readings().query("model == 'sae_guided'").assign(model="oracle")])
    curves = pd.DataFrame(
        {
            "method": ["sae_guided", "oracle"],
            "relearn_b_recall_k0": [0.0, 0.0],
            "relearn_b_recall_k25": [0.3, 0.1],
            "relearn_b_recall_k5": [0.1, 0.05],
        }
    )
    fig = genuineness_at_a_glance(readings, curves)
    assert list(fig.layout.yaxis.categoryarray) == ["original", "sae_guided", "grad_ascent", "oracle"]
    lines = {t.name: t for t in fig.data if t.xaxis == "x3"}
    assert set(lines) == {"sae_guided: b", "oracle: b"}
    assert list(lines["sae_guided: b"].x) == [0, 5, 25] and list(lines["sae_guided: b"].y) == [0.0, 0.1, 0.3]
    assert fig.layout.xaxis3.title.text == "relearning step"
    assert figure_problems(fig) == []


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


def test_history_has_a_loss_panel_and_one_column_of_panels_per_target_and_marks_the_stop():
    fig = optimisation_history(history_frame(), stop_reason="flipped")
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:5] == [
        "loss terms (shared by all targets)",
        "Ana Bel: p_known and stop criteria",
        "Kor Vel: p_known and stop criteria",
        "Ana Bel: distance to centroids",
        "Kor Vel: distance to centroids",
    ]
    assert "stop: flipped (step 7)" in titles
    # the loss terms span three orders of magnitude: log axis, zeros left out
    assert fig.layout.yaxis.type == "log" and "log" in fig.layout.yaxis.title.text
    losses = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in losses] == ["loss", "loss_forget", "loss_act", "loss_lm"]
    assert pd.isna(losses[3].y[0]) and losses[3].y[1] == pytest.approx(0.001)
    # one colour per quantity, the same in every target's panel, and one legend entry each
    per_target = [t for t in fig.data if t.xaxis != "x"]
    assert len(per_target) == 2 * 2 + 2 * 2
    colours = {}
    for trace in per_target:
        assert colours.setdefault(trace.name, trace.line.color) == trace.line.color
    assert len(set(colours.values())) == len(colours) == 4
    assert not set(colours.values()) & {t.line.color for t in losses}
    assert figure_problems(fig) == []
    stops = [s for s in fig.layout.shapes if s.x0 == 7 and s.x1 == 7]
    assert len(stops) == 5  # the loss panel and each target's two panels


def test_history_shows_a_single_loss_term_once_and_plots_the_suppression_stop_criterion():
    frame = history_frame().drop(columns=["dist_to_unknown", "dist_to_known", "loss_act", "loss_lm"])
    frame["loss"] = -frame["step"] * 2.0  # grad_ascent: the total is its one term, and negative
    frame["loss_forget"] = frame["loss"]
    frame["forget_acc_train"] = (1 - frame["step"] / 7).clip(lower=0)
    fig = optimisation_history(frame, "suppressed", stop_threshold=0.05)
    losses = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in losses] == ["loss = loss_forget"] and fig.layout.yaxis.type == "linear"
    assert "forget_acc_train (stop criterion)" in traces(fig)
    assert any(s.y0 == 0.05 and s.y1 == 0.05 for s in fig.layout.shapes)
    assert [a.text for a in fig.layout.annotations][1:3] == [
        "Ana Bel: p_known and stop criteria",
        "Kor Vel: p_known and stop criteria",
    ]
    assert figure_problems(fig) == []
    with pytest.raises(ValueError, match="empty"):
        optimisation_history(pd.DataFrame())


def test_history_keeps_a_legend_entry_when_the_first_target_logged_nothing_of_a_quantity():
    frame = history_frame()
    frame.loc[frame["target"] == "Ana Bel", "dist_to_known"] = float("nan")
    fig = optimisation_history(frame)
    drawn = [t for t in fig.data if t.xaxis != "x"]
    labelled = [t.name for t in drawn if t.showlegend is not False]
    assert sorted(labelled) == sorted({t.name for t in drawn})  # every quantity once in the legend
    assert figure_problems(fig) == []


def test_loss_series_merges_identical_terms():
    per_step = pd.DataFrame({"loss": [1.0, 0.5], "loss_forget": [1.0, 0.5], "loss_lm": [0.1, 0.2]})
    assert list(loss_series(per_step)) == ["loss = loss_forget", "loss_lm"]


def test_history_facets_at_most_max_targets_and_says_so():
    frame = history_frame(targets=("A a", "B b", "C c"))
    fig = optimisation_history(frame, max_targets=2)
    assert "(first 2 of 3 targets)" in fig.layout.title.text
    assert not any("C c" in (a.text or "") for a in fig.layout.annotations)


# Method comparison ---------------------------------------------------------------------------------


def comparison_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["sae_guided", "grad_ascent", "npo"],
            "forget_acc": [0.0, 0.0, 0.2],
            "forget_acc_std": [0.0, 0.05, 0.1],
            "retain_acc": [0.99, 0.8, 0.9],
            "idk_rate": [1.0, 0.0, 0.1],
            "probe_p_known_sae": [0.1, 0.9, 0.8],
            "probe_p_known_resid": [0.2, 0.9, 0.85],
            "indistinguishability": [0.9, 0.1, 0.2],
            "indistinguishability_resid": [0.8, 0.0, 0.1],
            "relearn_acc": [0.1, 0.8, 0.7],
            "relearn_acc_unknown_ref": [0.08, 0.08, 0.08],
            "ppl_ratio": [1.01, 1.03, 0.99],
            "repetition_rate": [0.0, 0.3, 0.1],
            "distinct2": [0.9, 0.4, 0.7],
            "generation_health": [1.0, 0.5, 0.8],
        }
    )


def test_method_comparison_separates_methods_on_forgetting_and_genuineness_axes():
    fig = method_comparison(comparison_table())
    assert [a.text for a in fig.layout.annotations][:4] == [
        "forget vs retain",
        "indistinguishability vs relearning",
        "perplexity ratio",
        "generation health",
    ]
    first = [t for t in fig.data if t.xaxis == "x"]
    assert [t.name for t in first] == ["sae_guided", "grad_ascent", "npo"]
    assert list(first[1].error_x.array) == [0.05] and first[1].error_y.array is None
    assert all(t.cliponaxis is False for t in first)  # labels at forget_acc 0 are not cut
    assert fig.layout.xaxis.range[0] < 0 and fig.layout.xaxis.range[1] > 1
    genuine = [t for t in fig.data if t.xaxis == "x2"]
    assert list(genuine[0].x) == [0.9, 0.8] and list(genuine[0].y) == [0.1, 0.1]  # SAE and residual probe
    assert any(s.y0 == pytest.approx(0.08) and s.yref == "y2" for s in fig.layout.shapes)  # strangers' relearning
    # perplexity on its own axis around 1, so a 3 % change is visible
    low, high = fig.layout.yaxis3.range
    assert 0.9 < low < 0.99 and 1.03 < high < 1.1
    assert {t.name for t in fig.data if t.type == "bar"} == {"generation_health ↑", "repetition_rate ↓"}
    assert [t.marker.color for t in first] == [method_color(i) for i in range(3)]
    assert figure_problems(fig) == []


def test_method_comparison_tolerates_missing_columns_and_averages_repeated_methods():
    table = comparison_table()[["method", "forget_acc", "retain_acc", "ppl_ratio"]]
    table = pd.concat([table, table.assign(retain_acc=1.0)])
    fig = method_comparison(table)
    assert [a.text for a in fig.layout.annotations][:2] == ["forget vs retain", "perplexity ratio"]
    forget_retain = {t.name: t for t in fig.data if t.xaxis == "x"}
    assert forget_retain["grad_ascent"].y[0] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="'method' column"):
        method_comparison(table.drop(columns="method"))
    with pytest.raises(ValueError, match="no comparable metrics"):
        method_comparison(table[["method"]])


# Recognition ---------------------------------------------------------------------------------------


def test_separation_bars_show_the_top_latents_in_order(small_recognizer):
    fig = separation_bars(small_recognizer)
    known, unknown = fig.data
    assert list(known.x) == ["0", "1"] and list(unknown.x) == ["4", "5"]
    assert fig.layout.xaxis.type == "category"  # latent numbers as labels, not a numeric axis
    assert list(known.y) == pytest.approx([1.0, 1.0]) and list(unknown.y) == pytest.approx([1.0, 1.0])
    assert list(known.customdata[0]) == pytest.approx([1.0, 0.0])  # fires on all known, no unknown
    assert fig.layout.yaxis.title.text == "s_known" and fig.layout.yaxis2.title.text == "s_unknown"
    assert figure_problems(fig) == []


def test_probe_distributions_draw_boxes_for_groups_points_for_a_single_target_and_the_strangers_level():
    readings = pd.DataFrame(
        {
            "entity": [f"k{i}" for i in range(6)] + [f"u{i}" for i in range(6)] + ["t"],
            "group": ["known"] * 6 + ["unknown"] * 6 + ["after sae_guided"],
            "p_known_sae": [0.9, 0.8, 0.95, 0.85, 0.9, 0.99] + [0.1, 0.2, 0.0, 0.05, 0.1, 0.3] + [0.3],
            "p_known_resid": [0.95, 0.7, 0.9, 0.9, 0.9, 0.9] + [0.05, 0.3, 0.1, 0.1, 0.1, 0.1] + [0.4],
        }
    )
    fig = probe_distributions(readings, colors={"after sae_guided": "#123456"})
    assert len(fig.data) == 3 * 2
    assert [t.name for t in fig.data if t.showlegend] == ["known", "unknown", "after sae_guided"]
    assert [t.type for t in fig.data[:6:2]] == ["box", "box", "scatter"]  # one target: points, not a box
    assert fig.data[4].marker.color == "#123456"
    assert sum(s.y0 == 0.5 for s in fig.layout.shapes) == 2
    levels = [s.y0 for s in fig.layout.shapes if s.line.color == "#FF7F0E"]
    assert levels == pytest.approx([0.1, 0.1])  # the strangers' median, per probe
    assert fig.layout.xaxis.tickangle == 0 and figure_problems(fig) == []
    with pytest.raises(ValueError, match="'group' column"):
        probe_distributions(readings.drop(columns="group"))


# Report --------------------------------------------------------------------------------------------


def test_format_value_gives_three_significant_digits():
    values = [0.99642, 0.0002, 0.0, 25, 1.0, 4.8123, 1234.5, float("nan"), None, "flipped"]
    formatted = ["0.996", "<0.001", "0", "25", "1", "4.81", "1.23e+03", "–", "–", "flipped"]
    assert [format_value(v) for v in values] == formatted


def test_glossary_defines_core_registered_and_unknown_columns_with_directions():
    terms = glossary(["forget_acc", "ppl_ratio", "indistinguishability", "relearn_acc", "repetition_rate", "mine"])
    rows = terms.set_index("column")
    assert rows.loc["forget_acc", "direction"] == "↓ lower is better" and rows.loc["forget_acc", "genuine forget"]
    assert rows.loc["ppl_ratio", "direction"].startswith("→")
    assert rows.loc["indistinguishability", "direction"].startswith("↑")
    assert rows.loc["indistinguishability", "source"] == "metric 'indistinguishability'"
    assert "AUROC" in rows.loc["indistinguishability", "meaning"]  # from the metric's own docstring
    assert rows.loc["relearn_acc", "direction"].startswith("→")  # higher_is_better=None: at a reference
    assert rows.loc["repetition_rate", "direction"].startswith("↓")
    assert rows.loc["mine", "meaning"].startswith("not described")


def test_headline_table_marks_directions_and_shows_relearning_against_strangers():
    table = metrics_frame()
    page = headline_html(table)
    for heading in ("forget ↓", "idk ↑", "retain ↑", "p_known SAE ↓", "indist. resid ↑", "relearn (strangers) →",
                    "ppl ratio →", "steps ↓", "seconds ↓"):  # fmt: skip
        assert f">{heading}</th>" in page, heading
    assert "<td>0.8 (0.08)</td>" in page and "<td>1.03</td>" in page
    assert 'title="forget_acc: ' in page  # the heading's tooltip is its glossary line


def metrics_frame() -> pd.DataFrame:
    return comparison_table().assign(targets="Ana Bel", stop_reason="flipped", steps=[7, 25, 14], seconds=2.5)


def test_write_report_has_headline_sortable_table_glossary_and_provenance(tmp_path, small_recognizer):
    sections = {
        "Separation": Section(separation_bars(small_recognizer), "Best known-latent: latent 0."),
        "Methods compared": method_comparison(comparison_table()),
    }
    path = write_report(tmp_path / "report", sections, metrics_frame(), "A <test> report", provenance={"seeds": "0"})
    page = path.read_text()
    assert path.name == "index.html" and list(path.parent.iterdir()) == [path]
    assert page.count("Plotly.newPlot(") >= 2 and "<script src=" not in page
    assert page.count("plotly.js v") == 1  # the library's banner: inlined exactly once
    assert 'id="fig-0-separation"' in page and 'id="fig-1-methods-compared"' in page
    assert '<p class="caption">Best known-latent: latent 0.</p>' in page
    assert "A &lt;test&gt; report" in page
    assert page.index('id="headline"') < page.index('id="fig-0-separation"') < page.index('id="full-table"')
    assert '<table class="sortable metrics" id="full-table">' in page and "addEventListener" in page
    assert 'data-value="grad_ascent"' in page and 'data-value="0.05"' in page
    assert 'id="glossary"' in page and "<td>relearn_acc_unknown_ref</td>" in page
    assert 'id="provenance"' in page and "<code>0</code>" in page
    with pytest.raises(FileExistsError):
        write_report(tmp_path / "report", sections, None)
    write_report(tmp_path / "report", {"Only": separation_bars(small_recognizer)}, None, force=True)
    page = path.read_text()
    assert 'id="fig-1-' not in page and "No metrics." in page and 'id="provenance"' not in page


def test_report_html_rejects_nothing_but_write_report_needs_figures(tmp_path):
    assert "<h1>empty</h1>" in report_html({}, None, "empty")
    with pytest.raises(ValueError, match="No figures"):
        write_report(tmp_path / "r", {}, None)


def test_screenshot_without_chromium_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    page = write_report(tmp_path / "r", {"Only": go.Figure()}, None)
    monkeypatch.setattr("irunlearn.report.find_chromium", lambda: None)
    assert screenshot(page, tmp_path / "shot.png") is None
    assert "no chromium" in capsys.readouterr().err and not (tmp_path / "shot.png").exists()
    with pytest.raises(FileNotFoundError, match="irunlearn report"):
        screenshot(tmp_path / "missing.html", tmp_path / "shot.png")


# On the embedded world ------------------------------------------------------------------------------


def test_mean_latents_average_the_templates_per_entity(ew):
    people = ew.world.known[:3]
    templates = ew.world.question_templates("train")[:4]
    means = mean_latents(ew.model, ew.sae, people, templates)
    acts = extract_activations(ew.model, ew.hook_name, people[1:2], templates, progress=False)
    assert means.shape == (3, ew.sae.cfg.d_sae)
    assert torch.allclose(means[1], encode_latents(ew.sae, acts.resid).mean(0), atol=1e-5)


@pytest.fixture(scope="module")
def short_runs(ew, recognizer):
    """Three-step sae_guided and grad_ascent runs on two people (20 retain people), without their readings."""
    import irunlearn
    from irunlearn.bench import EntityBench

    bench = EntityBench.from_world(ew)
    targets = [t.name for t in bench.targets(n_random=2, seed=5)]
    return irunlearn.run(
        bench, ew.model, ew.sae, ["sae_guided", "grad_ascent"], targets, genuineness=False,
        recognizer=recognizer, n_retain_eval=20, progress=False, max_steps=3,
    )  # fmt: skip


def test_forgetting_sections_for_short_runs(ew, recognizer, short_runs, capsys):
    short_runs.read_entities(ew.model, ew.sae, ew.world.entities, n_cloud=20, progress=True)
    results = list(short_runs.edits.values())
    sections = forgetting_sections(short_runs, max_targets=1)
    assert "reading entities" in capsys.readouterr().err
    first = results[0].targets[0]
    assert list(sections) == [
        "Genuineness at a glance",
        "Latent map",
        "Methods compared",
        "Recognition: probe p_known",
        "History: sae_guided",
        f"Feature shift: sae_guided, {first}",
        "History: grad_ascent",
        f"Feature shift: grad_ascent, {first}",
        "Recognition: known- and unknown-latents",
    ]
    for name, section in sections.items():
        assert figure_problems(section.figure) == [], name
        assert section.caption, name
    assert all(m in sections["Genuineness at a glance"].caption for m in ("sae_guided", "grad_ascent"))
    # the glance figure's "before" targets are the recognizer's own reading of them on the original model
    glance = sections["Genuineness at a glance"].figure
    targets = next(t for t in glance.data if t.name == "targets" and t.xaxis == "x")
    before = [x for x, y in zip(targets.x, targets.y, strict=True) if y == "original (before)"]
    assert before == pytest.approx(recognizer.p_known(ew.model, ew.sae, results[0].targets)["p_known_sae"].tolist())
    points = {t.name for t in sections["Recognition: probe p_known"].figure.data}
    assert points == {"known", "unknown", "targets before", "after sae_guided", "after grad_ascent"}
    latent = sections["Latent map"].figure
    assert len([a for a in latent.layout.annotations if a.showarrow]) == 2 * 2
    assert len(traces(latent)["known people"].x) == 20
    assert "forget_acc_train (stop criterion)" in traces(sections["History: grad_ascent"].figure)
