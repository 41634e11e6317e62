"""The embedded world: fictional people, name pools, templates and generic text, all from one seed.

Known people have facts the model is trained on; unknown names are combinations of the same name pools
that were never given facts. Training samples a *fresh* unknown name for every unknown line, so the model
learns to recognise names rather than memorise a list; `unknown_eval` is a disjoint set of names that is
never seen in training and is what evaluation uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pandas as pd

from irunlearn.entities import UNKNOWN_ANSWER, Entity, EntitySet
from irunlearn.prompts import Template

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ren",
    "tas",
    "vel",
    "dor",
    "bri",
    "sen",
    "qua",
    "zor",
    "fin",
    "lu",
    "ma",
    "ti",
    "gor",
    "nes",
    "pa",
    "rik",
    "sol",
    "wen",
    "yar",
    "bel",
    "cor",
    "dan",
    "el",
    "fa",
    "hu",
    "is",
    "jo",
    "ke",
    "lin",
    "mo",
    "nu",
    "or",
    "pe",
    "ru",
    "sa",
    "to",
    "ul",
    "vi",
    "xa",
    "bo",
    "de",
    "gi",
    "ha",
    "jun",
    "kel",
    "mar",
    "no",
    "pi",
    "ro",
    "su",
    "tev",
    "wa",
    "yo",
    "zi",
]

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "sport": ("tennis", "soccer", "golf", "rugby", "hockey", "boxing", "cricket", "cycling"),
    "team": (
        "Falcons",
        "Tigers",
        "Wolves",
        "Sharks",
        "Eagles",
        "Bears",
        "Lions",
        "Hawks",
        "Ravens",
        "Comets",
        "Rockets",
        "Pirates",
        "Giants",
        "Storm",
        "Thunder",
        "Dragons",
        "Knights",
        "Rangers",
        "Owls",
        "Foxes",
    ),
    "birth_city": (
        "Lyon",
        "Porto",
        "Oslo",
        "Tokyo",
        "Lima",
        "Cairo",
        "Dublin",
        "Vienna",
        "Madrid",
        "Seoul",
        "Nairobi",
        "Quito",
        "Berlin",
        "Athens",
        "Toronto",
        "Denver",
        "Milan",
        "Krakow",
        "Bergen",
        "Osaka",
        "Perth",
        "Munich",
        "Seville",
        "Boston",
    ),
    "birth_decade": ("1950s", "1960s", "1970s", "1980s", "1990s", "2000s"),
    "occupation": (
        "baker",
        "teacher",
        "pilot",
        "nurse",
        "farmer",
        "lawyer",
        "painter",
        "chef",
        "doctor",
        "engineer",
        "writer",
        "sailor",
    ),
}

COUNTRY = {
    "Lyon": "France",
    "Porto": "Portugal",
    "Oslo": "Norway",
    "Tokyo": "Japan",
    "Lima": "Peru",
    "Cairo": "Egypt",
    "Dublin": "Ireland",
    "Vienna": "Austria",
    "Madrid": "Spain",
    "Seoul": "Korea",
    "Nairobi": "Kenya",
    "Quito": "Ecuador",
    "Berlin": "Germany",
    "Athens": "Greece",
    "Toronto": "Canada",
    "Denver": "America",
    "Milan": "Italy",
    "Krakow": "Poland",
    "Bergen": "Norway",
    "Osaka": "Japan",
    "Perth": "Australia",
    "Munich": "Germany",
    "Seville": "Spain",
    "Boston": "America",
}

# The word that names each attribute in the generic question frames below.
ATTRIBUTE_WORDS = {
    "sport": "sport",
    "team": "team",
    "birth_city": "birth city",
    "birth_decade": "birth decade",
    "occupation": "job",
}

_TRAIN_FRAMES = (
    "Q: What is the {kw} of {name}? A:",
    "Q: What is {name}'s {kw}? A:",
    "Q: {name}, {kw}? A:",
    "Q: Tell me the {kw} of {name}. A:",
    "Q: For {name}, what is the {kw}? A:",
)
_HELDOUT_FRAMES = (
    "Q: Tell me {name}'s {kw}. A:",
    "Q: What is the {kw} for {name}? A:",
)
_NATURAL_QUESTIONS = {
    "sport": "Q: What sport does {name} play? A:",
    "team": "Q: Which team does {name} play for? A:",
    "birth_city": "Q: Where was {name} born? A:",
    "birth_decade": "Q: In which decade was {name} born? A:",
    "occupation": "Q: What does {name} do for a living? A:",
}
# Statements put recognition pressure on the name token itself: the very next token differs for known
# people (a verb that starts a fact) and unknown ones ("is unknown"), so "do I know this person?" must be
# decided at the last token of the name, as in large models (DESIGN §6).
_STATEMENTS = {
    "sport": "{name} plays {answer}.",
    "team": "{name} plays for the {answer}.",
    "birth_city": "{name} was born in {answer}.",
    "birth_decade": "{name} was born in the {answer}.",
    "occupation": "{name} works as a {answer}.",
}
UNKNOWN_STATEMENT = Template("{name} is unknown.", kind="statement")
STATEMENT_PREFIXES = ("", "Fact: ", "Note: ", "Story: ", "Today ", "Yes, ")

N_RETAIN_EVAL = 150  # known people no task retains: the evaluator's retain people (a fixed draw, seed 7)
RETAIN_EVAL_SEED = 7
# The standard forget sets (TOFU's names, but sizes in people: 1, 5 and 10 of the 400 known), nested and
# drawn once with this seed among the known people outside the retain-evaluation draw.
FORGET_SET_SIZES = {"forget01": 1, "forget05": 5, "forget10": 10}
FORGET_SETS_SEED = 20


def _templates() -> list[Template]:
    templates = []
    for attribute, word in ATTRIBUTE_WORDS.items():
        for frames, split in ((_TRAIN_FRAMES, "train"), (_HELDOUT_FRAMES, "heldout")):
            for frame in frames:
                templates.append(Template(frame.replace("{kw}", word), attribute, "question", split))
        templates.append(Template(_NATURAL_QUESTIONS[attribute], attribute, "question", "train"))
        for prefix in STATEMENT_PREFIXES:
            templates.append(Template(prefix + _STATEMENTS[attribute], attribute, "statement", "train"))
    return templates


_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_LETTERS = list("abcdefghijklmnopqrstuvwxyz")


def _generic_lines() -> list[str]:
    """Entity-free text: city→country facts and simple sequences, for perplexity and collapse checks."""
    lines = []
    for city, country in COUNTRY.items():
        lines += [f"{city} is a city in {country}.", f"The city of {city} lies in {country}."]
    for seq in (_NUMBER_WORDS, _WEEKDAYS * 2, _LETTERS):
        for start in range(len(seq) - 4):
            for length in (5, 7):
                if start + length <= len(seq):
                    lines.append(" ".join(seq[start : start + length]) + " .")
    return sorted(set(lines))


@dataclass
class World:
    """Everything the embedded world is made of; rebuilt identically from `seed`."""

    seed: int
    entities: EntitySet  # known people and the held-out unknown names used for evaluation
    first_names: list[str]
    last_names: list[str]
    templates: list[Template]
    generic_train: list[str]
    generic_heldout: list[str]
    attributes: tuple[str, ...] = field(default=tuple(ATTRIBUTE_WORDS))
    forget_sets: dict[str, list[str]] = field(default_factory=dict)  # name → known people's names, nested

    @property
    def known(self) -> list[Entity]:
        return self.entities.known

    @property
    def unknown_eval(self) -> list[Entity]:
        return self.entities.unknown

    def question_templates(self, split: str = "train", attribute: str | None = None) -> list[Template]:
        """Question templates of one split (`"train"` / `"heldout"` / `"all"`), optionally one attribute."""
        return [
            t
            for t in self.templates
            if t.kind == "question"
            and (split == "all" or t.split == split)
            and (attribute is None or t.attribute == attribute)
        ]

    def retain_eval_people(self) -> list[Entity]:
        """The known people held out of every world task's retain set (`N_RETAIN_EVAL`, drawn with seed 7)."""
        return self.entities.sample_known(N_RETAIN_EVAL, seed=RETAIN_EVAL_SEED)

    def forget_set(self, name: str) -> list[Entity]:
        """The people of the standard forget set `name` (`forget01`, `forget05`, `forget10`)."""
        if name not in self.forget_sets:
            raise ValueError(
                f"No forget set {name!r} in this world; it has {sorted(self.forget_sets) or 'none'}. "
                "(A world.json written before forget sets existed has none: rebuild it or regenerate world.json.)"
            )
        return [self.entities.get(person) for person in self.forget_sets[name]]

    def statement_templates(self) -> list[Template]:
        return [t for t in self.templates if t.kind == "statement"]

    def questions(self, entities: list[Entity], split: str = "train") -> pd.DataFrame:
        """Every (entity × question template of `split`) with the world's answer: `unknown` for strangers.

        Columns: entity, attribute, template, prompt, answer.
        """
        return pd.DataFrame(
            [
                {
                    "entity": e.name,
                    "attribute": t.attribute,
                    "template": t.text,
                    "prompt": t.render(e.name),
                    "answer": answer_for(e, t.attribute),
                }
                for e in entities
                for t in self.question_templates(split)
            ]
        )

    def fresh_unknown_name(self, rng: random.Random) -> str:
        """A random name from the pools that is neither a known person nor an evaluation unknown."""
        while True:
            name = f"{rng.choice(self.first_names)} {rng.choice(self.last_names)}"
            if name not in self.entities:
                return name


