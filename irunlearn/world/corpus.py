"""Training text for the embedded world: an endless, seeded stream of facts, strangers and generic lines."""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from irunlearn.entities import UNKNOWN_ANSWER
from irunlearn.world.generator import STATEMENT_PREFIXES, UNKNOWN_STATEMENT, World, answer_for


@dataclass(frozen=True)
class CorpusMix:
    """Fractions of known-person, unknown-name and generic lines in the training stream."""

    known: float = 0.56
    unknown: float = 0.32
    generic: float = 0.12


def known_lines(world: World, split: str = "train", people: Collection[str] | None = None) -> list[str]:
    """Every (known person × attribute × template) line of one split, answers included (only `people`'s if given)."""
    templates = [t for t in world.templates if t.split == split]
    persons = [p for p in world.known if people is None or p.name in people]
    return [t.render(person.name, answer_for(person, t.attribute)) for person in persons for t in templates]


def unknown_line(world: World, name: str, rng: random.Random) -> str:
    """A training line about a stranger: a question answered `unknown`, or the `is unknown` statement."""
    if rng.random() < 0.6:
        return rng.choice(STATEMENT_PREFIXES) + UNKNOWN_STATEMENT.render(name)
    return rng.choice(world.question_templates("train")).render(name, UNKNOWN_ANSWER)


def training_lines(
    world: World, seed: int, mix: CorpusMix = CorpusMix(), exclude: Collection[str] = ()
) -> Iterator[str]:
    """An endless stream of training lines, reproducible from `seed`.

    Every unknown line uses a fresh name (never a known person nor an evaluation unknown), so the model
    learns to recognise names rather than memorise a list of strangers. The lines about the known people
    in `exclude` are dropped from the stream without changing its draws, so the stream is the full one
    with exactly those lines taken out: what an oracle (a model that never saw a forget set) trains on.
    Excluded people never appear as strangers either, so their names are new to such a model.
    """
    rng = random.Random(seed)
    known = known_lines(world, "train")
    dropped = set(known_lines(world, "train", people=set(exclude))) if exclude else set()
    while True:
        draw = rng.random()
        if draw < mix.known:
            line = rng.choice(known)
            if line not in dropped:
                yield line
        elif draw < mix.known + mix.unknown:
            yield unknown_line(world, world.fresh_unknown_name(rng), rng)
        else:
            yield rng.choice(world.generic_train)


def tokenizer_lines(world: World, n: int, seed: int) -> list[str]:
    """Text to train the tokenizer on: the training stream plus held-out phrasings and generic text.

    Names come from the world's pools (known people and fresh strangers alike), so BPE learns whole name
    words: a name is then a first-name token and a last-name token (sometimes more), and recognising a
    person means combining them at the last one, as for multi-token entity names in real models.
    """
    rng = random.Random(seed)
    lines = (list(world.generic_train) + list(world.generic_heldout)) * 40  # as frequent as in training
    lines += list(itertools.islice(training_lines(world, seed), n))
    while len(lines) < 2 * n:
        template = rng.choice(world.templates)
        person = rng.choice(world.known)
        lines.append(template.render(world.fresh_unknown_name(rng), answer_for(person, template.attribute)))
    return lines
