"""Each baseline works as a baseline: on one embedded-world target it lowers forget_acc."""

import dataclasses
import warnings

import pytest
import torch

from irunlearn.entities import Entity
from irunlearn.judges import Judge
from irunlearn.methods import forget
from irunlearn.methods.base import StillKnownWarning, UnlearnResult
from irunlearn.methods.grad_ascent import GradAscent, GradAscentConfig
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task


@pytest.fixture(scope="module")
def setting(ew, recognizer):
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=3), recognizer)
    evaluator = world_evaluator(ew, task, n_retain_eval=40)
    before, _ = evaluator.evaluate(ew.model)
    return task, evaluator, before


@pytest.mark.parametrize("method", ["grad_ascent", "grad_diff", "npo", "rmu"])
def test_weight_editing_baseline_lowers_forget_acc(ew, setting, method):
    task, evaluator, before = setting
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = forget(ew.model, ew.sae, task, method=method, progress=False)
    # answers gone is suppression; forgotten also needs both probes to read the target as unknown
    assert result.stop_reason in ("suppressed", "still_known"), result.history.tail()
    assert result.converged == result.still_known.empty
    assert (result.stop_reason == "still_known") == any(issubclass(w.category, StillKnownWarning) for w in caught)
    after, _ = evaluator.evaluate(result.model)
    assert before["forget_acc"] >= 0.9
    assert after["forget_acc"] <= 0.05


def test_sae_steer_lowers_forget_acc(ew, setting):
    task, evaluator, before = setting
    result = forget(ew.model, ew.sae, task, method="sae_steer", progress=False)
    after, _ = evaluator.evaluate(result.model)
    assert before["forget_acc"] >= 0.9
    assert after["forget_acc"] <= 0.05
    assert after["retain_acc"] == 1.0  # the hooks only fire in texts that name the target


def test_sae_steer_at_the_name_tokens_only_changes_no_answer(ew, setting):
    """By the SAE's layer the question tokens already hold the facts: steering the name alone is not enough."""
    task, evaluator, before = setting
    result = forget(ew.model, ew.sae, task, method="sae_steer", positions="name", progress=False)
    after, _ = evaluator.evaluate(result.model)
    assert after["forget_acc"] == before["forget_acc"]
    assert after["probe_p_known_sae"] < 0.5  # while the probe at the hook reads the target as unknown


def test_sae_steer_is_inference_only(ew, setting):
    task, evaluator, _ = setting
    result: UnlearnResult = forget(ew.model, ew.sae, task, method="sae_steer", progress=False)
    assert not result.persistent and result.steps == 0
    readings = task.recognizer.p_known(result.model, ew.sae, [t.name for t in task.targets])
    assert (readings["p_known_sae"] < 0.5).all()  # the hooked model reads the target as unknown at the hook
    base = {n: p for n, p in ew.model.named_parameters()}
    assert all((p == base[n]).all() for n, p in result.model.named_parameters())  # no weight changed


def test_sae_steer_generates_with_its_hooks_on_every_token(ew, setting):
    """`generate` embeds the prompt once, so a hooked model is decoded by full forward passes: the steered
    continuation is what a step-by-step argmax over the whole sequence gives (and differs from the original's)."""
    from irunlearn.qa import greedy_token_ids

    task, _, _ = setting
    steered = forget(ew.model, ew.sae, task, method="sae_steer", progress=False).model
    prompt = f"Fact: {task.targets[0].name}"
    tokens = steered.to_tokens(prompt)
    for _ in range(6):
        tokens = torch.cat([tokens, steered(tokens)[:, -1:].argmax(-1)], dim=1)
    expected = tokens[0, -6:].tolist()
    eos = ew.tokenizer.eos_token_id
    got = greedy_token_ids(steered, [prompt], max_new_tokens=6, stop_ids=[eos], progress=False)[0]
    assert got == expected[: expected.index(eos)] if eos in expected else got == expected
    assert got != greedy_token_ids(ew.model, [prompt], max_new_tokens=6, stop_ids=[eos], progress=False)[0]


def test_lora_and_attention_windows_edit_only_what_they_name(ew, setting):
    task, _, _ = setting
    result = forget(ew.model, ew.sae, task, max_steps=3, layers=(1,), train_attn=True, lora_rank=4, progress=False)
    base = dict(ew.model.named_parameters())
    changed = {n for n, p in result.model.named_parameters() if not (p == base[n]).all()}
    assert changed and all(n.startswith("blocks.1.") for n in changed), changed
    assert any(".attn." in n for n in changed) and any(".mlp." in n for n in changed)
    with pytest.raises(ValueError, match="layers must be"):
        forget(ew.model, ew.sae, task, layers=(7,), progress=False)


def test_suppression_stops_on_the_judged_answer_not_on_the_gold_tokens(ew, setting):
    """As a model that answers "United Kingdom" for "England": the gold's exact tokens are gone, the answer
    is still right, so with an answer judge the baseline is not done."""
    task, _, _ = setting
    reworded = [Entity(t.name, {a: "a phrasing the model never uses" for a in t.attributes}) for t in task.targets]

    class AlwaysRight(Judge):
        name = "always_right"

        def correct(self, model, questions, prepend_bos):
            return torch.ones(len(questions), dtype=torch.bool)

    for judge, done in ((None, True), (AlwaysRight(), False)):
        method = GradAscent(dataclasses.replace(task, targets=reworded, answer_judge=judge), ew.sae, GradAscentConfig())
        method.setup(ew.model)
        out = method.step(ew.model)
        assert (out.per_target["forget_acc_train"] == 0).all() and out.done is done
        assert ("forget_acc_judged" in out.per_target) is (judge is not None)
