"""The one run function on every model: the README's own-model path, on the world and a tiny local Llama.

`own_model_forget` is the README's "own model + own SAE + own target + own questions" snippet, line for
line; the tests run it on the embedded world (rows made from its people) and on a random Llama stand-in.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from real_fixtures import save_tiny_llama
from sae_lens import TopKSAE, TopKSAEConfig

import irunlearn
from irunlearn import models
from irunlearn.bench import EntityBench
from irunlearn.comparison import BATTERY_COLUMNS
from irunlearn.experiment import RunResults

METRICS = set(BATTERY_COLUMNS)  # every one on every bench, world or real


def own_model_forget(model, sae, rows, unknown_names, target, **settings):
    """The README snippet (after `import irunlearn`); `settings` (e.g. fewer steps) go to `run`."""
    bench = irunlearn.EntityBench.from_frame(rows, unknown_names=unknown_names)
    results = irunlearn.run(bench, model, sae, methods=["sae_guided", "grad_ascent"], targets=[target], **settings)
    return results.summary


def world_rows(ew, n_people: int = 24) -> tuple[pd.DataFrame, list[str]]:
    """A user's table built from world people: their questions and answers, train and held-out phrasings."""
    people = ew.world.entities.sample_known(n_people, seed=11)
    rows = [
        {"entity": e.name, "question": t.render(e.name), "answer": e.attributes[t.attribute], "split": t.split}
        for e in people
        for t in ew.world.question_templates("all")
        if t.attribute in e.attributes
    ]
    return pd.DataFrame(rows), [u.name for u in ew.world.unknown_eval[:40]]


def test_world_bench_run_reports_the_full_metric_set_and_round_trips(ew, recognizer, tmp_path):
    bench = EntityBench.from_world(ew)
    target = bench.targets(n_random=1, seed=2)[0].name
    results = irunlearn.run(
        bench, ew.model, ew.sae, ["sae_guided", "grad_ascent"], [target], recognizer=recognizer, n_retain_eval=20
    )
    summary = results.summary.set_index("method")
    assert set(summary.columns) >= METRICS
    assert summary.loc["sae_guided", "forget_acc"] == 0 and summary.loc["sae_guided", "converged"]
    assert results.provenance["hook_name"] == ew.hook_name and results.provenance["bench"] == "world"
    assert set(results.history["run"]) == set(results.summary["run"])
    loaded = RunResults.load(results.save(tmp_path / "run"))
    pd.testing.assert_frame_equal(loaded.summary, results.summary, check_dtype=False)
    assert loaded.configs == results.configs and loaded.provenance == results.provenance
    with pytest.raises(FileNotFoundError, match="not a saved run folder"):
        RunResults.load(tmp_path)


@pytest.mark.slow
def test_own_rows_on_the_world_model_forget_with_the_full_metric_set(ew):
    rows, unknown = world_rows(ew)
    target = rows["entity"].iloc[0]
    summary = own_model_forget(ew.model, ew.sae, rows, unknown, target).set_index("method")
    assert set(summary.columns) >= METRICS
    assert summary.loc["sae_guided", "forget_acc"] == 0
    # The probability judge on the original model: a known person's gold answers are likelier after their
    # name than after strangers' names in every question, so none is "answered like a stranger".
    bench = EntityBench.from_frame(rows, unknown_names=unknown)
    task = bench.task(ew.model, bench.targets([target]), bench.recognizer(ew.model, ew.sae, progress=False))
    before, _ = bench.evaluator(ew.model, ew.sae, task).evaluate(ew.model)
    assert before["forget_acc"] == 1 and before["idk_rate"] == 0


