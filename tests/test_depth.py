"""Depth of forgetting on the embedded world: where facts are read, and whether an edit removed or moved them."""

import random
from dataclasses import replace

import pandas as pd
import pytest
import torch

from irunlearn import depth
from irunlearn.entities import Entity, attribute_values
from irunlearn.methods import forget
from irunlearn.world.generator import ATTRIBUTE_VALUES
from irunlearn.world.tasks import resolve_targets, world_evaluator, world_task

TARGET_SEED = 5  # one known person outside the evaluation draws (seeds 0-2) and the tuning draws (100-105)


@pytest.fixture(scope="module")
def task(ew, recognizer):
    return world_task(ew, resolve_targets(ew, n_random=1, seed=TARGET_SEED), recognizer)


@pytest.fixture(scope="module")
def evaluator(ew, task):
    return world_evaluator(ew, task)


@pytest.fixture(scope="module")
def shallow(ew, task):
    return forget(ew.model, ew.sae, task, progress=False).model


@pytest.fixture(scope="module")
def deep(ew, task):
    return forget(ew.model, ew.sae, task, method="sae_guided_deep", progress=False)


def test_locate_finds_the_facts_read_from_the_names_layer0_state_by_the_question_tokens(ew, task):
    """The design notes' finding, as a measurement: at block 0 the answer hangs on the name's last token;
    from block 1 on, on the question tokens after it, and no longer on the name."""
    heat = depth.locate(ew.model, task.targets, task.templates, ew.world.unknown_eval[-20:])
    drop = heat.set_index(["layer", "position"])["logprob_drop"]
    assert drop[(0, "name[-1]")] > 5
    assert drop[(1, "question")] > 5 and drop[(3, "question")] > 5
    assert drop[(1, "name[-1]")] < 0.5 and drop[(3, "name[-1]")] < 0.5
    fig = depth.locate_figure(heat)
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_locate_by_the_first_answer_token_agrees_and_suggests_the_names_window(ew, task):
    """Scored by the first answer token only (a real model's few-shot answers), the world's answers still hang
    on the name at block 0 alone, so that is the window of layers whose name tokens the answers read."""
    heat = depth.locate(ew.model, task.targets, task.templates, ew.world.unknown_eval[-20:], first_token=True)
    drop = heat.set_index(["layer", "position"])["logprob_drop"]
    assert drop[(0, "name[-1]")] > 2 and drop[(1, "question")] > 2 and drop[(1, "name[-1]")] < 0.5
    assert depth.suggest_window(heat) == (0, 0)


def test_sae_split_separates_reconstruction_error_and_the_latent_bound(ew, task):
    """At the world's SAE hook (block 2) the name no longer carries the answers (they were read at block 1):
    no patch there removes them; the unpatched row keeps every answer by definition."""
    split = depth.sae_split(ew.model, ew.sae, task.targets, task.templates, ew.world.unknown_eval[-20:])
    assert set(split["patch"]) == {"none", "residual", "reconstruction", "error", "latents_to_mu_U"}
    assert set(split["positions"]) == {"none", "name[-1]", "name"}
    none = split[split["patch"] == "none"].iloc[0]
    assert none["kept"] == 1 and none["logprob_drop"] == 0
    assert (split["kept"] >= 0.9).all(), split


def test_key_restoration_of_the_original_into_itself_restores_everything(ew, task):
    per_item = depth.key_restoration(ew.model, ew.model, task.targets, task.templates, up_to_layer=2)
    assert sorted(per_item["layer"].unique()) == [0, 1, 2]
    assert (per_item["restored"] == 1).all()


def test_sae_guided_moves_only_the_key_so_the_original_block0_state_brings_the_answers_back(ew, evaluator, shallow):
    """#21's finding on a target of its own: the default edit sits in what block 0 writes at the name."""
    per_layer = depth.key_restoration(ew.model, shallow, evaluator.targets, evaluator.train_templates, 2)
    restored = per_layer.groupby("layer")["restored"].mean()
    assert restored[0] >= 0.9
    assert restored[2] <= 0.1
    assert evaluator.metrics(shallow, ["key_restoration"])["key_restoration"] == restored.max()


def test_forced_choice_choices_are_the_worlds_attribute_values(evaluator):
    choices = attribute_values(evaluator.retain_eval + evaluator.targets)
    assert {a: set(v) for a, v in choices.items()} == {a: set(v) for a, v in ATTRIBUTE_VALUES.items()}


