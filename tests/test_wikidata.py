"""Wikidata entities: loading and merging records, question templates, answer checks with tolerances."""

from __future__ import annotations

import json

import pytest

from irunlearn.entities import Entity, EntitySet
from irunlearn.prompts import entity_token_positions
from irunlearn.real import wikidata as wd


def _shared_dir():
    try:
        return wd.wikidata_dir()
    except FileNotFoundError:
        return None


needs_shared = pytest.mark.skipif(
    _shared_dir() is None, reason="Wikidata records not found (../shared/data/wikidata or $IRUNLEARN_WIKIDATA)"
)


@pytest.fixture
def records_dir(tmp_path):
    """A miniature records folder with the quirks of the real one."""
    city = [
        # one Wikidata item listed under two countries
        {
            "city": "Q1",
            "cityLabel": "Jerusalem",
            "countryLabel": "Israel",
            "recent_population": "936425",
            "above_sea_meters": "754",
        },
        {
            "city": "Q1",
            "cityLabel": "Jerusalem",
            "countryLabel": "Ottoman Empire",
            "recent_population": "936425",
            "above_sea_meters": "754",
        },
        # two items share a name: the most populous keeps it
        {
            "city": "Q2",
            "cityLabel": "Paris",
            "countryLabel": "United States of America",
            "recent_population": "3176",
            "above_sea_meters": "123",
        },
        {
            "city": "Q3",
            "cityLabel": "Paris",
            "countryLabel": "France",
            "recent_population": "2145906",
            "above_sea_meters": "28",
        },
        # a few-shot example entity, never loaded
        {
            "city": "Q4",
            "cityLabel": "Lyon",
            "countryLabel": "France",
            "recent_population": "522250",
            "above_sea_meters": "173",
        },
        {
            "city": "Q5",
            "cityLabel": "Leeuwarden",
            "countryLabel": "Netherlands",
            "recent_population": "93765",
            "above_sea_meters": "",
        },
    ]
    player = [
        {
            "human": "Q10",
            "humanLabel": "Tracy McGrady",
            "datebirthyearLabel": "1979",
            "placebirthLabel": "Bartow",
            "teamslist": "Toronto Raptors, Orlando Magic",
        },
        {
            "human": "Q11",
            "humanLabel": "Charles Smith",
            "datebirthyearLabel": "1965",
            "placebirthLabel": "Bridgeport",
            "teamslist": "Los Angeles Clippers",
        },
        {
            "human": "Q12",
            "humanLabel": "Charles Smith",
            "datebirthyearLabel": "1975",
            "placebirthLabel": "Fort Worth",
            "teamslist": "Miami Heat",
        },
    ]
    (tmp_path / "city.json").write_text(json.dumps(city))
    (tmp_path / "player.json").write_text(json.dumps(player))
    (tmp_path / "song.json").write_text("[]")
    return tmp_path


def test_records_merge_items_and_resolve_ambiguous_names(records_dir):
    cities = {e.name: e for e in wd.load_entities("city", data_dir=records_dir)}
    assert set(cities) == {"Jerusalem", "Paris", "Leeuwarden"}  # Lyon is a few-shot example
    assert cities["Jerusalem"].attributes["country"] == "Israel; Ottoman Empire"
    assert cities["Paris"].attributes == {"country": "France", "population": "2145906", "elevation": "28"}
    assert "elevation" not in cities["Leeuwarden"].attributes  # empty values are left out
    assert all(e.kind == "city" for e in cities.values())

    players = {e.name: e for e in wd.load_entities("player", data_dir=records_dir)}
    assert set(players) == {"Tracy McGrady"}  # two different Charles Smiths: ambiguous, dropped
    assert players["Tracy McGrady"].attributes["team"] == "Toronto Raptors; Orlando Magic"


def test_env_var_and_missing_folder(records_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("IRUNLEARN_WIKIDATA", str(records_dir))
    assert wd.wikidata_dir() == records_dir
    with pytest.raises(FileNotFoundError, match="IRUNLEARN_WIKIDATA"):
        wd.wikidata_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="No movie records"):
        wd.load_records("movie", records_dir)
    with pytest.raises(ValueError, match="Unknown entity kind"):
        wd.load_entities("planet", data_dir=records_dir)


