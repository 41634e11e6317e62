"""Oracles: the world retrained without a forget set. The exclusion is exact, a --small oracle forgets what
it never saw and keeps the rest, its artifacts are checked on load, and the shipped oracles meet acceptance."""

import functools
import itertools
import json
import shutil

import pytest

from irunlearn import load_world
from irunlearn.cli import main
from irunlearn.world.artifacts import DEFAULT_ARTIFACTS, CorruptArtifactError, world_to_json
from irunlearn.world.corpus import known_lines, training_lines
from irunlearn.world.generator import FORGET_SET_SIZES, generate_world
from irunlearn.world.oracle import ORACLE_DIR, load_oracle, oracle_acceptance

N_LINES = 20_000


def test_excluding_people_removes_exactly_their_lines_from_the_same_stream():
    world = generate_world(3, n_known=60, n_unknown_eval=40)
    names = world.forget_sets["forget05"]
    full = list(itertools.islice(training_lines(world, seed=1), N_LINES))
    theirs = set(known_lines(world, people=names))
    kept = list(itertools.islice(training_lines(world, seed=1, exclude=names), N_LINES))
    assert full == list(itertools.islice(training_lines(world, seed=1, exclude=()), N_LINES))
    assert sum(line in theirs for line in full) > 0  # the full stream does teach them
    assert kept[:1000] == [line for line in full if line not in theirs][:1000]  # same draws, their lines out
    assert not any(name in line for line in kept for name in names)  # nor as strangers


def test_standard_forget_sets_are_nested_seeded_and_outside_the_retain_evaluation(ew):
    sets = ew.world.forget_sets
    assert {name: len(people) for name, people in sets.items()} == FORGET_SET_SIZES
    assert set(sets["forget01"]) < set(sets["forget05"]) < set(sets["forget10"])
    assert not set(sets["forget10"]) & {e.name for e in ew.world.retain_eval_people()}
    assert all(ew.world.entities.is_known(name) for name in sets["forget10"])
    # chosen from the seed alone, without changing anything else the world is made of
    regenerated = world_to_json(generate_world(ew.world.seed))
    assert regenerated == json.loads((DEFAULT_ARTIFACTS / "world.json").read_text())
    assert generate_world(1).forget_sets != sets


def test_oracle_build_rejects_a_bad_forget_set_or_flags_before_any_work(tmp_path, capsys):
    assert main(["world", "build", "--forget-set", "forget99", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "No forget set 'forget99'" in capsys.readouterr().err
    assert main(["world", "build", "--forget-set", "forget01", "--small", "--quiet"]) == 2
    assert "drop --small" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def small_oracle(small_world, tmp_path_factory):
    """A copy of the session's --small world and its forget05 oracle, built through the CLI."""
    world_dir = tmp_path_factory.mktemp("oracle") / "small"
    shutil.copytree(small_world[0], world_dir)
    assert main(["world", "build", "--forget-set", "forget05", "--path", str(world_dir), "--quiet"]) == 0
    ew = load_world(world_dir)
    return ew, load_oracle("forget05", ew)


@pytest.mark.slow
def test_a_small_oracle_never_learned_its_forget_set_and_kept_the_rest(small_oracle):
    from irunlearn.world.recognition import recognize_world

    ew, oracle = small_oracle
    assert [e.name for e in oracle.forget] == ew.world.forget_sets["forget05"]
    figures = oracle_acceptance(ew, oracle)
    assert figures["forget_idk_rate"] >= 0.9, figures  # names it never saw are strangers to it
    assert abs(figures["known_qa_acc"] - figures["world_known_qa_acc"]) <= 0.02, figures
    assert figures["forget_quality_self"] == 1.0
    assert oracle.info["timings"]["total_s"] > 0 and oracle.info["stats"]["n_forget"] == 5
    # its own recognizer reads the forget set as unknown; the world's reads them as known
    names = [e.name for e in oracle.forget]
    assert oracle.recognizer.p_known(oracle.model, oracle.sae, names)["p_known_sae"].mean() < 0.5
    world_recognizer, _ = recognize_world(ew, progress=False)
    assert world_recognizer.p_known(ew.model, ew.sae, names)["p_known_sae"].mean() > 0.5


@pytest.mark.slow
def test_a_small_oracles_artifacts_are_checked_on_load(small_oracle):
    ew, oracle = small_oracle
    weights = oracle.path / "recognizer" / "recognizer.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-8] + b"\0" * 8)
        with pytest.raises(CorruptArtifactError, match="recognizer.safetensors"):
            load_oracle("forget05", ew)
    finally:
        weights.write_bytes(original)
    with pytest.raises(CorruptArtifactError, match="another world.json"):
        load_oracle("forget05", load_world(), path=oracle.path)  # the shipped world is not its world
    with pytest.raises(FileNotFoundError, match="--forget-set forget01"):
        load_oracle("forget01", ew)


@functools.cache
def _shipped_acceptance(name: str) -> dict:
    if not (DEFAULT_ARTIFACTS / ORACLE_DIR / name).exists():
        pytest.skip(f"oracle {name} not built: `irunlearn world build --forget-set {name}` (~30 min of CPU)")
    ew = load_world()
    return oracle_acceptance(ew, load_oracle(name, ew))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FORGET_SET_SIZES))
def test_shipped_oracle_never_learned_its_forget_set_and_knows_the_rest(name):
    figures = _shipped_acceptance(name)
    assert figures["forget_idk_rate"] >= 0.95, figures
    assert abs(figures["known_qa_acc"] - figures["world_known_qa_acc"]) <= 0.01, figures
    assert figures["forget_quality_self"] == 1.0, figures


# Measured on the shipped oracles: held-out generic perplexity +1.6 % (forget01), +5.3 % (forget05) and
# +6.0 % (forget10) against the world's 16.40, while their QA matches; the 2 % bound is kept, and
# the two that miss it are expected failures: the world's own model rebuilt from its seed with nothing
# removed reads +6.0 % (analysis/oracle_control.py; the shipped world was trained on two threads, not
# reproducibly), so the bound needs a reproducible reference first.
PPL_MISSES = {"forget05": "+5.3 % measured", "forget10": "+6.0 % measured"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=PPL_MISSES[n])) if n in PPL_MISSES else n
        for n in FORGET_SET_SIZES
    ],
)
def test_shipped_oracle_perplexity_is_within_two_percent_of_the_world(name):
    figures = _shipped_acceptance(name)
    assert abs(figures["generic_ppl"] / figures["world_generic_ppl"] - 1) <= 0.02, figures