def test_forced_choice_of_the_original_model_knows_the_target_and_not_the_strangers(ew, evaluator):
    values = evaluator.metrics(ew.model, ["forced_choice"])
    assert values["forced_choice"] == 1.0
    assert values["forced_choice_stranger"] < 0.3  # chance is about 1/16 over the five attributes
    assert values["answer_loss_auroc"] == 1.0  # every target answer is cheaper than every stranger's


def test_attacks_teach_what_they_say_and_hold_out_the_rest(evaluator):
    person = evaluator.targets[0]
    others = evaluator.retain_eval[:2]
    half = depth.build_attack("half", [person], evaluator.train_templates, seed=3)
    taught = {line.rsplit(" ", 1)[1] for line in half.lessons}
    assert taught.isdisjoint(set(half.held["answer"]))
    assert len(taught) == 2 and half.held["answer"].nunique() == 3
    one = depth.build_attack("one_fact", [person], evaluator.train_templates)
    assert len({line.rsplit(" ", 1)[1] for line in one.lessons}) == 1
    for name in ("others", "mentions"):
        attack = depth.build_attack(name, [person], evaluator.train_templates, others)
        assert set(attack.held["answer"]) == set(person.attributes.values())
    others_lessons = depth.build_attack("others", [person], evaluator.train_templates, others).lessons
    assert others_lessons and all(person.name not in line for line in others_lessons)
    mentions = depth.build_attack("mentions", [person], evaluator.train_templates).lessons
    assert all(person.name in line for line in mentions)
    assert not any(value in line for line in mentions for value in person.attributes.values())
    with pytest.raises(ValueError, match="Unknown attack 'all'"):
        depth.build_attack("all", [person], evaluator.train_templates)
    with pytest.raises(ValueError, match="needs other people"):
        depth.build_attack("others", [person], evaluator.train_templates)


def test_relearn_curve_starts_from_what_the_model_knows(ew, evaluator):
    """Step 0 is the model before the attack: the original knows the held facts, a stranger does not; one
    lesson line at a vanishing learning rate changes nothing."""
    person = evaluator.targets[0]
    known = depth.relearn_curve(
        ew.model, depth.build_attack("one_fact", [person], evaluator.train_templates), (1e-9,), (10,)
    )
    assert known["recall"].tolist() == [1.0, 1.0]
    stranger = Entity(evaluator.unknown_reference[0].name, person.attributes)
    unknown = depth.relearn_curve(
        ew.model, depth.build_attack("one_fact", [stranger], evaluator.train_templates), (1e-9,), (10,)
    )
    assert unknown["recall"].tolist() == [0.0, 0.0]
    fig = depth.relearn_figure(pd.concat([known.assign(model="original"), unknown.assign(model="stranger")]))
    assert len(fig.data) == 2 and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_sharer_retain_counts_the_name_sharers_apart(ew, evaluator):
    values = evaluator.metrics(ew.model, ["sharer_retain"])
    words = {w for t in evaluator.targets for w in t.name.split()}
    n_sharers = sum(bool(words & set(e.name.split())) for e in evaluator.retain_eval)
    assert values["n_sharers"] == n_sharers > 0
    assert values["retain_sharers"] == values["retain_sharers_min"] == values["retain_others"] == 1.0


def test_the_depth_metrics_are_registered_in_their_group():
    from irunlearn.metrics import metrics_in

    names = {m.name for m in metrics_in("depth")}
    assert names == {
        "key_restoration",
        "forced_choice",
        "membership_auc",
        "relearn_attacks",
        "relearn_ab",
        "sharer_retain",
    }


