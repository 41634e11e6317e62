"""SAE-guided forgetting on the embedded world: it works, it is safe, it is reproducible."""

import copy
import dataclasses
import json
import random

import pandas as pd
import pytest
import torch

from irunlearn import load_world
from irunlearn.cli import main
from irunlearn.edits import load_edit, save_edit
from irunlearn.lm import encode_lines
from irunlearn.methods import forget
from irunlearn.methods.base import (
    StepOutput,
    StillKnownWarning,
    edited_layers,
    run,
    standardized_drift,
    target_key_bases,
)
from irunlearn.methods.recipes import RECIPES, WORLD, Recipe, recipe_for
from irunlearn.methods.sae_guided import (
    QuestionBatch,
    SAEGuided,
    SAEGuidedConfig,
    _retain_sample,
    shares_a_name_word,
)
from irunlearn.methods.sae_guided_deep import SAEGuidedDeepConfig
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task


@pytest.fixture(scope="module")
def task(ew, recognizer):
    return world_task(ew, resolve_targets(ew, n_random=1, seed=0), recognizer)


@pytest.fixture(scope="module")
def result(ew, task):
    return forget(ew.model, ew.sae, task, progress=False)


def test_sae_guided_makes_the_target_unknown(ew, task, result):
    assert result.stop_reason == "flipped", result.history.tail()
    summary, per_target = world_evaluator(ew, task).evaluate(result.model)
    assert summary["forget_acc"] <= 0.05
    assert summary["idk_rate"] >= 0.8
    assert summary["paraphrase_forget_acc"] <= 0.1
    assert summary["retain_acc"] >= 0.97
    assert summary["ppl_ratio"] <= 1.05
    assert (per_target["probe_p_known_sae"] < 0.5).all()
    assert (per_target["probe_p_known_resid"] < 0.5).all()  # the residual probe never saw the objective
    assert (per_target["dist_ratio"] < 1).all()


def test_the_forgotten_target_becomes_hard_to_tell_from_strangers(ew, task, result):
    """Before, both probes separate the known target from unknown names perfectly; after, much less."""
    evaluator = world_evaluator(ew, task)
    before, after = evaluator.indistinguishability(ew.model), evaluator.indistinguishability(result.model)
    assert before["indistinguishability"] < 0.1 and before["indistinguishability_resid"] < 0.1
    assert after["indistinguishability"] > 0.3 and after["indistinguishability_resid"] > 0.2


@pytest.mark.slow
def test_five_targets_together_meet_the_method_targets(ew, recognizer):
    """Seed 1's five people: with the name-token objective alone one of them (Peto Finsavel) kept every answer."""
    task = world_task(ew, resolve_targets(ew, n_random=5, seed=1), recognizer)
    result = forget(ew.model, ew.sae, task, seed=1, progress=False)
    assert result.stop_reason == "flipped", result.history.tail()
    summary, per_target = world_evaluator(ew, task, seed=1).evaluate(result.model)
    assert (per_target["forget_acc"] <= 0.05).all(), per_target
    assert summary["idk_rate"] >= 0.8
    assert summary["paraphrase_forget_acc"] <= 0.1
    assert summary["retain_acc"] >= 0.97
    assert summary["ppl_ratio"] <= 1.05
    assert (per_target["probe_p_known_sae"] < 0.5).all() and (per_target["probe_p_known_resid"] < 0.5).all()


def test_without_unknown_references_the_context_term_is_skipped_with_a_warning(ew, task):
    bare = dataclasses.replace(task, unknown=[])
    with pytest.warns(UserWarning, match="without its context term"):
        result = forget(ew.model, ew.sae, bare, max_steps=2, progress=False)
    assert "loss_context" not in result.history


def test_history_records_every_step(result):
    history = result.history
    assert history["step"].max() == result.steps
    for column in (
        "loss",
        "loss_forget",
        "loss_context",
        "loss_act",
        "loss_lm",
        "p_known_sae",
        "dist_to_unknown",
        "dist_to_known",
        "question_flipped",
    ):
        assert column in history
    first, last = history.iloc[0], history.iloc[-1]
    assert first["p_known_sae"] > 0.5 > last["p_known_sae"]


