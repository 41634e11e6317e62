"""The metric registry: built-in metrics are registered, outside code can add one, needs are checked first."""

import pytest

from irunlearn.evaluation import Evaluator
from irunlearn.metrics import METRICS, MetricResult, metric_table, register_metric
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task


@pytest.fixture(scope="module")
def evaluator(ew, recognizer) -> Evaluator:
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=5), recognizer)
    return world_evaluator(ew, task, n_retain_eval=10)


def test_builtin_genuineness_metrics_are_registered_with_their_columns():
    table = metric_table().set_index("metric")
    assert {"indistinguishability", "generation_health", "relearn"} <= set(table.index)
    assert table.loc["indistinguishability", "columns"] == "indistinguishability, indistinguishability_resid"
    assert table.loc["indistinguishability", "needs"] == "unknown_reference"
    assert all(table["description"].str.len() > 20)


def test_a_metric_registered_from_outside_runs_through_the_evaluator(ew, evaluator):
    @register_metric("target_name_words", group="test_custom", higher_is_better=None)
    def target_name_words(evaluator, model):
        """Words in each target's name."""
        return MetricResult({"target_name_words": float(len(evaluator.targets[0].name.split()))})

    try:
        values = evaluator.metrics(ew.model, ["target_name_words"])
        assert values == {"target_name_words": float(len(evaluator.targets[0].name.split()))}
    finally:
        del METRICS["target_name_words"]


def test_indistinguishability_of_the_original_model_is_low_for_a_known_target(ew, evaluator):
    """Before any edit, the probes tell a known target from strangers easily."""
    values = evaluator.metrics(ew.model, ["indistinguishability"])
    assert values["indistinguishability"] < 0.3
    assert values["indistinguishability_resid"] < 0.3


def test_a_metric_whose_needs_are_missing_fails_before_any_work(ew, evaluator):
    bare = Evaluator(
        model=ew.model,
        sae=ew.sae,
        recognizer=evaluator.recognizer,
        targets=evaluator.targets,
        retain_eval=evaluator.retain_eval[:2],
        train_templates=evaluator.train_templates,
        heldout_templates=evaluator.heldout_templates,
        generic_text=evaluator.generic_text[:4],
    )
    with pytest.raises(ValueError, match=r"'relearn' needs Evaluator.unknown_reference"):
        bare.metrics(ew.model, ["generation_health", "relearn"])
    with pytest.raises(ValueError, match="Unknown metric 'nope'"):
        bare.metrics(ew.model, ["nope"])


def test_evaluate_shows_its_phases_and_is_silent_without_progress(ew, evaluator, capsys):
    evaluator.evaluate(ew.model, genuineness=False, progress=True)
    assert "evaluating" in capsys.readouterr().err
    evaluator.evaluate(ew.model, genuineness=False)
    assert "evaluating" not in capsys.readouterr().err