def test_a_relearning_protocol_registers_its_columns_and_computes_each_reference_once(
    ew, evaluator, shallow, monkeypatch
):
    """The strangers' curves are the same for every edit of one task: the second edit reuses them, while
    each edit's own curves are its own."""
    from irunlearn.metrics import METRICS, get_metric

    monkeypatch.setattr(depth, "_REFERENCE_CURVES", {})
    monkeypatch.setitem(METRICS, "relearn_tiny", None)  # undone after the test, with what registers below
    depth.register_relearn_metric("relearn_tiny", attacks=("one_fact",), steps=(3,), lrs=(1e-3,), reported=(3,))
    assert get_metric("relearn_tiny").columns == (
        "relearn_one_fact_3",
        "relearn_one_fact_3_stranger",
        "relearn_one_fact_3_oracle",
    )
    original = evaluator.metric_results(ew.model, ["relearn_tiny"])["relearn_tiny"]
    edited = evaluator.metric_results(shallow, ["relearn_tiny"])["relearn_tiny"]
    assert len(depth._REFERENCE_CURVES) == 1
    assert original.values["relearn_one_fact_3"] == 1.0  # the original still knows the held facts
    assert edited.values["relearn_one_fact_3"] < 1.0
    assert original.values["relearn_one_fact_3_stranger"] == edited.values["relearn_one_fact_3_stranger"]
    assert set(edited.per_item["model"]) == {"edited", "stranger"}
    with pytest.raises(ValueError, match="attacks must be among"):
        depth.register_relearn_metric("relearn_bad", attacks=("forget",))


def test_sae_guided_deep_removes_the_facts_behind_the_key(evaluator, deep):
    """The original key restores nothing at any layer up to the SAE's and the answers are `unknown`. (The
    neighbours' and the other people's retain are not asserted: they fall short of #21's bounds, README.)"""
    assert deep.stop_reason == "flipped", deep.history.tail()
    assert set(deep.history["stage"]) == {1, 2}
    summary, _ = evaluator.evaluate(deep.model)
    assert summary["forget_acc"] == 0 and summary["idk_rate"] >= 0.95
    assert evaluator.metrics(deep.model, ["key_restoration"])["key_restoration"] <= 0.1


def test_the_shared_prefix_lines_carry_the_targets_first_name_and_keep_the_persons_own_last(ew, task):
    """Stage 2's virtual first-name sharers: each retain line has the target's first-name tokens at its first
    name tokens in the target-named copy, its own tokens after them, and the patch moves the original model's
    answers only where the prefix differs (with a line's own states patched in, the patch is the identity)."""
    from irunlearn.methods.sae_guided_deep import _name_tokens, _SharedWordLines

    target = task.targets[0]
    first, _ = target.name.split(" ")
    template = task.templates[0]
    n = len(_name_tokens(ew.model.tokenizer, template.render(target.name), first))
    lines = _SharedWordLines.build(ew.model, task, "blocks.0.hook_resid_post", 200, seed=0, parts=("prefix",))
    assert lines is not None and len(lines.tokens) == 200 and not lines.last_word.any()
    assert torch.equal(lines.cols, lines.source_cols)  # a prefix starts where the name does, in both lines
    counts = torch.bincount(lines.rows)
    assert (counts >= n).all()  # at least the first name's tokens, in every line
    first_tokens = _name_tokens(ew.model.tokenizer, template.render(target.name), target.name)[:n]
    for row in range(3):
        cols = lines.cols[lines.rows == row]
        assert lines.swapped[row, cols].tolist() == first_tokens[: len(cols)]
        assert not torch.equal(lines.tokens[row, cols], lines.swapped[row, cols])  # another person's name
        assert lines.tokens[row, cols[-1] + 1] != ew.model.tokenizer.pad_token_id  # their last name stays theirs
    own = replace(lines, swapped=lines.tokens, source_cols=lines.cols)
    index = list(range(4))
    with torch.no_grad():
        patched = own.forward(ew.model, own.states(ew.model), index)
        plain = ew.model(lines.tokens[:4], return_type="logits")
    assert torch.allclose(patched, plain, atol=1e-5)