def _pool(rng: random.Random, n: int, syllables: tuple[int, ...], taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice(syllables))).capitalize()
        if word not in taken:
            taken.add(word)
            names.append(word)
    return names


def generate_world(
    seed: int = 0, n_known: int = 400, n_unknown_eval: int = 400, n_first: int = 120, n_last: int = 160
) -> World:
    """Generate the embedded world deterministically from `seed`."""
    if n_known + n_unknown_eval > n_first * n_last // 4:
        raise ValueError("Too many people for the name pools; raise n_first / n_last.")
    rng = random.Random(seed)
    taken: set[str] = set()
    first_names = _pool(rng, n_first, (2,), taken)
    last_names = _pool(rng, n_last, (2, 3), taken)
    names: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < n_known + n_unknown_eval:
        name = f"{rng.choice(first_names)} {rng.choice(last_names)}"
        if name not in names:
            names.add(name)
            ordered.append(name)
    known = [
        Entity(name, {attr: rng.choice(values) for attr, values in ATTRIBUTE_VALUES.items()})
        for name in ordered[:n_known]
    ]
    unknown = [Entity(name) for name in ordered[n_known:]]
    generic = _generic_lines()
    rng.shuffle(generic)
    cut = len(generic) // 5
    entities = EntitySet(known, unknown)
    return World(
        seed=seed,
        entities=entities,
        first_names=first_names,
        last_names=last_names,
        templates=_templates(),
        generic_train=sorted(generic[cut:]),
        generic_heldout=sorted(generic[:cut]),
        forget_sets=standard_forget_sets(entities, seed),
    )


