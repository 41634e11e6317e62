"""SmolLM2-135M-Instruct end to end: GGUF → HookedTransformer, greedy answers, labelling, a records bench run.

Needs the GGUF fixture (`python -m irunlearn.real.fixture`); skipped with that hint where it is absent.
"""

from __future__ import annotations

import time

import pytest
import torch
from test_experiment import METRICS
from transformers import AutoModelForCausalLM

import irunlearn
from irunlearn import models
from irunlearn.bench import EntityBench
from irunlearn.qa import greedy_generate
from irunlearn.real import fixture
from irunlearn.real.labelling import label_entities
from irunlearn.real.sae import SMOLLM2_SAE
from irunlearn.real.wikidata import attributes, load_entities

pytestmark = pytest.mark.real

FAMOUS = ["Paris", "Rome", "Madrid", "Vienna", "Amsterdam"]
OBSCURE = ["Movila Banului", "Muntenii de Sus", "Connellsville"]


def test_loaded_without_bos_and_equal_to_transformers(smollm2):
    assert smollm2.cfg.default_prepend_bos is False
    assert (smollm2.cfg.n_layers, smollm2.cfg.d_model) == (30, 576)
    reference = AutoModelForCausalLM.from_pretrained(fixture.smollm2_hf_dir())
    tokens = smollm2.to_tokens("The city of Venice is located in the country of")
    assert tokens[0, 0].item() != smollm2.tokenizer.bos_token_id
    with torch.no_grad():
        ours = smollm2(tokens)[0, -1].log_softmax(-1)
        theirs = reference(tokens).logits[0, -1].log_softmax(-1)
    assert torch.allclose(ours, theirs, atol=1e-3)
    assert smollm2.tokenizer.decode(ours.argmax()).strip() == "Italy"


def test_answers_sensibly(smollm2):
    capital = (
        "Q: What is the capital of Italy? A: Rome\nQ: What is the capital of Japan? A: Tokyo\n"
        "Q: What is the capital of France? A:"
    )
    country = attributes("city")[0].templates[0].render("Venice")
    batched = greedy_generate(smollm2, [capital, country], progress=False)
    assert batched[0].startswith("Paris")
    assert batched[1] == "Italy"
    # left-padded batches give what one prompt at a time gives
    assert batched == [greedy_generate(smollm2, [prompt], progress=False)[0] for prompt in (capital, country)]


def test_labelling_a_handful_of_cities(smollm2, tmp_path):
    cities = {e.name: e for e in load_entities("city")}
    handful = [cities[name] for name in FAMOUS + OBSCURE]
    entity_set, answers = label_entities(smollm2, handful, cache_dir=tmp_path, progress=False)
    assert len(entity_set.known) >= 1, answers.to_string()
    assert len(entity_set.unknown) >= 1, answers.to_string()
    assert {e.name for e in entity_set.known} <= set(FAMOUS)
    assert list(answers.columns[:5]) == ["name", "kind", "label", "n_correct", "n_asked"]
    assert (answers["n_asked"] == 3).all()

    start = time.perf_counter()
    cached_set, cached = label_entities(smollm2, handful, cache_dir=tmp_path, progress=False)
    assert time.perf_counter() - start < 5, "a rerun must come from the cache"
    assert cached.equals(answers)
    assert [e.name for e in cached_set.known] == [e.name for e in entity_set.known]


def test_smollm2_recognises_cities(smollm2):
    """On SmolLM2's own labels (a seeded draw of the city records plus every city of a million or more),
    both probes beat chance on held-out cities and held-out phrasings. Here, not in test_real_pipeline.py,
    whose module fixture points IRUNLEARN_WIKIDATA at a small synthetic record set."""
    try:
        bench = EntityBench.from_records("city", smollm2, progress=False)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert len(bench.entities.known) >= 50 and len(bench.entities.unknown) >= 50, bench.entities
    recognizer = bench.recognizer(smollm2, models.load_sae(path=SMOLLM2_SAE), progress=False)
    assert recognizer.metrics["probe_auroc_resid"] > 0.8, recognizer.metrics
    assert recognizer.metrics["probe_auroc_sae"] > 0.7, recognizer.metrics


def test_forgetting_a_famous_person_reports_the_worlds_metric_set(smollm2):
    """Famous people against obscure real players, labelled by SmolLM2; `sae_guided` forgets Elon Musk (or,
    if SmolLM2 does not know him, the known person it recognises most surely) and the run reports every
    metric the embedded world's run does, indistinguishability and relearning included."""
    try:
        bench = EntityBench.from_records("person", smollm2, progress=False)
    except FileNotFoundError as err:
        pytest.skip(str(err))
    assert bench.judge == "lenient" and all(u.kind == "player" for u in bench.entities.unknown)
    sae = models.load_sae(path=SMOLLM2_SAE)
    recognizer = bench.recognizer(smollm2, sae, progress=False)
    retained = {e.name for e in bench.retain_eval}
    if bench.entities.is_known("Elon Musk") and "Elon Musk" not in retained:
        target = "Elon Musk"
    else:
        candidates = [e.name for e in bench.entities.known if e.name not in retained]
        readings = recognizer.p_known(smollm2, sae, candidates, bench.train_templates)
        target = readings.sort_values("p_known_sae")["entity"].iloc[-1]
    results = irunlearn.run(
        bench, smollm2, sae, ["sae_guided"], [target], recognizer=recognizer, max_steps=5, progress=False
    )
    (row,) = results.summary.to_dict("records")
    assert set(row) >= METRICS, sorted(METRICS - set(row))
    assert 0 <= row["forget_acc"] <= 1 and 0 <= row["indistinguishability"] <= 1 and row["steps"] <= 5
    assert results.provenance["bench"] == "records:person"