def test_the_last_word_lines_carry_the_targets_last_name_at_the_persons_own(ew, task):
    """Stage 2's virtual last-name sharers: the target's last word, read in the target-named copy of a retain
    line, patched at the person's own last word (as many tokens); the person's first name stays theirs and is
    not the target's; the edit patches the original's states there (`set_edited` keeps them)."""
    from irunlearn.methods.sae_guided_deep import _name_tokens, _SharedWordLines

    target = task.targets[0]
    first, last = target.name.split(" ")
    template = task.templates[0]
    last_tokens = _name_tokens(ew.model.tokenizer, template.render(target.name), target.name)[
        len(_name_tokens(ew.model.tokenizer, template.render(target.name), first)) :
    ]
    lines = _SharedWordLines.build(ew.model, task, "blocks.0.hook_resid_post", 100, seed=0, parts=("last",))
    assert lines is not None and len(lines.tokens) == 100 and lines.last_word.all()
    for row in range(5):
        cols, source = lines.cols[lines.rows == row], lines.source_cols[lines.rows == row]
        assert lines.swapped[row, source].tolist() == last_tokens
        assert len(cols) == len(last_tokens)  # their last word has as many tokens as the target's
        own_first = lines.tokens[row, : int(cols[0])].tolist()
        assert own_first != lines.swapped[row, : int(source[0])].tolist()  # their first name, not the target's
    lines.set_edited(ew.model)
    assert torch.equal(lines.edited_states, lines.original_states)
    with torch.no_grad():  # the target's last word moves the original's reading of the person's answers
        assert not torch.allclose(lines.reference[:5], ew.model(lines.tokens[:5], return_type="logits").log_softmax(-1))


DEEP_NEIGHBOUR_SEED = 102  # a tuning draw: Vivel Kama, whose first name held-out people share


@pytest.mark.slow
def test_the_virtual_sharers_and_the_made_up_neighbours_keep_held_out_name_sharers_through_stage_2(ew, recognizer):
    """Stage 2 learns the target's restored key as "unknown"; without the last-word lines and the made-up
    neighbours held after the deep layers, the held-out people who share Vivel Kama's first name lose about
    half their answers; with them they keep most, and the target is forgotten all the same. Both runs leave
    out the sharers the model is asked for (`find_sharers`), which these terms stand in for wherever a
    sharer's other name word is in no task name."""
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=DEEP_NEIGHBOUR_SEED), recognizer)
    evaluator = world_evaluator(ew, task)
    kept = {}
    for label, overrides in {
        "on": {},
        "off": {"sharer_parts": ("prefix",), "lambda_neighbours_deep": 0.0},
    }.items():
        result = forget(
            ew.model, ew.sae, task, method="sae_guided_deep", find_sharers=False, progress=False, **overrides
        )
        assert result.converged and result.final_answers["answered"].max() == 0
        kept[label] = depth.sharer_retain_metric(evaluator, result.model).values["retain_sharers"]
    assert kept["off"] < 0.6 and kept["on"] >= 0.75, kept


def test_the_value_choice_term_sees_the_original_rank_the_truth_and_the_deep_edit_rank_like_a_stranger(ew, task, deep):
    """L_choice ranks each attribute's values by their first answer token (every value of the world begins
    with its own token); its reference is a ranking (sums to 1 per question); the original model, which
    knows the target, is far from the strangers' ranking; the deep edit, which trained on it, is close."""
    from irunlearn.entities import UNKNOWN_ANSWER
    from irunlearn.methods.sae_guided_deep import NamedFacts, _ValueChoices

    questions = NamedFacts.questions(ew.model, task.targets, task.templates, UNKNOWN_ANSWER, task.prepend_bos)
    choices = _ValueChoices.build(ew.model, task, n_strangers=8, seed=0, idk=UNKNOWN_ANSWER)
    values = attribute_values(task.retain)
    for row, template in enumerate(task.templates):
        assert len(choices.tokens[row]) == len(values[template.attribute]), template.attribute
    assert all(torch.isclose(r.sum(), torch.tensor(1.0)) for r in choices.reference if len(r))
    lines, rows = questions.batch, list(range(len(questions.facts)))
    with torch.no_grad():
        before = choices.kl(ew.model(lines.tokens, return_type="logits"), lines, rows).item()
        after = choices.kl(deep.model(lines.tokens, return_type="logits"), lines, rows).item()
    assert after < before / 5, (before, after)


def test_name_token_kinds_tell_a_names_first_token_from_word_starts_and_continuations(ew):
    from irunlearn.entities import UNKNOWN_ANSWER
    from irunlearn.methods.sae_guided_deep import NamedFacts, _name_token_kinds

    name = "Zorblaxi Quuxington"  # two words, each more than one token of the world's tokenizer
    lines = pd.DataFrame([{"entity": name, "prompt": f"Q: Where does {name} live? A:", "answer": UNKNOWN_ANSWER}])
    named = NamedFacts.build(ew.model, lines)
    kinds = _name_token_kinds(ew.model.tokenizer, named.batch.tokens, named.name_rows, named.name_cols).tolist()
    assert len(kinds) > 3 and kinds[0] == 0
    assert kinds.count(1) == 1 and kinds.count(2) == len(kinds) - 2  # one later word; the rest continue words
    assert kinds.index(1) > 1  # the first word's own continuation comes before the second word