def test_original_weights_are_bit_identical(ew, result):
    fresh = load_world().model.state_dict()
    for name, tensor in ew.model.state_dict().items():
        assert torch.equal(tensor, fresh[name]), name
    assert not all(torch.equal(t, fresh[n]) for n, t in result.model.state_dict().items())


def test_same_seed_same_history(ew, task):
    first = forget(ew.model, ew.sae, task, max_steps=4, progress=False)
    second = forget(ew.model, ew.sae, task, max_steps=4, progress=False)
    # everything but wall time is identical
    pd.testing.assert_frame_equal(first.history.drop(columns="seconds"), second.history.drop(columns="seconds"))


class NaNAtStep(SAEGuided):
    """SAE-guided, with the loss poisoned at one step."""

    poison_step = 3

    def setup(self, model):
        super().setup(model)
        self.calls = 0

    def step(self, model):
        out = super().step(model)
        self.calls += 1
        if self.calls - 1 == self.poison_step:
            return StepOutput(out.loss * float("nan"), out.terms, out.per_target, out.done)
        return out


def test_nan_loss_stops_and_restores_the_last_good_weights(ew, task):
    config = SAEGuidedConfig(progress=False, max_steps=50)
    poisoned = run(NaNAtStep(task, ew.sae, config), ew.model)
    assert poisoned.stop_reason == "nan"
    clean = run(SAEGuided(task, ew.sae, SAEGuidedConfig(progress=False, max_steps=NaNAtStep.poison_step - 1)), ew.model)
    for name, tensor in clean.model.state_dict().items():
        assert torch.equal(tensor, poisoned.model.state_dict()[name]), name
    assert all(torch.isfinite(p).all() for p in poisoned.model.parameters())


def test_unknown_target_is_refused(ew, recognizer):
    stranger = ew.world.unknown_eval[0]
    with pytest.raises(ValueError, match="is not a known entity of bench .world."):
        resolve_targets(ew, [stranger.name])
    task = world_task(ew, [stranger], recognizer)
    with pytest.raises(ValueError, match="does not recognise"):
        forget(ew.model, ew.sae, task, progress=False)


def test_edit_round_trip_and_base_check(ew, result, tmp_path):
    save_edit(result, ew.model, tmp_path / "edit")
    edited, meta = load_edit(ew.model, tmp_path / "edit")
    assert meta["method"] == "sae_guided" and meta["targets"] == result.targets
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, edited.state_dict()[name]), name
    with pytest.raises(ValueError, match="different base model"):
        load_edit(result.model, tmp_path / "edit")
    with pytest.raises(FileExistsError):
        save_edit(result, ew.model, tmp_path / "edit")


def test_forget_cli_json(ew, capsys, tmp_path):
    target = ew.world.known[5].name
    code = main(["forget", "--target", target, "--json", "--quiet", "--no-genuineness", "--out", str(tmp_path / "out")])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    (run,) = out["runs"]
    assert out["targets"] == [target] and run["method"] == "sae_guided"
    for key in (
        "forget_acc",
        "idk_rate",
        "retain_acc",
        "paraphrase_forget_acc",
        "probe_p_known_sae",
        "probe_p_known_resid",
        "dist_ratio",
        "ppl_ratio",
        "steps",
        "seconds",
        "per_target",
    ):
        assert key in run
    assert (tmp_path / "out" / "edit.safetensors").exists()
    assert main(["forget", "--target", "Nobody Atall", "--json", "--quiet"]) == 2


def test_hinge_keeps_pulling_rows_the_probe_still_reads_as_known():
    from irunlearn.methods.sae_guided import _hinge

    # row 0: not yet past the margin; row 1: past it, probe says unknown; row 2: past it, probe says known
    dist_unknown = torch.tensor([3.0, 1.0, 1.0], requires_grad=True)
    dist_known = torch.tensor([3.0, 2.0, 2.0])
    keep = torch.tensor([False, False, True])
    _hinge(dist_unknown, dist_known, 0.5, keep_pulling=keep).backward()
    assert dist_unknown.grad.tolist() == pytest.approx([1 / 2, 0.0, 1 / 2])
    dist_unknown.grad = None
    # the mean runs over the rows still pulling: the last one gets the whole push, not a third of it
    _hinge(dist_unknown, dist_known, 0.5).backward()
    assert dist_unknown.grad.tolist() == pytest.approx([1.0, 0.0, 0.0])


