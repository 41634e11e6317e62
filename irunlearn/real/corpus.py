"""Local text for a real model: facts rendered from the Wikidata records, few-shot questions, generic prose.

Nothing here needs the network. Three sources:

- **fact sentences** rendered from an entity's attributes (`"Lyon is a city in France. It has a population of
  about 520,000."`);
- **question documents**: an attribute's few-shot question template filled in with the entity and its true
  answer, the very text recognition reads at the entity token;
- **generic prose**: English paragraphs from Python's own documentation (`pydoc_data.topics`, shipped with
  every CPython), split by topic into a fixed `"train"` part (SAE training, retain text) and a `"heldout"`
  part (perplexity), so the two never share a paragraph.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cache
from typing import Literal

from irunlearn.entities import Entity
from irunlearn.real.wikidata import attributes, split_values

HELDOUT_TOPIC_EVERY = 5  # every fifth documentation topic (in sorted order) is held out
_MIN_WORDS = 12
_NOT_PROSE = ("::=", ">>>", "|", "+--", "===")


def format_population(value: str) -> str:
    """A population the way the few-shot examples write it: "2148000" → "2.1 million", "52533" → "53,000"."""
    try:
        number = float(value)
    except ValueError:
        return value
    if number >= 1e6:
        return f"{number / 1e6:.1f} million"
    if number >= 1e4:
        return f"{round(number, -3):,.0f}"
    return f"{number:,.0f}"


def answer_text(attribute: str, value: str) -> str:
    """How an attribute value is written in text: populations rounded and in words, the rest as stored."""
    return format_population(value) if attribute == "population" else value


def _listing(values: Sequence[str], limit: int = 3) -> str:
    values = list(values)[:limit]
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} and {values[-1]}"


def entity_sentences(entity: Entity) -> list[str]:
    """Declarative sentences stating an entity's attributes (cities, players, songs, movies, people).

    >>> entity_sentences(Entity("Lyon", {"country": "France", "population": "520000"}, kind="city"))
    ['Lyon is a city in France.', 'Lyon has a population of about 520,000.']
    """
    a = {key: split_values(value) for key, value in entity.attributes.items()}
    name, out = entity.name, []
    if entity.kind == "city":
        if a.get("country"):
            out.append(f"{name} is a city in {a['country'][0]}.")
        if a.get("population"):
            out.append(f"{name} has a population of about {format_population(a['population'][0])}.")
        if a.get("elevation"):
            out.append(f"{name} lies {a['elevation'][0]} metres above sea level.")
    elif entity.kind == "player":
        born = " ".join(
            part
            for part in (
                f"in {a['birth_year'][0]}" if a.get("birth_year") else "",
                f"in {a['birthplace'][0]}" if a.get("birthplace") else "",
            )
            if part
        )
        if born:
            out.append(f"The basketball player {name} was born {born}.")
        if a.get("team"):
            out.append(f"{name} played for {_listing(a['team'])}.")
    elif entity.kind == "song":
        if a.get("performer"):
            out.append(f'"{name}" is a song by {_listing(a["performer"])}.')
        if a.get("release_year"):
            out.append(f'"{name}" was released in {a["release_year"][0]}.')
        if a.get("album"):
            out.append(f'"{name}" appeared on the album {a["album"][0]}.')
    elif entity.kind == "movie":
        if a.get("release_year") and a.get("director"):
            out.append(f"{name} is a {a['release_year'][0]} film directed by {_listing(a['director'])}.")
        elif a.get("director"):
            out.append(f"{name} is a film directed by {_listing(a['director'])}.")
        if a.get("screenwriter"):
            out.append(f"The screenplay of {name} was written by {_listing(a['screenwriter'])}.")
        if a.get("cast"):
            out.append(f"{name} stars {_listing(a['cast'])}.")
    elif entity.kind == "person":
        if a.get("nationality") and a.get("occupation"):
            nationality = a["nationality"][0]
            article = "an" if nationality[0].upper() in "AEIOU" else "a"
            out.append(f"{name} is {article} {nationality} {_listing(a['occupation'])}.")
        elif a.get("occupation"):
            out.append(f"{name} is known as a {_listing(a['occupation'])}.")
    else:
        raise ValueError(f"No sentences for entity kind {entity.kind!r}.")
    return out


def question_documents(entities: Sequence[Entity], split: Literal["train", "heldout"] = "train") -> list[str]:
    """Each entity's few-shot attribute questions of `split`, answered with its true (first) value."""
    docs = []
    for entity in entities:
        for spec in attributes(entity.kind):
            if spec.name not in entity.attributes:
                continue
            answer = answer_text(spec.name, split_values(entity.attributes[spec.name])[0])
            docs += [t.render(entity.name, answer) for t in spec.templates if t.split == split]
    return docs


def fact_documents(entities: Sequence[Entity], per_document: int = 1, seed: int = 0) -> list[str]:
    """Fact sentences of `entities`, `per_document` entities' sentences per document, in a seeded order."""
    order = list(entities)
    random.Random(seed).shuffle(order)
    return [
        " ".join(s for entity in order[i : i + per_document] for s in entity_sentences(entity))
        for i in range(0, len(order), per_document)
    ]


def generic_paragraphs(split: Literal["train", "heldout"] = "train", max_chars: int = 320) -> list[str]:
    """English prose from Python's documentation, cut at sentence ends into pieces of ≤ `max_chars`.

    Topics are split into `"train"` and `"heldout"` by position in sorted order (every
    `HELDOUT_TOPIC_EVERY`-th is held out), so the split is fixed across runs and machines; a piece that
    several topics share is held out if any of them is, and appears once. Code, grammar rules, tables and
    headings are left out; a piece has at least 12 words.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    pieces = _generic_pieces(max_chars)
    heldout = dict.fromkeys(p for s, p in pieces if s == "heldout")
    if split == "heldout":
        return list(heldout)
    return [p for p in dict.fromkeys(p for s, p in pieces if s == "train") if p not in heldout]


@cache
def _generic_pieces(max_chars: int) -> tuple[tuple[str, str], ...]:
    from pydoc_data.topics import topics

    pieces = []
    for i, topic in enumerate(sorted(topics)):
        split = "heldout" if i % HELDOUT_TOPIC_EVERY == 0 else "train"
        for block in re.split(r"\n\s*\n", topics[topic]):
            lines = block.splitlines()
            if not lines or lines[0].startswith((" ", "\t")) or any(mark in block for mark in _NOT_PROSE):
                continue  # code, grammar, tables, interactive examples
            if len(lines) > 1 and set(lines[-1].strip()) <= set("*=-^"):
                continue  # a heading
            text = " ".join(line.strip() for line in lines)
            pieces += [(split, piece) for piece in _chunks(text, max_chars) if len(piece.split()) >= _MIN_WORDS]
    return tuple(pieces)


def _chunks(text: str, max_chars: int) -> list[str]:
    """Sentences of `text` packed greedily into pieces of at most `max_chars` (a longer sentence stays whole)."""
    chunks, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if current and len(current) + 1 + len(sentence) > max_chars:
            chunks.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        chunks.append(current)
    return [c for c in chunks if len(c) <= 2 * max_chars]