def test_sampling_is_reproducible(records_dir):
    first = wd.load_entities("city", n=2, seed=3, data_dir=records_dir)
    again = wd.load_entities("city", n=2, seed=3, data_dir=records_dir)
    assert [e.name for e in first] == [e.name for e in again]
    assert len({e.name for e in first}) == 2
    with pytest.raises(ValueError, match="only 3"):
        wd.load_entities("city", n=4, data_dir=records_dir)


@needs_shared
@pytest.mark.parametrize("kind, at_least", [("city", 8000), ("player", 7000), ("song", 8000), ("movie", 11000)])
def test_shared_records_load(kind, at_least):
    entities = wd.load_entities(kind)
    assert len(entities) >= at_least
    names = [e.name for e in entities]
    assert len(names) == len(set(names))
    EntitySet(entities, [])  # unique names, as EntitySet requires
    attribute_names = {a.name for a in wd.attributes(kind)}
    assert all(e.attributes and set(e.attributes) <= attribute_names for e in entities)


@needs_shared
def test_shared_records_famous_cities():
    cities = {e.name: e for e in wd.load_entities("city")}
    assert cities["Paris"].attributes["country"] == "France"
    assert cities["Berlin"].attributes["country"] == "Germany"
    assert "Lyon" not in cities and "Osaka" not in cities and "Denver" not in cities
    sample = wd.load_entities("city", n=50, seed=7)
    assert [e.name for e in sample] == [e.name for e in wd.load_entities("city", n=50, seed=7)]
    assert [e.name for e in sample] != [e.name for e in wd.load_entities("city", n=50, seed=8)]


@pytest.mark.parametrize("kind", wd.KINDS)
def test_question_templates(kind):
    specs = wd.attributes(kind)
    assert len(specs) >= 3
    for spec in specs:
        train, heldout = spec.templates
        assert (train.split, heldout.split) == ("train", "heldout")
        assert train.attribute == heldout.attribute == spec.name
        assert train.text != heldout.text
        prompt = train.render("Xyzzy Quux")
        assert prompt.endswith("A:") and prompt.count("Xyzzy Quux") == 1
        assert prompt.count("\nQ:") == 2  # two solved examples before the question
    assert len(wd.question_templates(kind)) == 2 * len(specs)
    assert len(wd.question_templates(kind, split="heldout")) == len(specs)


def test_entity_token_is_found_after_the_examples():
    template = wd.attributes("city")[0].templates[0]
    prompt = template.render("Venice")
    assert prompt.index("Venice") > prompt.index("Osaka")
    assert template.prefix("Venice") == prompt[: prompt.index("Venice") + len("Venice")]

    class CharTokenizer:  # one token per character, offsets included
        is_fast = True
        bos_token_id = 0

        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            return {"input_ids": [ord(c) for c in text], "offset_mapping": [(i, i + 1) for i in range(len(text))]}

    [(ids, position)] = entity_token_positions(CharTokenizer(), [prompt], ["Venice"], prepend_bos=False)
    assert chr(ids[position]) == "e" and position == prompt.index("Venice") + len("Venice") - 1


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [
        ("Italy", "Italy", True),
        ("italy.", "Italy", True),
        ("Italy, in Europe", "Italy", True),
        ("Germany", "Netherlands", False),
        ("", "Italy", False),
        ("USA", "United States of America", True),
        ("the United States", "United States of America", True),
        ("America", "United States of America", True),
        ("England", "United Kingdom", True),
        ("China", "People's Republic of China", True),
        ("Holland", "Kingdom of the Netherlands", True),
        ("Czechia", "Czech Republic", True),
        ("Korea", "South Korea", True),
        ("North Korea", "South Korea", False),
        ("Israel", "Ottoman Empire; Israel", True),
        ("Jordan", "Ottoman Empire; Israel", False),
    ],
)
def test_country_answers(predicted, gold, expected):
    assert wd.check_answer("city", "country", predicted, gold) is expected


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [
        ("Steven Spielberg", "Steven Spielberg", True),
        ("Spielberg", "Steven Spielberg", True),
        ("Steven", "Steven Spielberg", False),
        ("Steven Soderbergh", "Steven Spielberg", False),
        ("Charlie Chaplin", "Charlie Chaplin; Paulette Goddard", True),
        ("Paulette Godard", "Charlie Chaplin; Paulette Goddard", True),  # misspelt
        ("George Lucas", "Charlie Chaplin; Paulette Goddard", False),
    ],
)
def test_person_answers(predicted, gold, expected):
    assert wd.check_answer("movie", "director", predicted, gold) is expected