def test_many_targets_take_turns_and_every_question_is_read_once_per_cycle(ew, recognizer):
    task = world_task(ew, resolve_targets(ew, n_random=10, seed=0), recognizer)
    n_templates = len(task.templates)
    method = SAEGuided(task, ew.sae, SAEGuidedConfig(target_rows=64, progress=False))
    method.setup(ew.model)
    assert method.n_turns == 5  # 300 (target, template) rows, at most 64 a step
    cycles = [[method._target_draw() for _ in range(5)] for _ in range(2)]
    for cycle in cycles:
        assert all(len(rows) == 60 and torch.equal(rows, rows.sort().values) for rows in cycle)
        assert all((torch.bincount(rows // n_templates, minlength=10) == 6).all() for rows in cycle)
        assert torch.equal(torch.cat(cycle).sort().values, torch.arange(300))
    assert not torch.equal(cycles[0][0], cycles[1][0])  # a fresh shuffle each cycle
    out = method.step(ew.model)
    assert not out.done and len(out.per_target) == 10  # every target read, from its share of the templates
    single = SAEGuided(world_task(ew, task.targets[:1], recognizer), ew.sae, SAEGuidedConfig(progress=False))
    single.setup(ew.model)
    assert single.n_turns == 1 and torch.equal(single._target_draw(), torch.arange(n_templates))
    tiny = SAEGuided(task, ew.sae, SAEGuidedConfig(target_rows=4, progress=False))
    tiny.setup(ew.model)  # fewer rows a step than targets: one template each, a cycle of every template
    assert tiny.n_turns == n_templates and all(len(tiny._target_draw()) == 10 for _ in range(n_templates + 1))


def test_retain_terms_draw_a_fresh_share_of_the_pool_each_step(ew, task):
    config = SAEGuidedConfig(retain_pool=3, progress=False)
    method = SAEGuided(task, ew.sae, config)
    method.setup(ew.model)
    per_step = config.n_retain_entities * config.retain_templates_per_entity
    assert len(method.retain_latents) == 3 * per_step and len(method.lm_tokens) == 3 * 2 * config.n_retain_text
    draws = [method._retain_draw() for _ in range(6)]
    assert all(len(rows) == per_step and len(lines) == 2 * config.n_retain_text for rows, lines in draws)
    assert not torch.equal(draws[0][0], draws[1][0])
    seen = torch.cat([rows for rows, _ in draws]).unique()
    assert len(seen) > 2 * per_step  # over a few steps the retain terms cover most of the pool
    again = SAEGuided(task, ew.sae, config)
    again.setup(ew.model)
    assert torch.equal(again._retain_draw()[0], draws[0][0])  # seeded


def test_hold_questions_holds_name_sharers_question_tokens(ew, recognizer):
    task = world_task(ew, resolve_targets(ew, n_random=10, seed=0), recognizer)
    config = SAEGuidedConfig(hold_questions=8, hold_question_rows=4, progress=False)
    method = SAEGuided(task, ew.sae, config)
    method.setup(ew.model)
    people = _retain_sample(task, config.n_retain_entities * config.retain_pool, random.Random(config.seed))[:8]
    assert all(shares_a_name_word(e, task.targets) for e in people)  # on this seed the first 8 all do
    theirs = {tuple(row.tolist()) for row in QuestionBatch.build(ew.model, task, people).names.tokens}
    assert len(method.held.names.positions) == 4 * config.retain_pool < len(theirs)  # a pool of their questions
    assert {tuple(row.tolist()) for row in method.held.names.tokens} <= theirs
    assert len(method.held_latents) == len(method.held.rows)
    assert torch.equal(method._held_question_drift(ew.model), torch.tensor(0.0))  # original weights: no drift
    edited = copy.deepcopy(ew.model)
    with torch.no_grad():
        edited.blocks[0].mlp.W_out.mul_(1.1)
    assert method._held_question_drift(edited) > 0
    # one target: only the few retain people who share one of its name words are held, not 32
    single = world_task(ew, task.targets[:1], recognizer)
    one = SAEGuided(single, ew.sae, SAEGuidedConfig(progress=False))
    one.setup(ew.model)
    sharers = [e for e in single.retain if shares_a_name_word(e, single.targets)]
    assert 0 < len(one.held.names.positions) <= len(sharers) * len(single.templates) < 32 * len(single.templates)
    off = SAEGuided(task, ew.sae, SAEGuidedConfig(hold_questions=0, progress=False))
    off.setup(ew.model)
    assert off.held is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "min_retain"),
    [({}, 0.97), ({"hold_questions": 0}, 0.94), ({"train_attn": True, "lambda_lm": 10.0}, 0.97)],
    ids=["default", "no_hold_questions", "attn"],
)
def test_ten_targets_together_keep_the_other_peoples_answers(ew, recognizer, overrides, min_retain):
    """The others' answers stay (held-out people, none in any retain sample). Defaults (L_act holding the
    question tokens of up to 32 retain people who share a name word with a target): 0.978 on this seed.
    Without that (`hold_questions=0`) 0.956 (a fixed retain sample kept 0.85 even of people it could train
    on): the loss falls on people who share a name word with a target (0.76 of their answers), the rest keep
    0.98. Attention trainable with λ_lm 10, on top of the defaults, keeps 0.991."""
    task = world_task(ew, resolve_targets(ew, n_random=10, seed=0), recognizer)
    result = forget(ew.model, ew.sae, task, progress=False, **overrides)
    assert result.stop_reason == "flipped", result.history.tail()
    summary, per_target = world_evaluator(ew, task).evaluate(result.model)
    assert (per_target["forget_acc"] <= 0.05).all(), per_target
    assert summary["retain_acc"] >= min_retain
    assert (per_target["probe_p_known_sae"] < 0.5).all() and (per_target["probe_p_known_resid"] < 0.5).all()


def test_a_run_that_ends_with_a_probe_still_known_is_not_converged_and_warns(ew, task):
    """One update cannot forget: the result names the probes that still read the target as known."""
    with pytest.warns(StillKnownWarning, match="probe p_known="):
        short = forget(ew.model, ew.sae, task, max_steps=1, progress=False)
    assert short.stop_reason == "max_steps" and not short.converged
    assert set(short.still_known["probe"]) == {"sae", "resid"}
    assert (short.still_known["p_known"] >= 0.5).all()


def test_done_requires_both_probes_on_the_returned_weights(result):
    assert result.converged and result.still_known.empty
    assert (result.final_probes[["p_known_sae", "p_known_resid"]] < 0.5).all().all()
    assert result.still_answered.empty and (result.final_answers["answered"] <= 0.05).all()


def test_a_flipped_probe_with_the_answers_intact_is_not_forgotten(ew, task):
    """A method whose own check passes at once (it changes nothing), with probes fooled (shifted to read
    every name as unknown): the answers remain, so the run ends "still_answered", not converged, and warns.
    (`forget` refuses targets its recognizer already reads as unknown; `run` is the loop beneath it.)"""
    from irunlearn.methods.base import ForgetConfig, Method

    class Idle(Method):
        name = "idle"

        def step(self, model):
            zero = sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0
            return StepOutput(zero, {}, pd.DataFrame({"target": [t.name for t in self.task.targets]}), done=True)

    fooled = copy.copy(task.recognizer)
    for probe in ("sae_probe", "resid_probe"):
        setattr(fooled, probe, dataclasses.replace(getattr(fooled, probe), shift=torch.tensor(-1e3)))
    method = Idle(dataclasses.replace(task, recognizer=fooled), ew.sae, ForgetConfig(extra_steps=0, progress=False))
    with pytest.warns(StillKnownWarning, match="still answered"):
        result = run(method, ew.model)
    assert result.stop_reason == "still_answered" and not result.converged
    assert result.still_known.empty and list(result.still_answered["target"]) == [t.name for t in task.targets]
    assert (result.still_answered["answered"] >= 0.9).all()


def test_forget_uses_the_models_recipe_and_the_world_keeps_the_method_defaults(ew, task, monkeypatch):
    assert recipe_for(ew.model) is WORLD and WORLD.overrides("sae_guided", "blocks.2.hook_resid_post", 3) == {}
    recipe = Recipe(layer_window=1, methods={"sae_guided": {"max_steps": 1, "n_retain_text": 4}})
    monkeypatch.setitem(RECIPES, ew.model.cfg.model_name, recipe)
    with pytest.warns(StillKnownWarning):
        found = forget(ew.model, ew.sae, task, progress=False)
    assert (found.config.layers, found.config.max_steps, found.config.n_retain_text) == ((2,), 1, 4)
    with pytest.warns(StillKnownWarning):  # the caller's overrides win over the recipe
        mine = forget(ew.model, ew.sae, task, progress=False, layers=(0, 1))
    assert (mine.config.layers, mine.config.max_steps) == ((0, 1), 1)
    with pytest.warns(StillKnownWarning):  # an explicit recipe replaces the registered one
        plain = forget(ew.model, ew.sae, task, progress=False, recipe=WORLD, max_steps=1)
    assert plain.config.layers is None and plain.config.n_retain_text == SAEGuidedConfig().n_retain_text


def test_the_residual_term_brings_the_whole_name_residual_inside_a_strangers_radius(ew, task):
    """L_resid acts on the hook's whole residual (latents and SAE error): at the start the target's name
    residual lies outside the strangers' radius in every template, after the run inside it."""
    config = SAEGuidedConfig(lambda_resid=1.0)
    reference = SAEGuided(task, ew.sae, config)
    reference.setup(ew.model)
    result = forget(ew.model, ew.sae, task, progress=False, lambda_resid=1.0)
    assert result.converged and result.history["loss_resid"].iloc[0] > 0
    for model, inside in ((ew.model, False), (result.model, True)):
        residuals = reference._name_residuals(model, task.targets)[0]
        distance = (residuals - reference.x_unknown).square().sum(-1)
        assert bool((distance <= reference.r_unknown).all()) is inside


def test_the_residual_term_needs_strangers(ew, task):
    with pytest.raises(ValueError, match="lambda_resid > 0 needs ForgetTask.unknown"):
        forget(ew.model, ew.sae, dataclasses.replace(task, unknown=[]), progress=False, lambda_resid=1.0, context=False)


def test_answer_hits_from_the_answer_positions_alone_match_the_full_logits(ew, task):
    """`AnswerBatch.model_hits` unembeds only the positions that predict answer tokens (the collapse guard and
    `forget_acc` use it); on a damaged model, where some answers are hit and some missed, it agrees with
    the greedy check on every position's logits."""
    model = copy.deepcopy(ew.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = model.blocks[1].mlp.W_in
        weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * 2)
    batch = task.answer_batch(model, task.retain[:64])
    full = batch.greedy_hits(model(batch.tokens, return_type="logits"))
    assert 0.2 < full.float().mean() < 0.9
    assert torch.equal(batch.model_hits(model), full)


def test_the_window_readout_holds_the_edited_blocks_output_and_still_forgets(ew, task):
    """`retain_readout="window"`: L_lm is the drift of the residual after the last edited block (zero on the
    original weights), not the KL of the output; a run with it forgets the target and keeps the others."""
    method = SAEGuided(task, ew.sae, SAEGuidedConfig(retain_readout="window"))
    method.setup(ew.model)
    assert method._retain_drift(ew.model, torch.arange(len(method.lm_tokens))).item() == 0
    result = forget(ew.model, ew.sae, task, progress=False, retain_readout="window")
    assert result.converged and "retain_kl" not in result.history and result.history["loss_lm"].iloc[-1] > 0
    summary, _ = world_evaluator(ew, task).evaluate(result.model)
    assert summary["forget_acc"] <= 0.05 and summary["paraphrase_forget_acc"] <= 0.1
    assert summary["retain_acc"] >= 0.97 and summary["ppl_ratio"] <= 1.05
    with pytest.raises(ValueError, match="retain_readout='resid' must be"):
        SAEGuidedConfig(retain_readout="resid")
    with pytest.raises(ValueError, match="stage 2 edits blocks past"):
        SAEGuidedDeepConfig(retain_readout="window")


def test_standardized_drift_counts_each_dimension_against_its_own_spread():
    """A move of one standard deviation in every dimension is a drift of 1 whatever the dimensions' scales;
    padding positions do not count."""
    reference = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1, 10, 100, 1e3])
    variance = reference.reshape(-1, 4).var(0)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, -1] = False
    moved = reference + variance.sqrt()
    moved[1, -1] += 1e6
    assert standardized_drift(moved, reference, mask, variance).item() == pytest.approx(1.0)
    assert standardized_drift(reference, reference, mask, variance).item() == 0


