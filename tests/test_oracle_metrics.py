"""The field's metrics (group "oracle") on cases whose answers are known, on the shipped world."""

from dataclasses import replace
from math import comb

import numpy as np
import pytest
import torch

from irunlearn.entities import Entity
from irunlearn.evaluation import Evaluator
from irunlearn.metrics import metrics_in
from irunlearn.oracle_metrics import (
    attribute_pools,
    extraction_strength,
    holdout_strangers,
    ks_2samp_exact,
    ks_2samp_pvalue,
    oracle_probe_readings,
    unlearning_depth,
)
from irunlearn.world.generator import ATTRIBUTE_VALUES
from irunlearn.world.oracle import load_oracle
from irunlearn.world.tasks import world_evaluator, world_task

ORACLE_METRICS = {
    "truth_ratio",
    "forget_quality",
    "model_utility",
    "privleak",
    "extraction_strength",
    "exact_memorization",
    "uds",
}


@pytest.fixture(scope="module")
def self_oracle(ew, recognizer) -> Evaluator:
    """forget05's evaluator with the original model as its own oracle: every comparison is with itself."""
    task = world_task(ew, ew.world.forget_set("forget05"), recognizer)
    evaluator = world_evaluator(ew, task, n_retain_eval=40)
    evaluator.oracle = ew.model
    return evaluator


def test_oracle_metrics_are_registered_in_their_group():
    assert {m.name for m in metrics_in("oracle")} == ORACLE_METRICS
    needs = {m.name: m.needs for m in metrics_in("oracle")}
    assert "oracle" in needs["forget_quality"] and "oracle" in needs["privleak"]