@pytest.mark.parametrize(
    "predicted, expected",
    [
        ("Lakers", True),
        ("The Los Angeles Lakers", True),
        ("Los Angeles", False),  # Lakers or Clippers?
        ("Orlando Magic", True),
        ("Chicago Bulls", False),
    ],
)
def test_team_answers(predicted, expected):
    assert wd.check_answer("player", "team", predicted, "Los Angeles Lakers; Orlando Magic") is expected


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [
        ("1979", "1979", True),
        ("1980", "1979", True),
        ("1981", "1979", False),
        ("born in 1978.", "1979", True),
        ("1970s", "1979", False),
        ("1958", "1940; 1958", True),
        ("in the forties", "1940", False),
    ],
)
def test_year_answers(predicted, gold, expected):
    assert wd.check_answer("player", "birth_year", predicted, gold) is expected


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [
        ("2.1 million", "2145906", True),
        ("1.2 million", "2145906", True),  # within a factor of two
        ("1 million", "2145906", False),
        ("2,145,906", "2145906", True),
        ("about 900 thousand", "1500000", True),
        ("500,000", "93765", False),
        ("unknown", "93765", False),
    ],
)
def test_population_answers(predicted, gold, expected):
    assert wd.check_answer("city", "population", predicted, gold) is expected


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [
        ("20", "2", True),  # low-lying: within 25 m
        ("30", "2", False),
        ("1800", "1609", True),  # high: within 20 %
        ("1250", "1609", False),
        ("-2 m", "3", True),
    ],
)
def test_elevation_answers(predicted, gold, expected):
    assert wd.check_answer("city", "elevation", predicted, gold) is expected


@pytest.mark.parametrize(
    "text, value",
    [
        ("1.2 million", 1.2e6),
        ("520,000 people", 520000.0),
        ("2,7 million", 2.7e6),
        ("3.1k", 3100.0),
        ("1 billion", 1e9),
        ("-2", -2.0),
        ("1980s", 1980.0),
        ("no idea", None),
    ],
)
def test_parse_number(text, value):
    assert wd.parse_number(text) == value


def test_unknown_attribute_is_an_error():
    with pytest.raises(KeyError, match="has no attribute 'height'"):
        wd.check_answer("city", "height", "1", "1")


