"""The people bench: famous people a model knows against obscure real people it does not, by its own answers.

Known candidates are the famous people of `../shared/data/people/famous_people.json` (RWKU target names
with a nationality and occupations); unknown candidates are real but obscure people of the same broad
kind, basketball players of the shared Wikidata records. Both are labelled by the model's own greedy
answers (`label_entities`, cached on disk keyed by the model's weights): a famous person is *known* when
the model gets both nationality and occupation right (2-shot questions, lenient checks with aliases), a
player *unknown* when it gets none of birth year, birthplace and team right; everyone in between is
discarded. Made-up names are a secondary control only: a residual probe tells them from real names
already at layer 0, from their word pieces, whereas obscure real names separate from famous ones only
where the model recalls something (the recognition signal this project is about).

Recognition reads the name's last token in kind-neutral prompts (`person_templates`): the attribute
questions plus open "Q: Tell me about NAME" style phrasings, each in a training and a held-out split, so
the same prompts serve famous people, players and made-up names alike.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

from irunlearn.entities import Entity, EntitySet
from irunlearn.prompts import Template
from irunlearn.real.labelling import label_counts, label_entities
from irunlearn.real.wikidata import MULTI_SEP, attributes, load_entities, question_templates
from irunlearn.world.generator import SYLLABLES

PERSON = "person"
# Open prompts that end at the name (the probe reads the name's last token, so only the words before it
# and the name matter); each split's prefixes differ from the other's.
OPEN_PROMPTS: dict[str, tuple[str, ...]] = {
    "train": ("Q: Tell me about {name}. A:", "Q: Who is {name}? A:", "{name} is"),
    "heldout": (
        "Q: What do you know about {name}? A:",
        "Here is a short biography of {name}.",
        "Q: Have you ever heard of {name}? A:",
    ),
}


def people_dir(path: str | Path | None = None) -> Path:
    """The famous-people folder: `path`, else `$IRUNLEARN_PEOPLE`, else `<repo>/../shared/data/people`."""
    if path is None:
        repo_root = Path(__file__).resolve().parents[2]
        path = os.environ.get("IRUNLEARN_PEOPLE") or repo_root.parent / "shared" / "data" / "people"
    path = Path(path).expanduser()
    if not (path / "famous_people.json").is_file():
        raise FileNotFoundError(f"No famous_people.json in {path}; point IRUNLEARN_PEOPLE at the folder that holds it.")
    return path


def load_people(n: int | None = None, seed: int = 0, data_dir: str | Path | None = None) -> list[Entity]:
    """Famous people as `Entity(name, {"nationality", "occupation"}, kind="person")`, in file order.

    Occupations are joined by `"; "` (any one counts as right). People named in the question templates'
    solved examples are left out. With `n`, a reproducible random sample of `n`.
    """
    records = json.loads((people_dir(data_dir) / "famous_people.json").read_text(encoding="utf-8"))
    template_text = " ".join(t.text for t in question_templates(PERSON))
    people = [
        Entity(
            record["name"],
            {"nationality": record["nationality"], "occupation": MULTI_SEP.join(record["occupations"])},
            PERSON,
        )
        for record in records
        if record["name"] not in template_text
    ]
    if n is not None:
        if n > len(people):
            raise ValueError(f"Asked for {n} famous people but only {len(people)} are available.")
        people = random.Random(seed).sample(people, n)
    return people


def person_templates(split: str | None = None) -> list[Template]:
    """The kind-neutral recognition prompts of `split` ("train", "heldout" or None for both): the person
    attribute questions and the open prompts of `OPEN_PROMPTS`."""
    if split not in (None, "train", "heldout"):
        raise ValueError(f"split must be 'train', 'heldout' or None, not {split!r}.")
    splits = ("train", "heldout") if split is None else (split,)
    open_prompts = [Template(text, split=s) for s in splits for text in OPEN_PROMPTS[s]]
    return [t for t in question_templates(PERSON) if t.split in splits] + open_prompts


def made_up_names(n: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[str]:
    """`n` distinct two-word names built from the embedded world's syllables ("Kalo Renvi"), seeded."""
    rng, taken, names = random.Random(seed), set(exclude), []
    while len(names) < n:
        words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize() for _ in range(2)]
        name = " ".join(words)
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


