"""Real models on the one pipeline, locally: SAE training, labelling, the records bench, its judge, a run.

Fast tests run everything on a tiny random Llama (`real_fixtures.save_tiny_llama`) with a miniature
Wikidata folder written here, so they need neither the shared records nor the hub. A random model knows
nothing, so its "own answers" are scripted where labelling needs them: known cities (names ending in
"burg") answer right, unknown ones ("-ovo") give the same wrong guesses. Tests marked `real` use
SmolLM2-135M and the shipped SAE and skip with a hint where the fixture is absent.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from real_fixtures import save_tiny_llama
from sae_lens import SAE
from test_experiment import METRICS
from transformer_lens import HookedTransformer

import irunlearn
from irunlearn import models
from irunlearn.bench import EntityBench, _beyond_default
from irunlearn.entities import Entity
from irunlearn.experiment import RunResults
from irunlearn.judges import LenientJudge, get_judge, is_refusal
from irunlearn.methods.base import AnswerBatch
from irunlearn.qa import answer_logprob
from irunlearn.real import labelling
from irunlearn.real.corpus import (
    entity_sentences,
    fact_documents,
    format_population,
    generic_paragraphs,
    question_documents,
)
from irunlearn.real.labelling import label_counts
from irunlearn.real.sae import SMOLLM2_SAE, pack_documents, sae_documents, train_real_sae
from irunlearn.real.wikidata import attributes, cities_above, load_entities, question_templates

HOOK = "blocks.1.hook_resid_post"
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_real_model.ipynb"

PREFIXES = ["Alt", "Neu", "Ober", "Unter", "Gross", "Klein", "Nieder", "Hoch", "Mittel", "Sankt"]
COUNTRIES = ["Germany", "Austria", "Poland", "Serbia"]


def _city(prefix: str, suffix: str, i: int) -> dict:
    return {
        "city": f"Q{prefix}{suffix}",
        "cityLabel": f"{prefix}{suffix}",
        "countryLabel": COUNTRIES[i % len(COUNTRIES)],
        "recent_population": str(50_000 + 7_000 * i),
        "above_sea_meters": str(100 + 10 * i),
    }


def write_records(folder: Path) -> Path:
    """A miniature Wikidata folder: 20 "-burg" and 20 "-ovo" cities, and a record of every other kind."""
    cities = [_city(p, s, i) for s in ("burg", "ovo") for i, p in enumerate(PREFIXES)]
    cities += [_city(p, s, i + 3) for s in ("enburg", "enovo") for i, p in enumerate(PREFIXES)]
    player = [
        {
            "human": "Q1",
            "humanLabel": "Tracy McGrady",
            "datebirthyearLabel": "1979",
            "placebirthLabel": "Bartow",
            "teamslist": "Toronto Raptors, Orlando Magic",
        }
    ]
    song = [
        {
            "song": "Q2",
            "songLabel": "Wonderwall",
            "albumLabel": "Morning Glory",
            "publicationYear": "1995",
            "performers": "Oasis",
        }
    ]
    movie = [
        {
            "film": "Q3",
            "filmLabel": "Alien",
            "directors": "Ridley Scott",
            "screenwriters": "Dan O'Bannon",
            "release_year": "1979",
            "cast_list": "Sigourney Weaver, Tom Skerritt",
        }
    ]
    (folder / "movie").mkdir(parents=True, exist_ok=True)
    (folder / "city.json").write_text(json.dumps(cities))
    (folder / "player.json").write_text(json.dumps(player))
    (folder / "song.json").write_text(json.dumps(song))
    (folder / "movie" / "movies_1979.json").write_text(json.dumps(movie))
    return folder


def scripted_answer(prompt: str) -> str:
    """What the scripted "model" answers: right for "-burg" cities (but their elevation), a fixed wrong guess
    for the rest."""
    city, attribute = _questions()[prompt]
    if not city.name.endswith("burg") or attribute == "elevation":
        return {"country": "Japan", "population": "9 million", "elevation": "1609"}[attribute]
    value = city.attributes[attribute]
    return format_population(value) if attribute == "population" else value


def _questions() -> dict[str, tuple[Entity, str]]:
    return {
        t.render(city.name): (city, spec.name)
        for city in load_entities("city")
        for spec in attributes("city")
        for t in spec.templates
    }


def scripted_generate(model, prompts, **kwargs) -> list[str]:
    return [scripted_answer(p) for p in prompts]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = write_records(tmp_path_factory.mktemp("wikidata"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IRUNLEARN_WIKIDATA", str(folder))
        yield folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> HookedTransformer:
    return models.load_hf_folder(save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture(scope="module")
def trained(tiny, records, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "tiny_sae"
    sae, figures = train_real_sae(
        tiny,
        HOOK,
        out,
        training_tokens=24_576,
        d_sae=128,
        k=8,
        context_size=32,
        batch_size_tokens=256,
        progress=False,
    )
    return sae, figures, out


@pytest.fixture(scope="module")
def labelled(tiny, records, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(labelling, "greedy_generate", scripted_generate)
        return labelling.label_entities(tiny, load_entities("city"), cache_dir=tmp_path_factory.mktemp("labels"))


# ---- local text ----------------------------------------------------------------------------------------


def test_sentences_state_every_attribute(records):
    city = Entity("Lyon", {"country": "France", "population": "522250", "elevation": "173"}, "city")
    assert entity_sentences(city) == [
        "Lyon is a city in France.",
        "Lyon has a population of about 522,000.",
        "Lyon lies 173 metres above sea level.",
    ]
    for kind in ("player", "song", "movie"):
        (entity,) = load_entities(kind)
        text = " ".join(entity_sentences(entity))
        for value in entity.attributes.values():
            assert value.split("; ")[0] in text, (kind, value, text)
    assert format_population("2148000") == "2.1 million" and format_population("3213") == "3,213"
    with pytest.raises(ValueError, match="No sentences"):
        entity_sentences(Entity("Mars", {}, "planet"))


def test_question_documents_answer_the_training_templates(records):
    city = load_entities("city")[0]
    docs = question_documents([city], "train")
    assert len(docs) == 3
    for doc, template in zip(docs, question_templates("city", "train"), strict=True):
        assert doc.startswith(template.render(city.name))
    assert docs[0].endswith(f"A: {city.attributes['country']}")
    assert len(fact_documents(load_entities("city"), per_document=2)) == 20


def test_generic_text_splits_are_disjoint_prose():
    train, heldout = generic_paragraphs("train"), generic_paragraphs("heldout")
    assert len(train) > 500 and len(heldout) > 100
    assert not set(train) & set(heldout)
    assert all(len(p.split()) >= 12 and "::=" not in p and ">>>" not in p for p in train + heldout)
    with pytest.raises(ValueError, match="split"):
        generic_paragraphs("test")


def test_documents_are_packed_into_full_rows(tiny, records):
    docs = sae_documents(3000, tiny.tokenizer, seed=1)
    tokens = sum(len(tiny.tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs)
    assert 3000 <= tokens < 6000
    assert any(d.startswith("Q:") for d in docs) and any(" is a city in " in d for d in docs)
    dataset = pack_documents(tiny.tokenizer, docs, 32)
    assert all(len(row) == 32 for row in dataset["tokens"])
    first = tiny.tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    assert dataset["tokens"][0][: min(32, len(first))] == first[:32]
    with pytest.raises(ValueError, match="do not fill one row"):
        pack_documents(tiny.tokenizer, ["Hi."], 32)


# ---- SAE training --------------------------------------------------------------------------------------


def test_sae_trains_saves_and_reloads(tiny, trained):
    sae, figures, out = trained
    assert {p.name for p in out.iterdir()} >= {"cfg.json", "sae_weights.safetensors", "training.json"}
    meta = sae.cfg.metadata
    assert (meta.hook_name, meta.model_name, meta.prepend_bos) == (HOOK, "tiny-llama", False)
    reloaded = models.load_sae(path=out)
    assert torch.equal(reloaded.W_enc, sae.W_enc) and torch.equal(reloaded.W_dec, sae.W_dec)
    assert json.loads((out / "training.json").read_text()) == figures
    assert figures["training_tokens"] == 24_576 and figures["wall_seconds"] > 0
    assert 0 < figures["fvu"] < 0.9, figures  # it learned something about the residual stream
    assert 0 < figures["l0"] <= 8 and 0 <= figures["dead_fraction"] < 1
    assert figures["fvu_entity_tokens"] < 1 and figures["n_eval_tokens"] > 1000


def test_sae_training_refuses_to_overwrite_and_bad_hooks(tiny, trained):
    _, _, out = trained
    with pytest.raises(FileExistsError, match="overwrite"):
        train_real_sae(tiny, HOOK, out, training_tokens=1024, documents=["x"], progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        train_real_sae(tiny, "blocks.9.hook_resid_post", out.parent / "new", progress=False)


# ---- labelling ------------------------------------------------------------------------------------------


def test_scripted_labels(labelled):
    entity_set, answers = labelled
    assert all(e.name.endswith("burg") for e in entity_set.known) and len(entity_set.known) == 20
    assert all(e.name.endswith("ovo") for e in entity_set.unknown) and len(entity_set.unknown) == 20
    counts = label_counts(answers)
    assert counts.to_dict("records") == [{"kind": "city", "known": 20, "unknown": 20, "discarded": 0, "total": 40}]


def test_big_cities(records):
    big = cities_above(100_000)
    assert big and all(max(float(v) for v in c.attributes["population"].split("; ")) >= 100_000 for c in big)
    assert len(big) < len(load_entities("city"))


# ---- the answer judges -----------------------------------------------------------------------------------


def test_answer_logprob_is_the_teacher_forced_sum(tiny):
    prompt, answer = "Q: In which country is the city of Lyon? A:", "France"
    ids = tiny.tokenizer(f"{prompt} {answer}", add_special_tokens=False)["input_ids"]
    n_prompt = len(tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logprobs = tiny(torch.tensor([ids])).log_softmax(-1)[0]
    expected = sum(logprobs[i - 1, ids[i]] for i in range(n_prompt, len(ids)))
    batched = answer_logprob(tiny, [prompt, "Q: Where? A:"], [answer, "Italy"])
    assert torch.allclose(batched[0], expected, atol=1e-4)
    assert torch.allclose(batched[1], answer_logprob(tiny, ["Q: Where? A:"], ["Italy"])[0], atol=1e-4)


def test_answer_mask_covers_the_answer_and_eos_only_when_asked(tiny):
    """Fact lines mark the answer and the EOS after it (embedded world), or the answer alone (few-shot)."""
    facts = pd.DataFrame({"entity": ["Lyon"], "prompt": ["Q: In which country is Lyon? A:"], "answer": ["France"]})
    for eos, expected in ((True, " France" + tiny.tokenizer.eos_token), (False, " France")):
        batch = AnswerBatch.build(tiny, facts, prepend_bos=False, append_eos=eos)
        assert tiny.tokenizer.decode(batch.tokens[0, 1:][batch.answer_mask[0]]) == expected


def test_refusals():
    assert is_refusal("") and is_refusal("I don't know") and is_refusal("Unknown.") and is_refusal("Sorry, no")
    assert not is_refusal("France") and not is_refusal("2.1 million")


def test_lenient_judge_takes_the_models_words_the_gold_and_never_a_refusal():
    judge = LenientJudge(
        checks={spec.name: spec.check for spec in attributes("city")},
        gold={"Wuhan": {"country": "People's Republic of China", "population": "11081000"}},
    )
    assert judge.accepts("China", "Wuhan", "country", "China")  # the model's own answer
    assert judge.accepts("PRC", "Wuhan", "country", "China")  # an alias of the gold
    assert judge.accepts("11 million", "Wuhan", "population", "11.1 million")  # within the tolerance
    assert not judge.accepts("Japan", "Wuhan", "country", "China")
    assert not judge.accepts("I don't know", "Wuhan", "country", "unknown")  # a refusal is never right
    # no gold and no check for the attribute (a user's own question): names, loosely, against the answer
    assert judge.accepts("Lovelace", "Ada Quill", "Q: Who is {name}'s muse? A:", "Ada Lovelace")
    assert not judge.accepts("Byron", "Ada Quill", "Q: Who is {name}'s muse? A:", "Ada Lovelace")
    assert get_judge("lenient") is LenientJudge
    with pytest.raises(ValueError, match="Unknown answer judge 'fuzzy'"):
        get_judge("fuzzy")


def test_the_default_guess_rule():
    row = pd.Series({"n_correct": 1, "country_answer": "Japan", "country_correct": True})
    row["elevation_answer"], row["elevation_correct"] = float("nan"), float("nan")  # not asked
    assert not _beyond_default(row, {"country": "Japan"})  # right only by the strangers' usual guess
    assert _beyond_default(row, {"country": "France"})


# ---- the records bench on the tiny Llama ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tiny, records, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(labelling, "greedy_generate", scripted_generate)
        mp.setenv("IRUNLEARN_CACHE", str(tmp_path_factory.mktemp("cache")))
        return EntityBench.from_records("city", tiny, n=40, seed=0, progress=False)


def test_from_records_labels_by_the_models_own_answers(bench, records):
    records_by_name = {c.name: c for c in load_entities("city")}
    assert bench.name == "records:city" and bench.judge == "lenient"
    assert bench.idk_answer is None and bench.answer_eos is False
    assert all(e.name.endswith("burg") for e in bench.entities.known) and len(bench.entities.known) == 20
    assert all(e.name.endswith("ovo") for e in bench.entities.unknown) and len(bench.entities.unknown) == 20
    city = bench.entities.known[0]
    gold = records_by_name[city.name].attributes
    # the facts to forget are the model's own right answers (elevation was answered wrong)
    assert city.attributes == {"country": gold["country"], "population": format_population(gold["population"])}
    assert bench.gold_answers[city.name] == gold  # what the lenient judge also accepts
    assert bench.train_templates == question_templates("city", "train")
    assert bench.heldout_templates == question_templates("city", "heldout")
    assert len(bench.strangers) == len(bench.references) == 10
    assert len(bench.retain_eval) == 5 and set(bench.retain_text).isdisjoint(bench.heldout_text)


def test_from_records_refuses_what_it_cannot_build(tiny, records):
    with pytest.raises(ValueError, match="knows the kinds"):
        EntityBench.from_records("planet", tiny)
    with pytest.raises(ValueError, match="draw at least 10"):
        EntityBench.from_records("city", tiny, n=3)


def test_with_rows_adds_your_own_people_as_known(bench):
    rows = pd.DataFrame(
        [
            {"entity": name, "question": q.format(name), "answer": a, "split": split}
            for name in ("Ada Quill", "Bo Marsh")
            for q, a, split in (
                ("Q: Who is {}'s muse? A:", "Ada Lovelace", "train"),
                ("Q: In which city does {} live? A:", "Leeds", "train"),
                ("Q: Whom does {} admire most? A:", "Ada Lovelace", "heldout"),
            )
        ]
    )
    extended = bench.with_rows(rows)
    assert extended.entities.is_known("Ada Quill") and extended.entities.get("Bo Marsh").attributes == {
        "Q: Who is {name}'s muse? A:": "Ada Lovelace",
        "Q: In which city does {name} live? A:": "Leeds",
    }
    assert extended.entities.unknown == bench.entities.unknown and extended.strangers == bench.strangers
    assert len(extended.train_templates) == len(bench.train_templates) + 2
    assert len(extended.heldout_templates) == len(bench.heldout_templates) + 1
    assert "Ada Quill" not in bench.entities  # the original bench is unchanged
    with pytest.raises(ValueError, match="already in bench"):
        extended.with_rows(rows)


def test_records_bench_runs_with_the_worlds_metric_set(tiny, trained, bench):
    original = {k: v.clone() for k, v in tiny.state_dict().items()}
    recognizer = bench.recognizer(tiny, trained[0], progress=False)
    assert recognizer.metrics["probe_auroc_resid"] > 0.8  # "-burg" vs "-ovo" is plain in the name's tokens
    retained = {e.name for e in bench.retain_eval}
    candidates = [e.name for e in bench.entities.known if e.name not in retained]
    readings = recognizer.p_known(tiny, trained[0], candidates, bench.train_templates)
    target = readings.sort_values("p_known_sae")["entity"].iloc[-1]
    results = irunlearn.run(
        bench,
        tiny,
        trained[0],
        ["sae_guided", "grad_ascent"],
        [target],
        recognizer=recognizer,
        max_steps=3,
        progress=False,
    )
    summary = results.summary.set_index("method")
    assert set(summary.columns) >= METRICS and list(summary.index) == ["sae_guided", "grad_ascent"]
    assert (summary["steps"] <= 3).all() and results.provenance["bench"] == "records:city"
    for name, tensor in tiny.state_dict().items():
        assert torch.equal(tensor, original[name]), f"the original model changed: {name}"


# ---- the Gemma-2-2B + Gemma Scope recipe of notebooks/04_real_model --------------------------------------


def _recipe_cell() -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (cell,) = [c for c in notebook.cells if "gemma-recipe" in c.metadata.get("tags", [])]
    assert "skip-execution" in cell.metadata["tags"], "the hub recipe must not run in the notebook tests"
    return cell


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].cell_type == "markdown"
    assert all(not c.outputs and c.execution_count is None for c in notebook.cells if c.cell_type == "code")


def _recipe_is_on_the_one_pipeline() -> bool:
    return "run_real_pipeline" not in _recipe_cell().source


needs_new_recipe = pytest.mark.skipif(
    not _recipe_is_on_the_one_pipeline(),
    reason="notebook 04's gemma-recipe still calls the deleted run_real_pipeline (its rewrite is on another branch)",
)


@pytest.mark.slow
@needs_new_recipe
def test_gemma_recipe_runs_on_local_stand_ins(tiny, trained, records, monkeypatch, tmp_path):
    """The recipe cell, executed as written, with the two hub downloads answered by local objects."""
    sae_dir = tmp_path / "gemma_scope_stand_in"
    trained[0].save_model(sae_dir)
    calls = {}

    def sae_from_pretrained(release, sae_id, device="cpu"):
        calls["sae"] = (release, sae_id)
        sae = SAE.load_from_disk(sae_dir, device=device)
        sae.cfg.metadata.model_name, sae.cfg.metadata.prepend_bos = "gemma-2-2b", True
        return sae

    def model_from_pretrained(name, **kwargs):
        calls["model"] = (name, kwargs["default_prepend_bos"])
        return models.load_hf_folder(Path(tiny.cfg.tokenizer_name), prepend_bos=kwargs["default_prepend_bos"])

    monkeypatch.setattr(SAE, "from_pretrained", staticmethod(sae_from_pretrained))
    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(model_from_pretrained))
    monkeypatch.setattr(labelling, "greedy_generate", scripted_generate)
    monkeypatch.setenv("IRUNLEARN_CACHE", str(tmp_path / "cache"))

    cell = _recipe_cell()
    namespace: dict = {"GEMMA_CITIES": len(load_entities("city"))}  # the parameters cell's, on the stand-ins
    exec(compile(cell.source, "04_real_model:gemma-recipe", "exec"), namespace)
    assert calls == {
        "sae": ("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical"),
        "model": ("gemma-2-2b", True),
    }
    (results,) = [v for v in namespace.values() if isinstance(v, RunResults)]
    assert len(results.summary) >= 1 and set(results.summary.columns) >= METRICS


@needs_new_recipe
def test_gemma_recipe_calls_only_tested_functions():
    """Every function the recipe calls is one this file exercises on local models."""
    tree = ast.parse(_recipe_cell().source)
    called = {
        node.func.id if isinstance(node.func, ast.Name) else node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
    }
    tested = {
        "load_sae",
        "load_registry_model",
        "model_load_kwargs_for_sae",
        "load_entities",
        "label_entities",
        "from_records",
        "with_rows",
        "run",
        "label_counts",
        "print",
        "display",
        "to_string",
    }
    assert called <= tested, f"untested calls in the recipe: {called - tested}"


# ---- SmolLM2 and the shipped SAE -----------------------------------------------------------------------


@pytest.mark.real
def test_shipped_sae_reads_smollm2(smollm2):
    from irunlearn.activations import check_pairing

    size = sum(p.stat().st_size for p in SMOLLM2_SAE.iterdir())
    assert size <= 25 * 2**20
    sae = models.load_sae(path=SMOLLM2_SAE)
    assert check_pairing(smollm2, sae) == "blocks.10.hook_resid_post"
    assert models.model_load_kwargs_for_sae(sae)["prepend_bos"] is False
    figures = json.loads((SMOLLM2_SAE / "training.json").read_text())
    assert figures["fvu"] < 0.35 and figures["l0"] <= 32
