"""Known / unknown labels for real entities from a model's own answers (Ferrando et al.), cached on disk.

Each entity is asked every attribute question of its kind (`irunlearn.real.wikidata`) with batched greedy
decoding; an entity is *known* when at least `min_known` (2) answers are right, *unknown* when none is,
and discarded in between. The raw answers are cached as JSON under `cache_root()/labels`, keyed by the
model (`irunlearn.edits.weights_hash`, the package's one model hash) and the exact prompts, so a rerun is
instant; correctness is recomputed from the cached answers, so a change to the checks needs no new
generation. The answers are `irunlearn.qa.greedy_generate`'s, the lenient judge's generator.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer

from irunlearn.entities import Entity, EntitySet
from irunlearn.io import weights_hash
from irunlearn.models import cache_root
from irunlearn.qa import greedy_generate
from irunlearn.real.wikidata import attributes


def label_entities(
    model: HookedTransformer,
    entities: Sequence[Entity],
    *,
    min_known: int = 2,
    prepend_bos: bool | None = None,
    max_new_tokens: int = 8,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> tuple[EntitySet, pd.DataFrame]:
    """Label `entities` known / unknown by how many of their attribute questions `model` answers right.

    Asks each entity the labelling ("train") question of every attribute its record has and checks the
    greedy answers. Returns the `EntitySet` (known: at least `min_known` right; unknown: none of at least
    one asked right; the rest discarded) and one row per entity: `name`, `kind`, `label` ("known",
    "unknown", "discarded"), `n_correct`, `n_asked` and per attribute `<attribute>_answer`,
    `<attribute>_correct`. Answers are cached under `cache_dir` (default `cache_root()/labels`) unless
    `use_cache=False`.

    >>> known_unknown, answers = label_entities(model, load_entities("city", n=200, seed=0))
    """
    if prepend_bos is None:
        prepend_bos = model.cfg.default_prepend_bos
    questions = [
        (entity, spec, spec.templates[0].render(entity.name))
        for entity in entities
        for spec in attributes(entity.kind)
        if spec.name in entity.attributes
    ]
    prompts = [prompt for _, _, prompt in questions]
    generate = partial(
        greedy_generate,
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        prepend_bos=prepend_bos,
        batch_size=batch_size,
        progress=progress,
    )
    if use_cache:
        key = hashlib.sha256(
            json.dumps([weights_hash(model), prepend_bos, max_new_tokens, prompts]).encode()
        ).hexdigest()[:16]
        kinds = "-".join(sorted({e.kind for e in entities}))
        root = Path(cache_dir) if cache_dir is not None else cache_root() / "labels"
        cache_file = root / _safe(model.cfg.model_name) / f"{kinds}-{len(entities)}-{key}.json"
        answers = _cached(cache_file, generate, model.cfg.model_name, prompts)
    else:
        answers = generate()

    rows = {e.name: {"name": e.name, "kind": e.kind, "label": "", "n_correct": 0, "n_asked": 0} for e in entities}
    for (entity, spec, _), answer in zip(questions, answers, strict=True):
        correct = spec.check(answer, entity.attributes[spec.name])
        row = rows[entity.name]
        row.update({f"{spec.name}_answer": answer, f"{spec.name}_correct": correct})
        row["n_asked"] += 1
        row["n_correct"] += int(correct)
    for row in rows.values():
        if row["n_correct"] >= min_known:
            row["label"] = "known"
        elif row["n_correct"] == 0 and row["n_asked"] > 0:
            row["label"] = "unknown"
        else:
            row["label"] = "discarded"
    frame = pd.DataFrame(list(rows.values()))
    known = [e for e in entities if rows[e.name]["label"] == "known"]
    unknown = [e for e in entities if rows[e.name]["label"] == "unknown"]
    return EntitySet(known, unknown), frame


def _cached(path: Path, generate: Callable[[], list[str]], model_name: str, prompts: list[str]) -> list[str]:
    """The answers stored at `path`, or `generate()`'s, stored there first."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["answers"]
    answers = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_file = path.with_name(f".{path.name}.partial")
    data = {"model": model_name, "prompts": prompts, "answers": answers}
    partial_file.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    partial_file.replace(path)
    return answers


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def label_counts(answers: pd.DataFrame) -> pd.DataFrame:
    """Known / unknown / discarded entities per kind, from `label_entities`' answer table."""
    counts = pd.crosstab(answers["kind"], answers["label"])
    for label in ("known", "unknown", "discarded"):
        if label not in counts:
            counts[label] = 0
    counts = counts[["known", "unknown", "discarded"]]
    counts["total"] = counts.sum(axis=1)
    return counts.reset_index().rename_axis(columns=None)
