"""The real-model pipeline on local models: SAE training, recognition, forgetting, evaluation, the Gemma recipe.

Fast tests run everything on a tiny random Llama (`real_fixtures.save_tiny_llama`) with a miniature
Wikidata folder written here, so they need neither the shared records nor the hub. A random model knows
nothing, so its "own answers" are scripted where labelling needs them: known cities (names ending in
"burg") answer right, unknown ones ("-ovo") give the same wrong guesses. Tests marked `real` use
SmolLM2-135M and the shipped SAE and skip with a hint where the fixture is absent.
"""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from real_fixtures import save_tiny_llama
from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn import models
from irunlearn.entities import Entity
from irunlearn.methods.base import AnswerBatch
from irunlearn.real import evaluation as real_evaluation
from irunlearn.real import labelling
from irunlearn.real.corpus import (
    entity_sentences,
    fact_documents,
    format_population,
    generic_paragraphs,
    question_documents,
)
from irunlearn.real.evaluation import RealEvaluator, answer_logprob, attribute_questions, is_refusal
from irunlearn.real.pipeline import (
    RealPipelineConfig,
    choose_targets,
    cities_above,
    default_answers,
    label_cities,
    label_counts,
    model_facts,
    recognise,
    run_real_pipeline,
)
from irunlearn.real.sae import SMOLLM2_SAE, pack_documents, sae_documents, train_real_sae
from irunlearn.real.wikidata import attributes, load_entities, question_templates

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


# ---- labelling, recognition, targets -------------------------------------------------------------------


def test_scripted_labels(labelled):
    entity_set, answers = labelled
    assert all(e.name.endswith("burg") for e in entity_set.known) and len(entity_set.known) == 20
    assert all(e.name.endswith("ovo") for e in entity_set.unknown) and len(entity_set.unknown) == 20
    counts = label_counts(answers)
    assert counts.to_dict("records") == [{"kind": "city", "known": 20, "unknown": 20, "discarded": 0, "total": 40}]
    assert default_answers(answers) == {"country": "Japan", "population": "9 million", "elevation": "1609"}
    target = model_facts(entity_set.known[0], answers)
    assert set(target.attributes) == {"country", "population"}  # elevation was answered wrong
    assert target.attributes["population"] == format_population(entity_set.known[0].attributes["population"])


def test_label_cities_big_ones_plus_a_sample(tiny, records, monkeypatch, tmp_path):
    monkeypatch.setattr(labelling, "greedy_generate", scripted_generate)
    monkeypatch.setattr(labelling, "cache_root", lambda: tmp_path)
    big = cities_above(100_000)
    assert big and all(max(float(v) for v in c.attributes["population"].split("; ")) >= 100_000 for c in big)
    entity_set, answers = label_cities(tiny, min_population=100_000, n_random=10, seed=0, progress=False)
    names = [e.name for e in entity_set]
    assert len(names) == len(set(names)) and answers["name"].is_unique
    assert set(answers.loc[answers["label"] != "discarded", "name"]) == set(names)
    assert {c.name for c in big} <= set(names) and len(names) > len(big)


@pytest.fixture(scope="module")
def recognizer(tiny, trained, labelled):
    return recognise(tiny, trained[0], labelled[0], seed=0, n_generic_latents=8, progress=False)


def test_recognition_reports_heldout_entities_and_templates(recognizer):
    metrics = recognizer.metrics
    assert metrics["probe_auroc_resid"] > 0.8, metrics  # "-burg" vs "-ovo" is plain in the name's tokens
    assert metrics["n_test_rows"] == 8 * 3  # 4 + 4 held-out entities × 3 held-out templates
    assert [t.split for t in recognizer.templates] == ["train"] * 3


def test_targets_are_heldout_recognised_and_not_default(tiny, trained, labelled, recognizer):
    entity_set, answers = labelled
    targets = choose_targets(tiny, trained[0], recognizer, entity_set, answers, n=1, seed=0)
    fit_set, _ = entity_set.split(0.6, 0)
    assert targets[0] in entity_set.known and targets[0] not in fit_set.known
    readings = recognizer.p_known(tiny, trained[0], [targets[0].name])
    assert (readings[["p_known_sae", "p_known_resid"]] >= 0.5).all(axis=None)
    with pytest.raises(ValueError, match="eligible targets"):
        choose_targets(tiny, trained[0], recognizer, entity_set, answers, n=40, seed=0)


# ---- evaluation ----------------------------------------------------------------------------------------


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


