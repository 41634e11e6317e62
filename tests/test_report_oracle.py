"""The run and report with an oracle: `run(oracle=..., baselines=[...])` gives the original's and the
oracle's rows, the oracle's readings and the per-item values of extra metrics; the report draws them with
relearning curves, on the shipped world's forget01 and its shipped oracle."""

from __future__ import annotations

import pytest
from figure_checks import figure_problems

from irunlearn import EntityBench, run
from irunlearn.experiment import ORACLE, ORIGINAL, RunResults
from irunlearn.report import (
    STRANGERS,
    forgetting_sections,
    headline_html,
    matching_oracle,
    relearning_curves,
)
from irunlearn.world.oracle import load_oracle

STEPS = (0, 5, 10)


@pytest.fixture(scope="module")
def oracle_run(ew, recognizer):
    """A short sae_guided run on forget01's person with forget01's shipped oracle, both baselines and two
    extra metrics, and its evaluator."""
    oracle = load_oracle("forget01", ew)
    bench = EntityBench.from_world(ew)
    names = [p.name for p in oracle.forget]
    seen: list[dict] = []
    results = run(
        bench, ew.model, ew.sae, ["sae_guided"], names, genuineness=False, recognizer=recognizer,
        n_retain_eval=20, progress=False, max_steps=4, oracle=oracle, baselines=[ORIGINAL, ORACLE],
        metrics=["forget_quality", "key_restoration"], on_row=seen.append,
    )  # fmt: skip
    assert [row["run"] for row in seen] == list(results.summary["run"])  # each row as it was made
    evaluator = bench.evaluator(ew.model, ew.sae, bench.task(ew.model, bench.targets(names), recognizer), 20)
    return oracle, evaluator, results


def test_the_baseline_rows_come_first_and_read_as_they_must(oracle_run):
    """The original knows the target (its own probes, its answers); the oracle answers `unknown`, its own
    probes read the target as unknown, its retain is the original's, and its forget quality against
    itself is 1 by construction."""
    oracle, _, results = oracle_run
    rows = results.summary.set_index("method")
    assert list(rows.index) == [ORIGINAL, ORACLE, "sae_guided"]
    original, own = rows.loc[ORIGINAL], rows.loc[ORACLE]
    assert original["stop_reason"] == "unedited" and original["forget_acc"] >= 0.95, original
    assert original["probe_p_known_sae"] > 0.5 and original["key_restoration"] == 1.0
    assert own["stop_reason"] == "retrained without the targets" and own["seconds"] > 0  # what retraining costs
    assert own["forget_acc"] <= 0.05 and own["idk_rate"] >= 0.95, own
    assert own["probe_p_known_sae"] < 0.5 and own["probe_p_known_resid"] < 0.5, own
    assert own["retain_acc"] >= 0.95 and own["forget_quality"] == 1.0, own
    # every row carries the oracle's own probes reading the same names
    assert (rows["oracle_p_known_sae"] == own["probe_p_known_sae"]).all()
    assert results.provenance["oracle"]["name"] == "forget01"


def test_extra_metrics_keep_their_per_item_values(oracle_run, tmp_path):
    _, _, results = oracle_run
    items = results.items["key_restoration"]
    assert set(items["run"]) == set(results.summary["run"])
    per_run = items.groupby(["run", "layer"])["restored"].mean().groupby("run").max()
    assert per_run.to_dict() == results.summary.set_index("run")["key_restoration"].to_dict()
    saved = RunResults.load(results.save(tmp_path / "run"))
    assert set(saved.items) == set(results.items) == {"forget_quality", "key_restoration"}
    assert saved.items["key_restoration"].equals(items)


def test_an_oracle_is_refused_for_other_targets_and_oracle_metrics_without_one(ew, recognizer, oracle_run):
    oracle, _, _ = oracle_run
    bench = EntityBench.from_world(ew)
    other = [e.name for e in ew.world.known if e.name not in {p.name for p in oracle.forget}][:1]
    with pytest.raises(ValueError, match="only for its own forget set"):
        run(bench, ew.model, ew.sae, ["sae_guided"], other, recognizer=recognizer, oracle=oracle, progress=False)
    with pytest.raises(ValueError, match="need an oracle"):
        run(bench, ew.model, ew.sae, ["sae_guided"], other, recognizer=recognizer, metrics=["forget_quality"])
    with pytest.raises(ValueError, match="Nothing to run"):
        run(bench, ew.model, ew.sae, [], other, recognizer=recognizer, progress=False)
    with pytest.raises(ValueError, match="Unknown baseline"):
        run(bench, ew.model, ew.sae, [], other, recognizer=recognizer, baselines=["retrained"], progress=False)


def test_the_matching_oracle_is_the_forget_sets_own(ew, oracle_run):
    oracle, _, _ = oracle_run
    names = [p.name for p in oracle.forget]
    assert matching_oracle(ew, names).name == "forget01"
    assert matching_oracle(ew, [e.name for e in ew.world.forget_set("forget05")][::-1]).name == "forget05"
    assert matching_oracle(ew, [e.name for e in ew.world.known if e.name not in names][:1]) is None


def test_the_report_draws_the_oracle_row_readings_and_relearning_curves(ew, oracle_run, tmp_path):
    oracle, evaluator, results = oracle_run
    targets = results.summary["targets"].iloc[0].split(", ")
    edits = {r.method: r.model for r in results.edits.values()}
    results.relearning = relearning_curves(evaluator, edits | {ORACLE: oracle.model}, steps=STEPS, lrs=(1e-3,))
    results.read_entities(ew.model, ew.sae, ew.world.entities, n_cloud=40)
    assert '<td class="text">oracle</td>' in headline_html(results.summary)

    curves = results.relearning
    assert list(curves["method"]) == ["sae_guided", ORACLE, STRANGERS]
    assert [c for c in curves.columns if c != "method"] == [f"relearn_half_recall_k{k}" for k in STEPS]
    start = curves.set_index("method")["relearn_half_recall_k0"]
    assert start[ORACLE] == 0.0 and start[STRANGERS] == 0.0  # never learned: nothing to recall before relearning

    probes = results.oracle_probes
    strangers = [u.name for u in evaluator.unknown_reference]
    assert list(probes["role"]) == ["target"] + ["stranger"] * len(strangers)
    assert set(probes["model"]) == {ORACLE} and list(probes["entity"]) == targets + strangers

    saved = RunResults.load(results.save(tmp_path / "run"))  # the report draws them from the folder alone
    assert saved.relearning.equals(curves) and list(saved.oracle_probes["entity"]) == list(probes["entity"])
    sections = forgetting_sections(saved)
    glance = sections["Genuineness at a glance"]
    assert list(glance.figure.layout.yaxis.categoryarray) == ["original (before)", "sae_guided", ORACLE]
    lines = {t.name for t in glance.figure.data if t.xaxis == "x3"}
    assert lines == {"sae_guided: half", f"{ORACLE}: half", f"{STRANGERS}: half"}
    assert "oracle (retrained without them) reads the target" in glance.caption
    assert f"after {STEPS[-1]} steps" in glance.caption
    compared = {t.name for t in sections["Methods compared"].figure.data}
    assert {"sae_guided", ORACLE} <= compared
    for name, section in sections.items():
        assert figure_problems(section.figure) == [], name