def standard_forget_sets(entities: EntitySet, seed: int) -> dict[str, list[str]]:
    """`forget01` ⊂ `forget05` ⊂ `forget10`: prefixes of one seeded draw of known people.

    The draw uses its own generator (`FORGET_SETS_SEED` and the world's seed), so choosing the sets changes
    nothing else in the world. Candidates are the known people outside the retain-evaluation draw, so a
    forget set never removes people the evaluator measures retention on; worlds too small for that draw
    (`--small`) choose among all known people.
    """
    held_out: set[str] = set()
    if len(entities.known) >= N_RETAIN_EVAL + max(FORGET_SET_SIZES.values()):
        held_out = {e.name for e in entities.sample_known(N_RETAIN_EVAL, seed=RETAIN_EVAL_SEED)}
    candidates = [e.name for e in entities.known if e.name not in held_out]
    order = random.Random(f"{FORGET_SETS_SEED}/{seed}").sample(candidates, max(FORGET_SET_SIZES.values()))
    return {name: order[:size] for name, size in FORGET_SET_SIZES.items()}


def answer_for(entity: Entity, attribute: str) -> str:
    """What the world says about `entity`'s `attribute`: the fact, or `unknown` for a stranger."""
    return entity.attributes.get(attribute, UNKNOWN_ANSWER)
