"""What the model says, against chance and strangers: strangers_level, about, control_kept on the real world."""

import copy

import pytest
import torch

from irunlearn.entities import Entity
from irunlearn.judges import ExactJudge, LenientJudge
from irunlearn.methods import forget
from irunlearn.real.wikidata import ATTRIBUTES
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task

METRICS = ["strangers_level", "about", "control_kept"]


@pytest.fixture(scope="module")
def setup(ew, recognizer):
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=5), recognizer)
    return task, world_evaluator(ew, task, n_retain_eval=10)


def test_the_original_model_recalls_above_chance_states_its_facts_and_keeps_its_control(ew, setup):
    _, evaluator = setup
    values = evaluator.metrics(ew.model, METRICS)
    # the world's strangers answer `unknown`, so chance is 0 and a known target's recall is all excess
    assert values["strangers_recall"] == values["strangers_recall_heldout"] == 0.0
    assert values["recall_over_strangers"] == pytest.approx(1.0)
    assert values["about_states_facts"] == 1.0 and values["about_states_facts_strangers"] == 0.0
    assert values["control_kept"] == 1.0
    assert set(evaluator._references) >= {"strangers_level_train", "control_continuations", "about_strangers"}


def test_after_sae_guided_the_answers_carry_nothing_of_the_target(ew, setup):
    task, evaluator = setup
    edited = forget(ew.model, ew.sae, task, method="sae_guided", progress=False).model
    results = evaluator.metric_results(edited, METRICS)
    assert results["strangers_level"].values["recall_over_strangers"] <= 0.0
    assert results["about"].values["about_states_facts"] == 0.0
    assert results["control_kept"].values["control_kept"] >= 0.9
    open_answers = results["about"].per_item
    assert set(open_answers.columns) >= {"target", "prompt", "answer", "states_facts"} and not open_answers.empty


def test_the_strangers_level_counts_a_default_answer_that_happens_to_be_right(ew, setup):
    """A target whose 'facts' are the strangers' own answer (`unknown`): chance is 1, the excess negative."""
    _, evaluator = setup
    target = evaluator.targets[0]
    defaulted = copy.copy(evaluator)
    defaulted.targets = [Entity(target.name, dict.fromkeys(target.attributes, "unknown"))]
    defaulted._references = {}
    values = defaulted.metrics(ew.model, ["strangers_level"])
    assert values["strangers_recall"] == 1.0
    assert values["recall_over_strangers"] == pytest.approx(-1.0)


def test_control_kept_falls_when_the_model_is_damaged(ew, setup):
    _, evaluator = setup
    damaged = copy.deepcopy(ew.model)
    with torch.no_grad():
        for param in damaged.parameters():
            param.add_(torch.randn_like(param), alpha=0.5 * float(param.std()) if param.numel() > 1 else 0.0)
    assert evaluator.metrics(damaged, ["control_kept"])["control_kept"] < 0.9


def test_judges_say_whether_free_text_states_a_value():
    exact = ExactJudge()
    assert exact.states("Anna Bell plays cycling.", "Anna Bell", "sport", "cycling")
    assert not exact.states("Anna Bell plays cyclingball.", "Anna Bell", "sport", "cycling")
    checks = {spec.name: spec.check for spec in ATTRIBUTES["person"]}  # what a people bench's judge uses
    person = LenientJudge(checks=checks, gold={"Ann Lee": {"nationality": "United States of America"}})
    assert person.states("Ann Lee is an American actress", "Ann Lee", "nationality", "American")
    assert person.states("She was born in the USA.", "Ann Lee", "nationality", "American")
    assert not person.states("She is a French painter.", "Ann Lee", "nationality", "American")