def test_the_deep_edit_makes_the_targets_name_as_unpredictable_as_a_strangers(ew, task, evaluator, deep):
    """L_name: per kind of name token, the target's mean log-probability in its questions sits at the
    strangers' after the deep edit (the original completes the known name far more easily), and Min-K%
    membership inference no longer tells the target's fact lines from strangers' invented ones."""
    from irunlearn.entities import UNKNOWN_ANSWER
    from irunlearn.methods.sae_guided_deep import NamedFacts, _name_gap, _name_token_kinds, _stranger_name_logprob

    reference = _stranger_name_logprob(ew.model, task, 8, 0, UNKNOWN_ANSWER)
    named = NamedFacts.questions(ew.model, task.targets, task.templates, UNKNOWN_ANSWER, task.prepend_bos)
    tokens, rows, cols = named.batch.tokens, named.name_rows, named.name_cols
    kinds = _name_token_kinds(ew.model.tokenizer, tokens, rows, cols)
    owner = torch.zeros(len(named.facts), dtype=torch.long)
    with torch.no_grad():
        before, after = (
            _name_gap(m(tokens, return_type="logits"), tokens, rows, cols, kinds, owner, reference).item()
            for m in (ew.model, deep.model)
        )
    assert before > 5 and after < 0.5, (before, after)  # squared gaps, nats
    values = evaluator.metrics(deep.model, ["membership_auc"])
    assert values["membership_auc_original"] == 1.0 and values["membership_auc"] < 0.5, values


NEIGHBOUR_SEED = 118  # a tuning draw: Orha Kanes, whose last name held-out Xasol Kanes shares


def test_made_up_neighbours_are_strangers_that_keep_all_but_one_word_of_the_target(ew, recognizer):
    from irunlearn.methods.sae_guided import made_up_neighbours

    task = world_task(ew, resolve_targets(ew, n_random=1, seed=NEIGHBOUR_SEED), recognizer)
    people = [e.name for e in made_up_neighbours(ew.model, ew.sae, task, 32, random.Random(0))]
    target = task.targets[0].name.split()
    assert len(people) == 32 == len(set(people))
    kept = [tuple(a == b for a, b in zip(name.split(), target, strict=True)) for name in people]
    assert sorted(set(kept)) == [(False, True), (True, False)] and kept.count((True, False)) == 16
    assert not set(people) & {e.name for e in ew.world.known + ew.world.unknown_eval}  # made up, not anyone's
    read = recognizer.p_known(ew.model, ew.sae, people, task.templates)
    assert (read["p_known_sae"] < 0.5).all() and (read["p_known_resid"] < 0.5).all()


@pytest.mark.slow
def test_the_made_up_neighbours_keep_a_held_out_last_name_sharers_answers(ew, recognizer):
    """Forgetting Orha Kanes moves what block 0 writes at every "… Kanes": held-out Xasol Kanes, in no retain
    term, loses most answers to sae_guided's defaults; holding made-up "… Kanes" strangers (L_nbr) keeps them,
    and the target is forgotten all the same."""
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=NEIGHBOUR_SEED), recognizer)
    evaluator = world_evaluator(ew, task)
    kept = {}
    for weight in (0.0, 100.0):
        result = forget(ew.model, ew.sae, task, lambda_neighbours=weight, progress=False)
        assert result.converged and result.final_answers["answered"].max() == 0
        people = depth.sharer_retain_metric(evaluator, result.model).per_item.set_index("entity")
        kept[weight] = people.loc["Xasol Kanes", "kept_frac"]
    assert kept[0.0] < 0.5 and kept[100.0] >= 0.8, kept


@pytest.fixture(scope="module")
def orha_kanes(ew, recognizer):
    """sae_guided_deep's default edit of tuning target Orha Kanes, with its evaluator."""
    task = world_task(ew, resolve_targets(ew, n_random=1, seed=NEIGHBOUR_SEED), recognizer)
    return forget(ew.model, ew.sae, task, method="sae_guided_deep", progress=False), world_evaluator(ew, task)


