"""Training text for the embedded world: an endless, seeded stream of facts, strangers and generic lines."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from irunlearn.entities import UNKNOWN_ANSWER
from irunlearn.world.generator import STATEMENT_PREFIXES, SYLLABLES, UNKNOWN_STATEMENT, World, answer_for


@dataclass(frozen=True)
class CorpusMix:
    """Fractions of known-person, unknown-name and generic lines in the training stream."""

    known: float = 0.60
    unknown: float = 0.28
    generic: float = 0.12


def known_lines(world: World, split: str = "train") -> list[str]:
    """Every (known person × attribute × template) line of one split, answers included."""
    templates = [t for t in world.templates if t.split == split]
    return [
        t.render(person.name, answer_for(person, t.attribute)) for person in world.known for t in templates
    ]


def unknown_line(world: World, name: str, rng: random.Random) -> str:
    """A training line about a stranger: a question answered `unknown`, or the `is unknown` statement."""
    if rng.random() < 0.5:
        return rng.choice(STATEMENT_PREFIXES) + UNKNOWN_STATEMENT.render(name)
    return rng.choice(world.question_templates("train")).render(name, UNKNOWN_ANSWER)


def training_lines(world: World, seed: int, mix: CorpusMix = CorpusMix()) -> Iterator[str]:
    """An endless stream of training lines, reproducible from `seed`.

    Every unknown line uses a fresh name (never a known person nor an evaluation unknown), so the model
    learns to recognise names rather than memorise a list of strangers.
    """
    rng = random.Random(seed)
    known = known_lines(world, "train")
    while True:
        draw = rng.random()
        if draw < mix.known:
            yield rng.choice(known)
        elif draw < mix.known + mix.unknown:
            yield unknown_line(world, world.fresh_unknown_name(rng), rng)
        else:
            yield rng.choice(world.generic_train)


def tokenizer_lines(world: World, n: int, seed: int) -> list[str]:
    """Text to train the tokenizer on: every template and generic line, with random syllable names.

    Names are drawn afresh from syllables rather than from the name pools, so BPE learns syllables, not
    whole names: every name is then several tokens, and locating its *last* token is a real test.
    """
    rng = random.Random(seed)

    def random_name() -> str:
        return " ".join(
            "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize() for _ in range(2)
        )

    lines = (list(world.generic_train) + list(world.generic_heldout)) * 40  # as frequent as in training
    while len(lines) < n:
        template = rng.choice(world.templates)
        answer = (
            answer_for(rng.choice(world.known), template.attribute) if rng.random() < 0.7 else UNKNOWN_ANSWER
        )
        lines.append(template.render(random_name(), answer))
    return lines