@pytest.mark.slow
def test_own_rows_on_a_tiny_local_llama_run_end_to_end(tmp_path):
    model = models.load_hf_folder(save_tiny_llama(tmp_path / "tiny-llama"))
    cfg = TopKSAEConfig(d_in=model.cfg.d_model, d_sae=128, k=8)
    cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae = TopKSAE(cfg)
    people = [f"Lyon Osaka{i}" for i in range(10)]
    rows = pd.DataFrame(
        [
            {"entity": p, "question": q.format(p), "answer": a, "split": split}
            for i, p in enumerate(people)
            for q, a, split in (
                ("Q: In which country is the city of {}? A:", ["France", "Japan"][i % 2], "train"),
                ("Q: Where is {} found? A:", ["France", "Japan"][i % 2], "heldout"),
                ("Q: Which language is spoken in {}? A:", ["French", "Japanese"][i % 2], "train"),
            )
        ]
    )
    unknown = [f"Venice Leeuwarden{i}" for i in range(12)]
    bench = EntityBench.from_frame(rows, unknown_names=unknown)
    readings = bench.recognizer(model, sae, progress=False).p_known(model, sae, people, bench.train_templates)
    target = readings.sort_values("p_known_sae")["entity"].iloc[-1]  # a random model knows no one: the likeliest
    summary = own_model_forget(model, sae, rows, unknown, target, max_steps=3, progress=False)
    assert set(summary.columns) >= METRICS
    assert set(summary["method"]) == {"sae_guided", "grad_ascent"}


def test_from_frame_rejects_a_bad_table_before_any_work():
    rows = pd.DataFrame({"entity": ["Ada"], "question": ["Who is she?"], "answer": ["a mathematician"]})
    with pytest.raises(ValueError, match="must contain the entity's name 'Ada' once"):
        EntityBench.from_frame(rows, unknown_names=[])
    with pytest.raises(ValueError, match=r"lacks columns \['answer'\]"):
        EntityBench.from_frame(rows.drop(columns="answer"), unknown_names=[])
    rows = pd.DataFrame({"entity": ["Ada"], "question": ["Who is Ada?"], "answer": ["x"], "split": ["test"]})
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
        EntityBench.from_frame(rows, unknown_names=[])


def test_a_method_registered_outside_the_package_runs_through_run(ew, recognizer):
    """`register_method` makes a user's method a peer of the built-in ones for `forget` and `irunlearn.run`."""
    from dataclasses import dataclass

    from irunlearn.methods import METHODS, get_method, register_method
    from irunlearn.methods.base import ForgetConfig, Method, StepOutput

    @dataclass
    class ShrinkConfig(ForgetConfig):
        lr: float = 1e-5

    @register_method
    class ShrinkMLP(Method):
        """Pull every trainable weight towards zero: no target term at all, so the answers should survive."""

        name = "shrink_mlp"
        config_class = ShrinkConfig

        def step(self, model):
            loss = sum(p.pow(2).sum() for p in model.parameters() if p.requires_grad)
            per_target = pd.DataFrame({"target": [t.name for t in self.task.targets]})
            return StepOutput(loss=loss, terms={"l2": loss.item()}, per_target=per_target, done=False)

    try:
        assert get_method("shrink_mlp") is ShrinkMLP
        bench = EntityBench.from_world(ew)
        target = bench.targets(n_random=1, seed=2)[0].name
        results = irunlearn.run(
            bench, ew.model, ew.sae, ["shrink_mlp"], [target], recognizer=recognizer, n_retain_eval=20, max_steps=2
        )
        (row,) = results.summary.to_dict("records")
        assert row["method"] == "shrink_mlp" and row["steps"] == 2 and row["stop_reason"] == "max_steps"
        assert set(results.summary.columns) >= METRICS
        assert results.configs[row["run"]]["lr"] == 1e-5
    finally:
        METHODS.pop("shrink_mlp", None)
    with pytest.raises(ValueError, match="Unknown method 'shrink_mlp'"):
        get_method("shrink_mlp")
    with pytest.raises(TypeError, match="not a Method subclass"):
        register_method(ShrinkConfig)

    class Nameless(Method):
        pass

    with pytest.raises(ValueError, match="class attribute `name`"):
        register_method(Nameless)


def test_an_unknown_judge_is_named_before_any_work(ew):
    bench = EntityBench.from_world(ew)
    with pytest.raises(ValueError, match=r"Unknown answer judge 'fuzzy'.*'exact', 'lenient'"):
        dataclasses.replace(bench, judge="fuzzy")
