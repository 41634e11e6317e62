"""The embedded world: generator invariants, the shipped artifacts, and their acceptance figures."""

import json
import shutil
import time

import pytest

from irunlearn import load_world
from irunlearn.cli import main
from irunlearn.world.artifacts import DEFAULT_ARTIFACTS, CorruptArtifactError
from irunlearn.world.generator import ATTRIBUTE_VALUES, generate_world
from irunlearn.world.stats import world_stats


def test_generator_is_deterministic_and_meets_the_spec():
    world, again = generate_world(0), generate_world(0)
    assert [e.name for e in world.known] == [e.name for e in again.known]
    assert [e.attributes for e in world.known] == [e.attributes for e in again.known]
    assert generate_world(1).known[0].name != world.known[0].name
    assert len(world.known) >= 400 and len(world.unknown_eval) >= 300
    assert all(len(e.attributes) >= 4 for e in world.known)
    assert not {e.name for e in world.known} & {e.name for e in world.unknown_eval}
    for attribute in ATTRIBUTE_VALUES:
        assert len(world.question_templates("train", attribute)) >= 3
        assert len(world.question_templates("heldout", attribute)) >= 2
    train_texts = {t.text for t in world.templates if t.split == "train"}
    assert not train_texts & {t.text for t in world.question_templates("heldout")}
    assert world.generic_heldout and not set(world.generic_heldout) & set(world.generic_train)


def test_fresh_unknown_names_never_collide_with_the_world():
    import random

    world = generate_world(0)
    rng = random.Random(0)
    names = {world.fresh_unknown_name(rng) for _ in range(3000)}
    assert not names & {e.name for e in world.entities}
    assert len(names) > 2500  # fresh names, not a short list


def test_names_are_multi_token(ew):
    counts = [len(ew.tokenizer(" " + e.name, add_special_tokens=False)["input_ids"]) for e in ew.world.known]
    assert min(counts) >= 2  # at least a first-name and a last-name token
    assert sum(c >= 3 for c in counts) >= 50  # and many longer names, so "last token" is a real choice


def test_load_world_is_fast_and_complete():
    start = time.perf_counter()
    ew = load_world()
    assert time.perf_counter() - start < 10
    assert ew.hook_name in ew.model.hook_dict
    assert ew.sae.cfg.d_in == ew.model.cfg.d_model
    oracles = DEFAULT_ARTIFACTS / "oracles"  # separate artifacts, each sealed by its own manifest
    size = sum(p.stat().st_size for p in DEFAULT_ARTIFACTS.rglob("*") if p.is_file() and oracles not in p.parents)
    assert size <= 20 * 2**20


def test_shipped_world_meets_its_acceptance_figures(ew):
    stats = world_stats(ew)
    assert stats["known_qa_acc"] >= 0.95
    assert stats["known_qa_acc_heldout_templates"] >= 0.85
    assert stats["unknown_idk_rate"] >= 0.90
    assert stats["sae_fvu"] <= 0.15
    assert stats["sae_dead_frac"] <= 0.2
    assert stats["n_known"] >= 400 and stats["n_unknown_eval"] >= 300


def test_corrupted_artifact_is_named_on_load(tmp_path):
    copy = tmp_path / "world"
    shutil.copytree(DEFAULT_ARTIFACTS, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="model.safetensors"):
        load_world(copy)
    shutil.copy(DEFAULT_ARTIFACTS / "model.safetensors", weights)
    (copy / "sae" / "cfg.json").unlink()
    with pytest.raises(CorruptArtifactError, match="missing"):
        load_world(copy, verify=True)


def test_missing_world_folder_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError, match="irunlearn world build"):
        load_world(tmp_path)


def test_build_refuses_a_non_empty_out_without_force(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("precious")
    assert main(["world", "build", "--out", str(tmp_path), "--small", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "precious"


@pytest.mark.slow
def test_world_stats_cli_prints_one_json_object(capsys):
    assert main(["world", "stats", "--json", "--quiet"]) == 0
    stats = json.loads(capsys.readouterr().out)
    for key in (
        "known_qa_acc",
        "known_qa_acc_heldout_templates",
        "unknown_idk_rate",
        "generic_ppl",
        "sae_fvu",
        "sae_l0",
        "sae_dead_frac",
        "hook_name",
        "n_known",
        "n_unknown_eval",
    ):
        assert key in stats


def test_world_tasks_never_train_on_the_evaluators_retain_people(ew, recognizer):
    from irunlearn.world.generator import N_RETAIN_EVAL
    from irunlearn.world.tasks import resolve_targets, retain_eval_people, world_evaluator, world_task

    held_out = {e.name for e in retain_eval_people(ew)}
    assert len(held_out) == N_RETAIN_EVAL and held_out == {e.name for e in retain_eval_people(ew)}
    targets = resolve_targets(ew, n_random=10, seed=0)
    task = world_task(ew, targets, recognizer)
    evaluator = world_evaluator(ew, task)
    retain, evaluated = {e.name for e in task.retain}, {e.name for e in evaluator.retain_eval}
    assert not retain & evaluated and not evaluated & {t.name for t in targets}
    assert evaluated == held_out - {t.name for t in targets}  # every held-out person but the targets
    assert len(retain) + len(held_out | {t.name for t in targets}) == len(ew.world.known)
    subset = world_evaluator(ew, task, n_retain_eval=40, seed=3).retain_eval
    assert len(subset) == 40 and {e.name for e in subset} <= evaluated
    with pytest.raises(ValueError, match="held-out entities left"):
        world_evaluator(ew, task, n_retain_eval=N_RETAIN_EVAL + 1)