def test_evaluator_counts_refusals_and_stranger_level(tiny, trained, labelled, recognizer, monkeypatch):
    entity_set, _ = labelled
    target = entity_set.known[0]
    edited = copy.deepcopy(tiny)

    def generate(model, prompts, **kwargs):
        return ["I don't know" if model is edited else scripted_answer(p) for p in prompts]

    monkeypatch.setattr(real_evaluation, "greedy_generate", generate)
    evaluator = RealEvaluator(
        tiny,
        trained[0],
        recognizer,
        [target],
        entity_set.known[1:4],
        entity_set.unknown[:3],
        generic_paragraphs("heldout")[:4],
    )
    before = evaluator.per_target(tiny).iloc[0]
    assert before["forget_acc"] == pytest.approx(2 / 3) and before["paraphrase_forget_acc"] == pytest.approx(2 / 3)
    assert before["n_known_facts"] == 4  # country and population, training and held-out phrasings

    # the probability rule, recomputed by hand for the original model
    questions = attribute_questions([target])
    known = questions[questions["attribute"] != "elevation"]
    references = [scripted_answer(p) for p in known["prompt"]]
    own = answer_logprob(tiny, list(known["prompt"]), references)
    stranger = torch.stack(
        [
            answer_logprob(tiny, [t.render(u.name) for u in entity_set.unknown[:3]], [r] * 3)
            for t, r in zip(known["template"], references, strict=True)
        ]
    )
    assert before["idk_rate"] == pytest.approx(float((own <= stranger.median(1).values).float().mean()))

    summary, rows = evaluator.evaluate(edited, [target])
    assert rows.iloc[0]["forget_acc"] == 0 and rows.iloc[0]["idk_rate"] == 1  # every answer a refusal
    assert summary["retain_acc"] == 0 and summary["ppl_ratio"] == pytest.approx(1.0)
    assert summary["probe_p_known_sae"] == pytest.approx(before["probe_p_known_sae"], abs=1e-5)


def test_evaluator_needs_strangers(tiny, trained, labelled, recognizer):
    with pytest.raises(ValueError, match="unknown_reference"):
        RealEvaluator(tiny, trained[0], recognizer, labelled[0].known[:1], [], [], ["Some text here."])


# ---- the whole pipeline --------------------------------------------------------------------------------


def small_config(n_targets: int, sae_guided_steps: int, grad_ascent_steps: int) -> RealPipelineConfig:
    """A pipeline sized for the tiny Llama: few entities, texts and steps."""
    return RealPipelineConfig(
        n_targets=n_targets,
        n_retain=4,
        n_retain_eval=3,
        n_unknown_reference=3,
        n_generic_eval=4,
        n_generic_latents=8,
        method_overrides={
            "sae_guided": {"max_steps": sae_guided_steps, "n_retain_text": 2},
            "grad_ascent": {"max_steps": grad_ascent_steps},
        },
    )


def test_pipeline_forgets_with_both_methods(tiny, trained, labelled, monkeypatch):
    monkeypatch.setattr(real_evaluation, "greedy_generate", scripted_generate)
    entity_set, answers = labelled
    original = {k: v.clone() for k, v in tiny.state_dict().items()}
    config = small_config(n_targets=2, sae_guided_steps=6, grad_ascent_steps=4)
    result = run_real_pipeline(tiny, trained[0], entity_set, answers, config, progress=False)
    runs = result.runs
    assert list(runs["method"]) == ["sae_guided", "sae_guided", "grad_ascent", "grad_ascent"]
    assert list(runs["target"]) == [t.name for t in result.targets] * 2
    for metric in ("forget_acc", "idk_rate", "probe_p_known_sae", "probe_p_known_resid", "dist_ratio", "retain_acc"):
        assert {f"{metric}_before", f"{metric}_after"} <= set(runs.columns)
    assert (runs["probe_p_known_sae_before"] >= 0.5).all()
    assert (runs["seconds"] > 0).all() and (runs["steps"] <= 6).all()
    assert set(runs["stop_reason"]) <= {"flipped", "suppressed", "max_steps", "nan", "retain_blowup", "collapsed"}
    history = result.histories[("sae_guided", result.targets[0].name)]
    assert {"loss_forget", "p_known_sae"} <= set(history.columns)
    assert result.counts["known"].item() == 20 and result.recognizer.metrics["probe_auroc_resid"] > 0.8
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
    monkeypatch.setattr(real_evaluation, "greedy_generate", scripted_generate)
    monkeypatch.setattr(labelling, "cache_root", lambda: tmp_path / "cache")

    cell = _recipe_cell()
    namespace = {
        "GEMMA_CITIES": 40,
        "GEMMA_CONFIG": small_config(n_targets=1, sae_guided_steps=3, grad_ascent_steps=3),
    }
    exec(compile(cell.source, "04_real_model:gemma-recipe", "exec"), namespace)
    assert calls == {
        "sae": ("gemma-scope-2b-pt-res-canonical", "layer_12/width_16k/canonical"),
        "model": ("gemma-2-2b", True),
    }
    assert len(namespace["gemma_result"].runs) == 2


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
        "run_real_pipeline",
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
