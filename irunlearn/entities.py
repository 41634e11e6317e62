"""Entities (a name plus attributes) and the known / unknown splits they come in."""

from __future__ import annotations

import random
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

UNKNOWN_ANSWER = "unknown"


class UnknownEntityError(KeyError):
    """No entity by that name. A KeyError whose text prints as given (KeyError's own repr-quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class Entity:
    """A named entity and its ground-truth attributes (empty for an entity nobody knows)."""

    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    kind: str = "person"

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("Entity.name must be a non-empty string.")


@dataclass
class EntitySet:
    """Known and unknown entities, the two populations that recognition separates.

    In the embedded world the labels are ground truth (trained on / never seen); for a real model they
    come from the model's own answers (see `irunlearn.real.label_entities`).
    """

    known: list[Entity]
    unknown: list[Entity]

    def __post_init__(self) -> None:
        counts = Counter(e.name for e in [*self.known, *self.unknown])
        dupes = [name for name, count in counts.items() if count > 1]
        if dupes:
            raise ValueError(f"Entity names must be unique across known and unknown; repeated: {sorted(dupes)[:5]}")
        self._by_name = {e.name: e for e in [*self.known, *self.unknown]}

    def __len__(self) -> int:
        return len(self.known) + len(self.unknown)

    def __iter__(self) -> Iterator[Entity]:
        yield from self.known
        yield from self.unknown

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Entity:
        """The entity called `name`; an `UnknownEntityError` with names sharing a word when there is none."""
        if not isinstance(name, str) or not name.strip():
            raise UnknownEntityError(f"Entity name must be a non-empty string, got {name!r}. Give a person's name.")
        if name not in self._by_name:
            words = set(name.lower().split())
            close = [n for n in self._by_name if words & set(n.lower().split())][:5]
            hint = f" Names sharing a word: {close}." if close else ""
            raise UnknownEntityError(f"No entity named {name!r} in this set ({len(self)} entities).{hint}")
        return self._by_name[name]

    def is_known(self, name: str) -> bool:
        return self.get(name) in self.known

    def split(self, frac: float, seed: int) -> tuple[EntitySet, EntitySet]:
        """Split both populations into (first, second) with `frac` of each in the first, reproducibly."""
        first_known, second_known = _split(self.known, frac, seed)
        first_unknown, second_unknown = _split(self.unknown, frac, seed + 1)
        return EntitySet(first_known, first_unknown), EntitySet(second_known, second_unknown)

    def sample_known(self, n: int, seed: int, exclude: Iterable[str] = ()) -> list[Entity]:
        """`n` known entities drawn reproducibly with `seed`, skipping the names in `exclude`."""
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"The number of known entities to draw must be a whole number >= 0, got {n!r}.")
        excluded = set(exclude)
        pool = [e for e in self.known if e.name not in excluded]
        if n > len(pool):
            raise ValueError(f"Asked for {n} known entities but only {len(pool)} are available.")
        return random.Random(seed).sample(pool, n)


def attribute_values(people: Iterable[Entity]) -> dict[str, list[str]]:
    """Every value each attribute takes among `people`, sorted: the choices a forced-choice question ranks
    and the candidates for perturbed answers where no fuller pool is known."""
    values: dict[str, set[str]] = {}
    for person in people:
        for attribute, value in person.attributes.items():
            values.setdefault(attribute, set()).add(value)
    return {attribute: sorted(vals) for attribute, vals in values.items()}


def _split(items: Sequence[Entity], frac: float, seed: int) -> tuple[list[Entity], list[Entity]]:
    if not 0.0 < frac < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {frac}")
    order = list(items)
    random.Random(seed).shuffle(order)
    cut = round(len(order) * frac)
    return order[:cut], order[cut:]


def normalize_answer(text: str) -> str:
    """Lower-case, strip accents, punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_matches(predicted: str, gold: str) -> bool:
    """Exact match after `normalize_answer`."""
    return normalize_answer(predicted) == normalize_answer(gold)