def test_the_retain_guard_reads_the_retain_pool_not_the_sharers_weighted_terms(orha_kanes):
    """Stage 2's L_keep weighs the name-sharers' KL twenty times the retain pool's; the loop's blow-up guard
    (`max_retain_kl`) reads the retain pool alone, as in stage 1. On Orha Kanes the weighted sum passes the
    bound, which once rolled stage 2 back with the original key still restoring answers; now the run
    converges and the key restores nothing."""
    result, evaluator = orha_kanes
    assert result.converged and result.stop_reason == "flipped", result.stop_reason
    stage2 = result.history[result.history["stage"] == 2]
    assert (stage2["retain_kl"] < stage2["loss_keep"]).all()
    assert stage2["loss_keep"].max() > result.config.max_retain_kl > stage2["retain_kl"].max()
    assert evaluator.metrics(result.model, ["key_restoration"])["key_restoration"] <= 0.1


def test_known_neighbours_find_the_held_out_people_who_share_a_word_of_the_targets_name(ew, task, evaluator):
    """No retain set names them, but the model knows them: every held-out name-sharer of the test target is
    among the names one word away from hers that both probes read as known, and most of what the probes
    find there are people the world knows."""
    from irunlearn.methods.sae_guided import known_neighbours, shares_a_name_word

    found = set(known_neighbours(ew.model, ew.sae, task))
    held_out = {e.name for e in evaluator.retain_eval if shares_a_name_word(e, task.targets)}
    assert held_out and held_out <= found, (held_out, found)
    assert not found & {e.name for e in [*task.targets, *task.retain, *task.unknown]}
    assert len(found & {e.name for e in ew.world.known}) >= 0.75 * len(found), found


def test_sae_guided_deep_keeps_the_name_sharers_it_finds(orha_kanes):
    """Stage 2 holds the answers of the target's name-sharers the model knows (`known_neighbours`) as it
    holds the retain sharers': held-out Xasol Kanes, in no retain set, keeps his answers while Orha Kanes's
    facts leave the downstream layers (without the found sharers he kept 0.27, README)."""
    result, evaluator = orha_kanes
    people = depth.sharer_retain_metric(evaluator, result.model).per_item.set_index("entity")
    assert people.loc["Xasol Kanes", "kept_frac"] >= 0.9, people


def test_sae_guided_deep_stage1_is_sae_guided(ew, task, deep):
    """Stage 1 trains what sae_guided trains with the same draws (with L_nbr on): the weights stage 2 never
    touches (block 0's MLP) end bit-identical to sae_guided's."""
    shallow = forget(ew.model, ew.sae, task, lambda_neighbours=100.0, progress=False).model
    for name in ("W_in", "W_out", "b_in", "b_out"):
        assert torch.equal(getattr(deep.model.blocks[0].mlp, name), getattr(shallow.blocks[0].mlp, name))


def test_sae_guided_deep_refuses_weights_that_leave_out_a_stage(ew, task):
    with pytest.raises(ValueError, match="train_attn=True"):
        forget(ew.model, ew.sae, task, method="sae_guided_deep", train_attn=False, progress=False)
    with pytest.raises(ValueError, match="key_layers must be layers 0..2"):
        forget(ew.model, ew.sae, task, method="sae_guided_deep", key_layers=(3,), progress=False)


def test_sae_guided_deep_config_names_bad_sharer_parts_and_a_deep_neighbour_term_without_neighbours():
    from irunlearn.methods.sae_guided_deep import SAEGuidedDeepConfig

    with pytest.raises(ValueError, match="sharer_parts=\\('middle',\\)"):
        SAEGuidedDeepConfig(sharer_parts=("middle",))
    with pytest.raises(ValueError, match="lambda_neighbours > 0"):
        SAEGuidedDeepConfig(lambda_neighbours=0.0, lambda_neighbours_deep=100.0)
    assert SAEGuidedDeepConfig(lambda_neighbours=0.0, lambda_neighbours_deep=0.0).lambda_neighbours_deep == 0


def test_sae_guided_tar_config_names_a_bad_relearning_attacker():
    from irunlearn.methods.sae_guided_tar import SAEGuidedTARConfig

    with pytest.raises(ValueError, match="lambda_relearn=0.0 must be > 0"):
        SAEGuidedTARConfig(lambda_relearn=0.0)
    with pytest.raises(ValueError, match="attack_steps=0 >= 1"):
        SAEGuidedTARConfig(attack_steps=0)
    with pytest.raises(ValueError, match="attack_lrs=\\(\\)"):
        SAEGuidedTARConfig(attack_lrs=())
    with pytest.raises(ValueError, match="needs lambda_choice > 0"):
        SAEGuidedTARConfig(lambda_choice=0.0)