@dataclass
class PeopleBench:
    """Labelled people for recognition and forgetting.

    `entities`: known famous people and unknown obscure players. `answers`: `label_entities`' table for
    both candidate groups (one row per candidate, `kind` "person" or "player"). `made_up`: made-up names,
    the secondary control; `made_up_answers`: their answers to the person questions (`label_entities`'
    table), i.e. what the model says about anyone it has never heard of. `chance_known`: how many famous
    people would count as known if the model answered each of them as it answers a made-up name (the
    mean over made-up names), the floor that "known" must clear.
    """

    entities: EntitySet
    answers: pd.DataFrame
    made_up: list[str]
    made_up_answers: pd.DataFrame
    chance_known: float

    def counts(self) -> pd.DataFrame:
        """Known / unknown / discarded per candidate group, and how each label was decided."""
        table = label_counts(self.answers)
        rule = {
            PERSON: "known = nationality and occupation right; unknown = neither",
            "player": "unknown = none of birth year, birthplace, team right; known = 2 or more",
        }
        return table.assign(rule=[rule.get(kind, "") for kind in table["kind"]])


def people_bench(
    model: HookedTransformer,
    *,
    n_players: int = 120,
    n_made_up: int = 40,
    seed: int = 0,
    people_data: str | Path | None = None,
    wikidata: str | Path | None = None,
    progress: bool = True,
) -> PeopleBench:
    """Label the famous people and `n_players` random basketball players (seeded) by `model`'s answers.

    Players sharing a name with a famous person are left out. The known set is the famous people labelled
    known, the unknown set the players labelled unknown (famous people the model knows nothing about are
    not used as unknowns: they are few and would mix two populations). Labels are cached by
    `label_entities`. `chance_known` comes from the made-up names' answers to the same questions.

    >>> bench = people_bench(load_model("gemma3-270m"))
    >>> bench.counts()
    """
    people = load_people(data_dir=people_data)
    famous = {p.name for p in people}
    players = [p for p in load_entities("player", data_dir=wikidata) if p.name not in famous]
    if n_players > len(players):
        raise ValueError(f"Asked for {n_players} players but only {len(players)} are available.")
    players = random.Random(seed).sample(players, n_players)
    known_set, people_answers = label_entities(model, people, progress=progress)
    unknown_set, player_answers = label_entities(model, players, progress=progress)
    made_up = made_up_names(n_made_up, seed, exclude=famous | {p.name for p in players})
    strangers = [Entity(name, {spec.name: "?" for spec in attributes(PERSON)}, PERSON) for name in made_up]
    _, made_up_answers = label_entities(model, strangers, progress=progress)
    return PeopleBench(
        entities=EntitySet(known_set.known, unknown_set.unknown),
        answers=pd.concat([people_answers, player_answers], ignore_index=True),
        made_up=made_up,
        made_up_answers=made_up_answers,
        chance_known=chance_known(people, made_up_answers),
    )


def chance_known(people: Sequence[Entity], made_up_answers: pd.DataFrame) -> float:
    """How many of `people` a model would label known if it answered each as it answers a made-up name.

    Each made-up name's answers to the person questions (`made_up_answers`, `label_entities`' table) are
    checked against every person's gold values; the result is the mean, over made-up names, of the number
    of people whose every attribute that answer would get right.
    """
    total = 0
    for _, row in made_up_answers.iterrows():
        total += sum(
            all(spec.check(row[f"{spec.name}_answer"], p.attributes[spec.name]) for spec in attributes(PERSON))
            for p in people
        )
    return total / len(made_up_answers)