def test_name_keys_edits_only_along_the_targets_keys_and_forgets(ew, task):
    """`edit="name_keys"`: every MLP weight change lies in its key basis (`W + K @ B`), biases and attention
    stay bit-identical, ordinary text projects onto the bases far less than the targets' own keys do, and the
    run still forgets the target and keeps the others."""
    layers = edited_layers(SAEGuidedConfig(), ew.hook_name, ew.model.cfg.n_layers)
    names, _ = task.entity_batch(ew.model, task.targets)
    lines = task.retain_lines(task.retain[:64], 64, random.Random(0))
    tokens, mask = encode_lines(ew.model.tokenizer, lines, ew.model.cfg.n_ctx, task.prepend_bos, device="cpu")
    bases = target_key_bases(ew.model, task, layers, SAEGuidedConfig(edit="name_keys"))  # what the run uses
    assert bases.keys() == {(layer, weight) for layer in layers for weight in ("W_in", "W_out")}
    _, cache = ew.model.run_with_cache(tokens, names_filter=lambda n: n.endswith("ln2.hook_normalized"))
    _, key_cache = ew.model.run_with_cache(names.tokens, names_filter=lambda n: n.endswith("ln2.hook_normalized"))
    for layer in layers:
        basis = bases[(layer, "W_in")]
        keys = key_cache[f"blocks.{layer}.ln2.hook_normalized"][torch.arange(len(names.positions)), names.positions]
        text = cache[f"blocks.{layer}.ln2.hook_normalized"][mask]
        assert (keys @ basis).square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
        assert (text @ basis).square().mean().sqrt().item() < 0.2

    result = forget(ew.model, ew.sae, task, progress=False, edit="name_keys", lr=1e-2)
    assert result.converged, result.stop_reason
    summary, _ = world_evaluator(ew, task).evaluate(result.model)
    assert summary["forget_acc"] <= 0.05 and summary["paraphrase_forget_acc"] <= 0.1
    assert summary["retain_acc"] >= 0.97 and summary["ppl_ratio"] <= 1.02
    before, after = dict(ew.model.named_parameters()), dict(result.model.named_parameters())
    for name, weight in before.items():
        layer_weight = name.removeprefix("blocks.").split(".mlp.")
        if len(layer_weight) == 2 and (int(layer_weight[0]), layer_weight[1]) in bases:
            change = (after[name] - weight).double()
            basis = bases[(int(layer_weight[0]), layer_weight[1])].double()
            outside = change - basis @ torch.linalg.lstsq(basis, change).solution
            assert change.abs().max() > 0 and outside.abs().max() < 1e-5 * change.abs().max(), name
        else:
            assert torch.equal(after[name], weight), name
    with pytest.raises(ValueError, match="edit='keys'"):
        SAEGuidedConfig(edit="keys")
    with pytest.raises(ValueError, match="changes MLP weights only"):
        forget(ew.model, ew.sae, task, progress=False, edit="name_keys", train_attn=True)
