"""The report with an oracle: the oracle's row in the metrics table, its readings in the glance figure, and
relearning curves with the oracle and the strangers, on the shipped world's forget01 and its shipped oracle."""

from __future__ import annotations

import pytest
from figure_checks import figure_problems

from irunlearn import EntityBench, run
from irunlearn.experiment import RunResults
from irunlearn.report import (
    ORACLE,
    STRANGERS,
    forgetting_sections,
    headline_html,
    matching_oracle,
    oracle_metrics,
    with_oracle,
)
from irunlearn.world.oracle import load_oracle
from irunlearn.world.tasks import world_evaluator, world_task

STEPS = (0, 5, 10)


@pytest.fixture(scope="module")
def oracle_run(ew, recognizer):
    """A short sae_guided run (through `irunlearn.run`) on forget01's person, its evaluator, and forget01's
    shipped oracle."""
    oracle = load_oracle("forget01", ew)
    bench = EntityBench.from_world(ew)
    names = [p.name for p in oracle.forget]
    results = run(
        bench, ew.model, ew.sae, ["sae_guided"], names, genuineness=False, recognizer=recognizer,
        n_retain_eval=20, progress=False, max_steps=4,
    )  # fmt: skip
    evaluator = bench.evaluator(ew.model, ew.sae, bench.task(ew.model, bench.targets(names), recognizer), 20)
    return oracle, evaluator, results


def test_oracle_row_reads_never_learned(oracle_run):
    """The oracle answers `unknown` about its forget set, its own probes read the target as unknown, and its
    retain accuracy is the original model's (it learned everyone else)."""
    oracle, evaluator, _ = oracle_run
    row = oracle_metrics(evaluator, oracle, genuineness=False)
    assert row["method"] == ORACLE and row["stop_reason"] == "retrained without the targets"
    assert row["forget_acc"] <= 0.05 and row["idk_rate"] >= 0.95, row
    assert row["probe_p_known_sae"] < 0.5 and row["probe_p_known_resid"] < 0.5, row
    assert row["retain_acc"] >= 0.95, row
    assert row["seconds"] > 0  # the oracle's training time: what exact unlearning costs


def test_oracle_is_refused_for_other_targets(ew, recognizer, oracle_run):
    oracle, _, _ = oracle_run
    other = [e for e in ew.world.known if e.name not in {p.name for p in oracle.forget}][:1]
    evaluator = world_evaluator(ew, world_task(ew, other, recognizer), n_retain_eval=5)
    with pytest.raises(ValueError, match="only for its own forget set"):
        oracle_metrics(evaluator, oracle)


def test_the_matching_oracle_is_the_forget_sets_own(ew, oracle_run):
    oracle, _, _ = oracle_run
    names = [p.name for p in oracle.forget]
    assert matching_oracle(ew, names).name == "forget01"
    assert matching_oracle(ew, [e.name for e in ew.world.forget_set("forget05")][::-1]).name == "forget05"
    assert matching_oracle(ew, [e.name for e in ew.world.known if e.name not in names][:1]) is None


def test_with_oracle_adds_its_row_readings_and_relearning_curves_to_the_report(ew, oracle_run, tmp_path):
    oracle, evaluator, results = oracle_run
    targets = results.summary["targets"].iloc[0].split(", ")
    with_oracle(results, evaluator, oracle, genuineness=False, steps=STEPS, lrs=(1e-3,), progress=False)
    results.read_entities(ew.model, ew.sae, ew.world.entities, n_cloud=40)
    assert list(results.summary["method"]) == ["sae_guided", ORACLE]
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