def test_the_simulated_attacker_teaches_part_of_each_targets_facts_asks_the_rest_and_leaves_the_model_alone(
    ew, recognizer
):
    """Stage 3's attacker: each draw teaches one attribute or half of them, per target, and asks the others
    (the method's question rows of those attributes, no taught one among them); fine-tuning the copy on the
    lessons drops their loss, the model's own weights stay as they were, and the surrogate's gradient is the
    attacked copy's gradient of L_relearn on exactly the weights named."""
    from irunlearn.entities import UNKNOWN_ANSWER
    from irunlearn.lm import encode_lines, lm_loss
    from irunlearn.methods.sae_guided_deep import NamedFacts, _ValueChoices
    from irunlearn.methods.sae_guided_tar import _SimulatedRelearning

    task = world_task(ew, resolve_targets(ew, n_random=2, seed=TARGET_SEED), recognizer)
    model = ew.model
    params = [model.blocks[2].mlp.W_out, model.blocks[3].attn.W_V]
    attacker = _SimulatedRelearning.build(model, task, params, steps=5, lrs=(1e-3,), seed=0)
    n_templates = len(task.templates)
    for _ in range(6):
        lessons, held_rows = attacker._draw()
        for i, target in enumerate(task.targets):
            asked = {t.attribute for t in task.templates}
            taught = {
                a
                for a in asked
                if any(
                    line.startswith(t.render(target.name))
                    for line in lessons
                    for t in task.templates
                    if t.attribute == a
                )
            }
            held = {task.templates[r % n_templates].attribute for r in held_rows if r // n_templates == i}
            assert taught and held and not taught & held, (taught, held)
            assert len(taught) in (1, len(asked) // 2) and taught | held == asked
    questions = NamedFacts.questions(model, task.targets, task.templates, UNKNOWN_ANSWER, task.prepend_bos)
    choices = _ValueChoices.build(model, task, n_strangers=8, seed=0, idk=UNKNOWN_ANSWER)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    attacker.rng.seed(1)
    lessons, _ = attacker._draw()
    tokens, mask = encode_lines(model.tokenizer, lessons, model.cfg.n_ctx, task.prepend_bos, device=model.cfg.device)
    attacker.rng.seed(1)
    surrogate, loss = attacker.surrogate(model, questions, choices)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    with torch.no_grad():
        assert lm_loss(attacker.student, tokens, mask) < lm_loss(model, tokens, mask) - 0.1
    assert loss > 0
    elsewhere = torch.autograd.grad(surrogate, [model.blocks[0].mlp.W_in], allow_unused=True, retain_graph=True)
    assert elsewhere[0] is None
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(surrogate, params))


@pytest.mark.slow
def test_sae_guided_tar_against_a_simulated_attacker_leaves_half_the_facts_relearning_no_more_than_a_stranger(
    ew, task, evaluator, deep
):
    """On this target stage 2's `unknown` is a thin gate: fine-tuning the default edit on half the target's
    facts brings another back (the attacker's best of five learning rates, 25 steps). With stage 3
    (`sae_guided_tar`) the same attack brings back no more than it teaches a stranger given the same facts,
    and the target is still forgotten, the others kept."""
    attacked = forget(ew.model, ew.sae, task, method="sae_guided_tar", progress=False)
    assert attacked.converged and set(attacked.history["stage"]) == {1, 2, 3}, attacked.stop_reason
    summary, _ = evaluator.evaluate(attacked.model)
    assert summary["forget_acc"] == 0 and summary["idk_rate"] >= 0.95 and summary["retain_acc"] >= 0.98

    def recall(model, strangers=False):
        curves = depth.relearn_attacks(evaluator, model, ["half"], strangers=strangers, steps=(25,))
        return float(depth.best_of_lr(curves).set_index("step").loc[25, "recall"])

    stranger = recall(ew.model, strangers=True)
    assert recall(deep.model) > stranger + 0.1
    assert recall(attacked.model) <= stranger + 0.1