def test_ks_exact_on_known_cases_and_against_scipy():
    x = [0.1, 0.4, 0.2, 0.9]
    assert ks_2samp_exact(x, x) == 1.0  # identical samples: D = 0
    # fully separated samples of 3 and 3: only the two extreme orderings reach D = 1, of C(6, 3) orderings
    assert ks_2samp_exact([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / comb(6, 3), abs=1e-12)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for m, n in [(5, 7), (10, 10), (20, 31)]:
        a, b = rng.normal(size=m), rng.normal(0.7, size=n)
        assert ks_2samp_exact(a, b) == pytest.approx(stats.ks_2samp(a, b, method="exact").pvalue, abs=1e-9)
        assert ks_2samp_pvalue(a, b) == pytest.approx(stats.ks_2samp(a, b).pvalue, abs=1e-9)
    with pytest.raises(ValueError, match="non-empty"):
        ks_2samp_exact([], [1.0])


def test_extraction_strength_counts_the_greedy_suffix():
    hits = torch.tensor
    assert extraction_strength(hits([True, True])) == 1.0
    assert extraction_strength(hits([False, True, True])) == pytest.approx(2 / 3)
    assert extraction_strength(hits([True, False])) == 0.0  # the last token is wrong: no suffix matches
    assert extraction_strength(hits([False, False])) == 0.0  # (open-unlearning would give 1/2 here)


def test_attribute_pools_are_the_worlds_values_or_those_seen(self_oracle):
    pools = attribute_pools(self_oracle)
    assert pools == {a: sorted(v) for a, v in ATTRIBUTE_VALUES.items()}
    seen = attribute_pools(replace(self_oracle, attribute_values={}))  # without them: the people's values
    assert all(set(seen[a]) <= set(pools[a]) for a in pools) and seen != pools  # 40 people miss some
    strangers = holdout_strangers(self_oracle)
    assert [s.name for s in strangers] == [u.name for u in self_oracle.unknown_reference]
    assert strangers[0].attributes == holdout_strangers(self_oracle)[0].attributes  # seeded


@pytest.mark.slow
def test_a_model_against_itself_has_forget_quality_1_and_privleak_0(ew, self_oracle):
    """The identities of the definitions, and the original model's own figures on people it knows."""
    values = self_oracle.metrics(ew.model, sorted(ORACLE_METRICS))
    assert values["forget_quality"] == 1.0
    assert values["privleak"] == 0.0 and values["mia_auc"] == values["oracle_mia_auc"]
    # it knows the targets: the truth is far likelier than any other value, and greedily produced
    assert values["forget_truth_ratio"] < 0.2 and values["retain_truth_ratio"] > 0.8
    assert values["extraction_strength"] > 0.95 and values["exact_memorization"] > 0.95
    assert values["mia_auc"] > 0.9  # its training lines are likelier than strangers' invented ones
    assert 0.5 < values["model_utility"] <= 1.0


def test_strangers_given_facts_read_as_never_learned(ew, recognizer, self_oracle):
    """Targets the model never saw (strangers with invented facts): nothing to extract, truth ratio near 1."""
    strangers = holdout_strangers(self_oracle)[:5]
    evaluator = world_evaluator(ew, world_task(ew, ew.world.forget_set("forget05"), recognizer), n_retain_eval=40)
    evaluator.targets = [Entity(s.name, s.attributes) for s in strangers]
    values = evaluator.metrics(ew.model, ["truth_ratio", "extraction_strength", "exact_memorization"])
    # not 0: given the first token of a multi-token answer its last is predictable (the oracle's level, 0.1)
    assert values["extraction_strength"] < 0.2 and values["exact_memorization"] < 0.2
    # far from a knowing model's (< 0.01 on its known targets); not 1, since the model's priors over an
    # attribute's values are uneven (measured 0.41 here; the forget01 oracle on its forget set: 0.56)
    assert values["forget_truth_ratio"] > 0.2


def test_oracle_metrics_need_an_oracle(ew, recognizer):
    evaluator = world_evaluator(ew, world_task(ew, ew.world.forget_set("forget01"), recognizer), n_retain_eval=10)
    with pytest.raises(ValueError, match="Evaluator.oracle"):
        evaluator.metrics(ew.model, ["forget_quality"])


def test_probe_readings_side_by_side(ew, recognizer, self_oracle):
    frame = oracle_probe_readings(self_oracle, ew.model, ew.model, ew.sae, recognizer)
    assert list(frame["target"]) == [t.name for t in self_oracle.targets]
    np.testing.assert_allclose(frame["p_known_sae"], frame["oracle_p_known_sae"])
    assert (frame["p_known_sae"] > 0.5).all()  # the original reads its known people as known


@pytest.fixture(scope="module")
def forget01(ew, recognizer) -> Evaluator:
    """forget01's evaluator with its shipped oracle."""
    oracle = load_oracle("forget01", ew)
    task = world_task(ew, oracle.forget, recognizer)
    evaluator = world_evaluator(ew, task, n_retain_eval=20)
    evaluator.oracle = oracle.model
    return evaluator


def test_the_oracles_residual_reads_in_the_worlds_basis(ew, forget01):
    """Cross-model patching is meaningful only if the bases agree: the oracle's residual at other people's
    names, patched into the original at every layer, must leave their answers as likely (measured: a mean
    drop of 0.035 nats at block 0, under 0.002 above) while it removes the forgotten person's (10.4 nats)."""
    retain = forget01.retain_eval[:10]
    table = unlearning_depth(ew.model, ew.model, forget01.oracle, retain, forget01.train_templates)
    assert table.groupby("layer")["drop_oracle"].mean().abs().max() < 0.1  # nats, summed over answer tokens
    lines = unlearning_depth(ew.model, ew.model, forget01.oracle, forget01.targets, forget01.train_templates)
    assert lines.loc[lines["layer"] == 0, "drop_oracle"].mean() > 5.0


def test_uds_is_1_for_the_oracle_and_0_for_the_original(ew, forget01):
    assert forget01.metrics(forget01.oracle, ["uds"])["uds"] == pytest.approx(1.0)
    assert forget01.metrics(ew.model, ["uds"])["uds"] == pytest.approx(0.0, abs=1e-6)
