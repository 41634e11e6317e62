"""Real entities from Wikidata (cities, basketball players, songs, movies), their questions and answer checks.

The attribute table also holds the questions about famous people (kind `"person"`, nationality and
occupation), whose records are loaded by `irunlearn.real.people`.

The records are the ones Ferrando et al. queried for "Do I Know This Entity?" and live outside the
repository, in `$IRUNLEARN_WIKIDATA` or else `../shared/data/wikidata` next to the repository root. Each
record becomes an `Entity(name, attributes, kind)`; an attribute with several values (a player's teams, a
film's cast, a city listed under several countries) keeps them all, joined by `"; "`, and an answer is
correct when it matches any of them.

Every attribute has few-shot question templates (two solved examples, then the entity's question), which
a small instruct model such as SmolLM2-135M needs to answer in a word instead of chatting; the examples'
entities are left out of the loaded records. Answers are checked per attribute: names by normalised
containment, a head-word match and fuzzy spelling; years and quantities within tolerances.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from irunlearn.entities import Entity, normalize_answer
from irunlearn.prompts import NAME_SLOT, Template

KINDS = ("city", "player", "song", "movie")
MULTI_SEP = "; "
YEAR_TOLERANCE = 1  # release and birth years are often quoted one year apart (premiere vs release, etc.)
POPULATION_FACTOR = 2.0  # a population within a factor of two counts (sources and dates vary widely)
ELEVATION_TOLERANCE_M, ELEVATION_TOLERANCE_REL = 25.0, 0.2

# How a country is commonly named, beyond what the head-word rule of `name_matches` already accepts.
COUNTRY_ALIASES: dict[str, tuple[str, ...]] = {
    "united states of america": ("usa", "us", "u s", "u s a", "united states"),
    "united kingdom": ("uk", "britain", "great britain", "england", "scotland", "wales", "northern ireland"),
    "people s republic of china": ("china", "prc"),
    "republic of ireland": ("ireland",),
    "kingdom of netherlands": ("netherlands", "holland"),
    "netherlands": ("holland",),
    "czech republic": ("czechia",),
    "russia": ("russian federation",),
    "turkey": ("turkiye",),
    "ivory coast": ("cote d ivoire",),
    "south korea": ("republic of korea",),
    "north korea": ("dprk",),
    "myanmar": ("burma",),
    "eswatini": ("swaziland",),
    "north macedonia": ("macedonia",),
}


def wikidata_dir(path: str | Path | None = None) -> Path:
    """The Wikidata records folder: `path`, else `$IRUNLEARN_WIKIDATA`, else `<repo>/../shared/data/wikidata`."""
    if path is None:
        repo_root = Path(__file__).resolve().parents[2]
        path = os.environ.get("IRUNLEARN_WIKIDATA") or repo_root.parent / "shared" / "data" / "wikidata"
    path = Path(path).expanduser()
    if not (path / "city.json").is_file():
        raise FileNotFoundError(
            f"No Wikidata records at {path} (expected city.json, player.json, song.json, movie/). "
            "Point IRUNLEARN_WIKIDATA at the folder."
        )
    return path


# How a nationality is commonly named: the demonym's country and its near forms (normalised).
DEMONYM_ALIASES: dict[str, tuple[str, ...]] = {
    "american": ("united states", "united states of america", "usa", "us", "u s", "america"),
    "english": ("british", "england", "uk", "united kingdom", "britain"),
    "british": ("english", "scottish", "welsh", "uk", "united kingdom", "britain", "great britain", "england"),
    "canadian": ("canada",),
    "greek": ("greece",),
    "australian": ("australia",),
    "chinese": ("china",),
    "hong kong": ("chinese", "china"),
    "mongol": ("mongolian", "mongolia"),
    "italian": ("italy",),
    "barbadian": ("barbados", "bajan"),
    "dutch": ("netherlands", "holland"),
    "german": ("germany",),
    "south african": ("south africa",),
    "colombian": ("colombia",),
    "japanese": ("japan",),
    "irish": ("ireland",),
    "austrian": ("austria",),
    "french": ("france",),
}
# Occupations as a model may name them (normalised gold value → accepted alternatives).
OCCUPATION_ALIASES: dict[str, tuple[str, ...]] = {
    "actor": ("actress", "film actor"),
    "actress": ("actor",),
    "singer songwriter": ("singer", "songwriter"),
    "singer": ("vocalist",),
    "author": ("writer", "novelist"),
    "novelist": ("writer", "author"),
    "filmmaker": ("film director", "director", "film producer"),
    "director": ("film director", "filmmaker"),
    "producer": ("film producer", "record producer"),
    "rapper": ("hip hop artist", "rap artist", "hip hop musician"),
    "businesswoman": ("entrepreneur", "businessperson", "business executive"),
    "businessman": ("entrepreneur", "businessperson", "business executive"),
    "business magnate": ("businessman", "entrepreneur", "investor"),
    "tv personality": ("television personality", "television host", "tv host"),
    "television personality": ("tv personality", "television host", "tv host"),
    "media personality": ("television personality", "tv personality", "celebrity"),
    "host": ("television host", "tv host", "presenter", "talk show host"),
    "supermodel": ("model", "fashion model"),
    "model": ("fashion model", "supermodel"),
    "president": ("politician", "statesman"),
    "prime minister": ("politician", "statesman"),
    "royal family": ("prince", "princess", "royal", "duke", "duchess"),
    "ruler": ("emperor", "king", "conqueror", "khan", "leader"),
    "nfl": ("football player", "american football player", "quarterback"),
    "quarterback": ("football player", "american football player"),
    "football": ("footballer", "football player", "soccer player"),
    "tennis": ("tennis player",),
    "basketball": ("basketball player",),
    "wrestler": ("professional wrestler",),
    "racer": ("racing driver", "race car driver"),
}


# ---- answer checking ---------------------------------------------------------------------------------


def name_matches(predicted: str, gold: str, aliases: dict[str, tuple[str, ...]] | None = None) -> bool:
    """Whether a free-form answer names `gold` (or one of its `"; "`-separated values).

    After `normalize_answer` (case, accents, punctuation, articles), the answer is right when it contains
    a gold value as whole words ("Italy, in Europe" for "Italy"), when its words are part of a gold value
    and include that value's last word ("Spielberg" for "Steven Spielberg", "Lakers" for "Los Angeles
    Lakers"; not "Los Angeles"), when it is one of the value's `aliases` ("USA" for "United States of
    America"), or when each of its words is spelled within a small edit distance of the value's.
    """
    answer = normalize_answer(predicted)
    if not answer:
        return False
    answer_words = answer.split()
    for value in split_values(gold):
        gold_norm = normalize_answer(value)
        if not gold_norm:
            continue
        candidates = [gold_norm, *(aliases or {}).get(gold_norm, ())]
        for candidate in candidates:
            words = candidate.split()
            if f" {candidate} " in f" {answer} ":
                return True
            if set(answer_words) <= set(words) and words[-1] in answer_words:
                return True
        if _spelled_alike(answer_words, gold_norm.split()):
            return True
    return False


def _spelled_alike(answer_words: list[str], gold_words: list[str]) -> bool:
    """Word by word within a small edit distance ("Paulette Godard" ~ "Paulette Goddard"), so that one
    differing word still fails ("North Korea" is not "South Korea")."""
    return len(answer_words) == len(gold_words) and all(
        difflib.SequenceMatcher(None, a, g).ratio() >= 0.8 for a, g in zip(answer_words, gold_words, strict=True)
    )


def nationality_matches(predicted: str, gold: str) -> bool:
    """Whether an answer names a person's nationality: the demonym, any part of a hyphenated one
    ("American" for "Canadian-American"), or the country ("United States" for "American")."""
    parts = [part for value in split_values(gold) for part in (value, *value.split("-")) if part.strip()]
    return name_matches(predicted, MULTI_SEP.join(parts), aliases=DEMONYM_ALIASES)


def occupation_matches(predicted: str, gold: str) -> bool:
    """Whether an answer names one of a person's occupations ("American actor" for "actor; singer"),
    common alternatives included ("actress" for "actor", "writer" for "author")."""
    return name_matches(predicted, gold, aliases=OCCUPATION_ALIASES)


def parse_number(text: str) -> float | None:
    """The first number in `text`, with thousands separators and scale words: "2.7 million" → 2.7e6."""
    match = re.search(r"(-?\d[\d,]*(?:\.\d+)?)(?:\s*(thousand|million|billion|k|bn)\b)?", text, re.IGNORECASE)
    if match is None:
        return None
    digits = re.sub(r",(?=\d{3}\b)", "", match.group(1))  # "1,234,567" → "1234567"
    try:
        value = float(digits.replace(",", "."))  # a remaining comma is a decimal comma: "2,7"
    except ValueError:
        return None
    scale = {"thousand": 1e3, "k": 1e3, "million": 1e6, "billion": 1e9, "bn": 1e9}
    return value * scale[match.group(2).lower()] if match.group(2) else value


def year_matches(predicted: str, gold: str, tolerance: int = YEAR_TOLERANCE) -> bool:
    """Whether the first number in the answer is within `tolerance` years of a gold year."""
    value = parse_number(predicted)
    return value is not None and any(
        abs(value - float(year)) <= tolerance for year in split_values(gold) if _is_number(year)
    )


def quantity_matches(
    predicted: str, gold: str, *, factor: float | None = None, abs_tol: float = 0.0, rel_tol: float = 0.0
) -> bool:
    """Whether the answer's first number is close to a gold value.

    Close means within a multiplicative `factor` when one is given (population: 1.2 million for 2.1
    million is right with factor 2), else within `max(abs_tol, rel_tol · |gold|)`.
    """
    value = parse_number(predicted)
    if value is None:
        return False
    for item in split_values(gold):
        if not _is_number(item):
            continue
        target = float(item)
        if factor is not None:
            if value > 0 and target > 0 and max(value / target, target / value) <= factor:
                return True
        elif abs(value - target) <= max(abs_tol, rel_tol * abs(target)):
            return True
    return False


def split_values(gold: str) -> list[str]:
    """The values of a (possibly multi-valued) attribute."""
    return [v for v in (part.strip() for part in gold.split(MULTI_SEP)) if v]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---- attributes and their questions ------------------------------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """One attribute of an entity type: where it comes from in the records, how it is asked and checked.

    `field` is the record's JSON key and `listed` says whether its value is a comma-separated list.
    `templates` hold the question phrasings (the first is the `"train"` one used for labelling);
    `check(predicted, gold)` decides whether an answer is right.
    """

    name: str
    field: str
    templates: tuple[Template, ...]
    check: Callable[[str, str], bool]
    listed: bool = False


def few_shot(question: str, shots: Iterable[tuple[str, str]]) -> str:
    """A few-shot prompt text: `question` (with `{name}`) asked and answered for each shot, then open.

    >>> few_shot("Q: Where is {name}? A:", [("Lyon", "France")])
    'Q: Where is Lyon? A: France\\nQ: Where is {name}? A:'
    """
    solved = [f"{question.replace(NAME_SLOT, name)} {answer}\n" for name, answer in shots]
    return "".join(solved) + question


def _attribute(
    name: str,
    field: str,
    questions: tuple[str, str],
    shots: tuple[tuple[str, str], tuple[str, str]],
    check: Callable[[str, str], bool],
    listed: bool = False,
) -> Attribute:
    train, heldout = questions
    templates = (
        Template(few_shot(train, shots), attribute=name, split="train"),
        Template(few_shot(heldout, shots), attribute=name, split="heldout"),
    )
    return Attribute(name, field, templates, check, listed)


_check_country = partial(name_matches, aliases=COUNTRY_ALIASES)
_JORDAN, _NOWITZKI = "Michael Jordan", "Dirk Nowitzki"
_PICASSO, _CURIE = "Pablo Picasso", "Marie Curie"

ATTRIBUTES: dict[str, tuple[Attribute, ...]] = {
    "city": (
        _attribute(
            "country",
            "countryLabel",
            ("Q: In which country is the city of {name}? A:", "Q: The city of {name} lies in which country? A:"),
            (("Lyon", "France"), ("Osaka", "Japan")),
            _check_country,
        ),
        _attribute(
            "population",
            "recent_population",
            ("Q: What is the population of the city of {name}? A:", "Q: How many people live in {name}? A:"),
            (("Lyon", "520,000"), ("Osaka", "2.7 million")),
            partial(quantity_matches, factor=POPULATION_FACTOR),
        ),
        _attribute(
            "elevation",
            "above_sea_meters",
            (
                "Q: How many metres above sea level is the city of {name}? A:",
                "Q: What is the elevation of {name} in metres? A:",
            ),
            (("Lyon", "173"), ("Denver", "1609")),
            partial(quantity_matches, abs_tol=ELEVATION_TOLERANCE_M, rel_tol=ELEVATION_TOLERANCE_REL),
        ),
    ),
    "player": (
        _attribute(
            "birth_year",
            "datebirthyearLabel",
            (
                "Q: In which year was the basketball player {name} born? A:",
                "Q: What is the birth year of the basketball player {name}? A:",
            ),
            ((_JORDAN, "1963"), (_NOWITZKI, "1978")),
            year_matches,
        ),
        _attribute(
            "birthplace",
            "placebirthLabel",
            (
                "Q: In which city was the basketball player {name} born? A:",
                "Q: Where was the basketball player {name} born? A:",
            ),
            ((_JORDAN, "Brooklyn"), (_NOWITZKI, "Würzburg")),
            name_matches,
        ),
        _attribute(
            "team",
            "teamslist",
            (
                "Q: Which team did the basketball player {name} play for? A:",
                "Q: The basketball player {name} played for which team? A:",
            ),
            ((_JORDAN, "Chicago Bulls"), (_NOWITZKI, "Dallas Mavericks")),
            name_matches,
            listed=True,
        ),
    ),
    "song": (
        _attribute(
            "performer",
            "performers",
            ("Q: Who performed the song {name}? A:", "Q: Which artist sang {name}? A:"),
            (("Hey Jude", "The Beatles"), ("Thriller", "Michael Jackson")),
            name_matches,
            listed=True,
        ),
        _attribute(
            "release_year",
            "publicationYear",
            ("Q: In which year was the song {name} released? A:", "Q: When did the song {name} come out? A:"),
            (("Hey Jude", "1968"), ("Thriller", "1982")),
            year_matches,
        ),
        _attribute(
            "album",
            "albumLabel",
            ("Q: On which album is the song {name}? A:", "Q: The song {name} appeared on which album? A:"),
            (("Hey Jude", "Hey Jude"), ("Thriller", "Thriller")),
            name_matches,
        ),
    ),
    "person": (
        _attribute(
            "nationality",
            "nationality",
            ("Q: What is the nationality of {name}? A:", "Q: What nationality is {name}? A:"),
            ((_PICASSO, "Spanish"), (_CURIE, "Polish")),
            nationality_matches,
        ),
        _attribute(
            "occupation",
            "occupations",
            ("Q: What is the occupation of {name}? A:", "Q: What does {name} do for a living? A:"),
            ((_PICASSO, "painter"), (_CURIE, "physicist")),
            occupation_matches,
            listed=True,
        ),
    ),
    "movie": (
        _attribute(
            "director",
            "directors",
            ("Q: Who directed the film {name}? A:", "Q: Who was the director of the movie {name}? A:"),
            (("Casablanca", "Michael Curtiz"), ("Star Wars", "George Lucas")),
            name_matches,
            listed=True,
        ),
        _attribute(
            "release_year",
            "release_year",
            ("Q: In which year was the film {name} released? A:", "Q: When did the movie {name} come out? A:"),
            (("Casablanca", "1942"), ("Star Wars", "1977")),
            year_matches,
        ),
        _attribute(
            "screenwriter",
            "screenwriters",
            ("Q: Who wrote the screenplay of the film {name}? A:", "Q: Who wrote the movie {name}? A:"),
            (("Casablanca", "Julius J. Epstein"), ("Star Wars", "George Lucas")),
            name_matches,
            listed=True,
        ),
        _attribute(
            "cast",
            "cast_list",
            ("Q: Who starred in the film {name}? A:", "Q: Name an actor in the movie {name}. A:"),
            (("Casablanca", "Humphrey Bogart"), ("Star Wars", "Mark Hamill")),
            name_matches,
            listed=True,
        ),
    ),
}

_SOURCES = {  # kind → (files under the records folder, name field, Wikidata id field)
    "city": (("city.json",), "cityLabel", "city"),
    "player": (("player.json",), "humanLabel", "human"),
    "song": (("song.json",), "songLabel", "song"),
    "movie": (("movie/*.json",), "filmLabel", "film"),
}


def attributes(kind: str) -> tuple[Attribute, ...]:
    """The attributes asked about entities of `kind` ("city", "player", "song", "movie", "person")."""
    if kind not in ATTRIBUTES:
        raise ValueError(f"Unknown entity kind {kind!r}; expected one of {tuple(ATTRIBUTES)}.")
    return ATTRIBUTES[kind]


def question_templates(kind: str, split: str | None = None) -> list[Template]:
    """All attribute question templates of `kind`, or only those of `split` ("train" or "heldout")."""
    return [t for a in attributes(kind) for t in a.templates if split is None or t.split == split]


def check_answer(kind: str, attribute: str, predicted: str, gold: str) -> bool:
    """Whether `predicted` answers `attribute` of a `kind` entity whose true value is `gold`."""
    for spec in attributes(kind):
        if spec.name == attribute:
            return spec.check(predicted, gold)
    raise KeyError(f"{kind} has no attribute {attribute!r}; it has {[a.name for a in attributes(kind)]}.")


# ---- loading -----------------------------------------------------------------------------------------


def load_records(kind: str, data_dir: str | Path | None = None) -> list[dict[str, str]]:
    """The raw Wikidata records of `kind`, in file order."""
    _check_kind(kind)
    root = wikidata_dir(data_dir)
    patterns, _, _ = _SOURCES[kind]
    files = sorted(f for pattern in patterns for f in root.glob(pattern))
    if not files:
        raise FileNotFoundError(f"No {kind} records in {root} (looked for {patterns}).")
    records: list[dict[str, str]] = []
    for file in files:
        records.extend(json.loads(file.read_text(encoding="utf-8")))
    return records


def load_entities(kind: str, n: int | None = None, seed: int = 0, data_dir: str | Path | None = None) -> list[Entity]:
    """Entities of `kind` from the Wikidata records; with `n`, a reproducible random sample of `n`.

    Records of one Wikidata item are merged (values united). A name shared by several items is ambiguous:
    for cities the most populous keeps it (the Paris anyone means), for other kinds the name is dropped.
    Entities whose name occurs in the kind's question templates (the few-shot examples) are dropped too,
    since a prompt must contain the entity's name only where it is asked about.
    """
    _check_kind(kind)
    _, name_field, id_field = _SOURCES[kind]
    specs = attributes(kind)
    merged: dict[str, tuple[str, dict[str, list[str]]]] = {}  # Wikidata id → (name, attribute values)
    for record in load_records(kind, data_dir):
        name = record.get(name_field, "").strip()
        if not name:
            continue
        _, values = merged.setdefault(record[id_field], (name, {}))
        for spec in specs:
            raw = (record.get(spec.field) or "").strip()
            items = [v.strip() for v in raw.split(",")] if spec.listed else [raw]
            bucket = values.setdefault(spec.name, [])
            bucket.extend(v for v in items if v and v not in bucket)

    by_name: dict[str, list[dict[str, list[str]]]] = {}
    for name, values in merged.values():
        by_name.setdefault(name, []).append(values)
    template_text = " ".join(t.text.replace(NAME_SLOT, " ") for t in question_templates(kind))
    entities = []
    for name, items in by_name.items():
        if name in template_text:
            continue
        if len(items) > 1:
            if kind != "city":
                continue
            items = [max(items, key=_population)]
        attrs = {key: MULTI_SEP.join(vals) for key, vals in items[0].items() if vals}
        entities.append(Entity(name=name, attributes=attrs, kind=kind))
    if n is not None:
        if n > len(entities):
            raise ValueError(f"Asked for {n} {kind} entities but only {len(entities)} are available.")
        entities = random.Random(seed).sample(entities, n)
    return entities


def cities_above(population: float, data_dir: str | Path | None = None) -> list[Entity]:
    """Cities with at least `population` inhabitants (the largest figure where Wikidata lists several), in
    record order: a sample of the world's big cities, which a small model knows best."""

    def largest(city: Entity) -> float:
        values = split_values(city.attributes.get("population", ""))
        return max((float(v) for v in values if _is_number(v)), default=0.0)

    return [c for c in load_entities("city", data_dir=data_dir) if largest(c) >= population]


def _population(values: dict[str, list[str]]) -> float:
    numbers = [float(v) for v in values.get("population", []) if _is_number(v)]
    return max(numbers, default=0.0)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        hint = " (famous people: irunlearn.real.people.load_people)" if kind == "person" else ""
        raise ValueError(f"Unknown entity kind {kind!r} for the Wikidata records; expected one of {KINDS}{hint}.")