# ---- labelling from a model's own answers --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from real_fixtures import save_tiny_llama

    from irunlearn.models import load_hf_folder

    return load_hf_folder(save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny"))


def test_batched_generation_equals_one_at_a_time(tiny_model):
    """Left padding is masked and the key-value cache changes nothing: batched answers equal a plain argmax
    loop over full forward passes, one prompt at a time."""
    import torch

    from irunlearn.qa import greedy_generate, greedy_token_ids, stop_token_ids

    def argmax_loop(prompt: str, n: int) -> list[int]:
        tokens = tiny_model.to_tokens(prompt, prepend_bos=False)
        new = []
        for _ in range(n):
            new.append(int(tiny_model(tokens)[0, -1].argmax()))
            if new[-1] in stop_token_ids(tiny_model.tokenizer):
                break
            tokens = torch.cat([tokens, torch.tensor([[new[-1]]])], dim=1)
        return new

    prompts = [t.render(name) for t in wd.question_templates("city") for name in ("Venice", "Santiago de Chile")]
    prompts.append("Q: Venice? A:")
    batched = greedy_token_ids(tiny_model, prompts, max_new_tokens=5, batch_size=4, progress=False)
    alone = [argmax_loop(prompt, 5) for prompt in prompts]
    eos = tiny_model.tokenizer.eos_token_id
    assert batched == [ids[:-1] if ids and ids[-1] == eos else ids for ids in alone]
    answers = greedy_generate(tiny_model, prompts, max_new_tokens=5, batch_size=4, progress=False)
    assert answers == [tiny_model.tokenizer.decode(ids).split("\n")[0].strip() for ids in batched]
    assert any(answers)  # a random model still says something


CITIES = [
    Entity("Paris", {"country": "France", "population": "2145906", "elevation": "28"}, "city"),
    Entity("Venice", {"country": "Italy", "population": "250369", "elevation": "2"}, "city"),
    Entity("Leeuwarden", {"country": "Netherlands", "population": "93765"}, "city"),
    Entity("Nowhere", {}, "city"),
]
SCRIPTED = {  # (name, attribute) → the model's answer
    ("Paris", "country"): "France",
    ("Paris", "population"): "2 million",
    ("Paris", "elevation"): "1000",
    ("Venice", "country"): "Italy",
    ("Venice", "population"): "5 million",
    ("Venice", "elevation"): "500",
    ("Leeuwarden", "country"): "Germany",
    ("Leeuwarden", "population"): "1.2 million",
}


def _scripted_generate(calls):
    questions = {
        spec.templates[0].render(e.name): (e.name, spec.name) for e in CITIES for spec in wd.attributes("city")
    }

    def generate(model, prompts, **kwargs):
        calls.append(len(prompts))
        return [SCRIPTED[questions[p]] for p in prompts]

    return generate


def test_labels_follow_ferrando(tiny_model, tmp_path, monkeypatch):
    from irunlearn.real import labelling

    calls = []
    monkeypatch.setattr(labelling, "greedy_generate", _scripted_generate(calls))
    entity_set, answers = labelling.label_entities(tiny_model, CITIES, cache_dir=tmp_path)
    assert [e.name for e in entity_set.known] == ["Paris"]  # country and population right
    assert [e.name for e in entity_set.unknown] == ["Leeuwarden"]  # nothing right
    by_name = answers.set_index("name")
    assert by_name.loc["Venice", "label"] == "discarded"  # one of three
    assert by_name.loc["Nowhere", "label"] == "discarded"  # nothing to ask
    assert by_name.loc["Paris", "n_correct"] == 2 and by_name.loc["Paris", "n_asked"] == 3
    assert by_name.loc["Leeuwarden", "n_asked"] == 2
    assert by_name.loc["Leeuwarden", "country_answer"] == "Germany"
    assert not by_name.loc["Leeuwarden", "country_correct"]
    assert calls == [8]

    # a stricter threshold only moves entities from known to discarded
    strict, _ = labelling.label_entities(tiny_model, CITIES, cache_dir=tmp_path, min_known=3)
    assert strict.known == [] and [e.name for e in strict.unknown] == ["Leeuwarden"]
    assert calls == [8], "the rerun must read the cached answers"


def test_label_cache_is_keyed_by_weights_and_sample(tiny_model, tmp_path, monkeypatch):
    import torch

    from irunlearn.io import weights_hash
    from irunlearn.real import labelling

    calls = []
    monkeypatch.setattr(labelling, "greedy_generate", _scripted_generate(calls))
    labelling.label_entities(tiny_model, CITIES, cache_dir=tmp_path)
    labelling.label_entities(tiny_model, CITIES[:2], cache_dir=tmp_path)  # another sample
    assert calls == [8, 6]
    before = weights_hash(tiny_model)
    with torch.no_grad():
        tiny_model.blocks[0].mlp.W_in[0, 0] += 1.0  # an edited model must not reuse the answers
    try:
        assert weights_hash(tiny_model) != before
        labelling.label_entities(tiny_model, CITIES, cache_dir=tmp_path)
        assert calls == [8, 6, 8]
    finally:
        with torch.no_grad():
            tiny_model.blocks[0].mlp.W_in[0, 0] -= 1.0
    labelling.label_entities(tiny_model, CITIES, cache_dir=tmp_path, use_cache=False)
    assert calls == [8, 6, 8, 8]
    assert len(list(tmp_path.rglob("*.json"))) == 3
