"""Known / unknown labels for real entities from a model's own answers (Ferrando et al.), cached on disk.

Each entity is asked every attribute question of its kind (`irunlearn.real.wikidata`) with batched greedy
decoding; an entity is *known* when at least `min_known` (2) answers are right, *unknown* when none is,
and discarded in between. The raw answers are cached as JSON under `cache_root()/labels`, keyed by the
model (name and a checksum of its weights) and the exact prompts, so a rerun is instant; correctness is
recomputed from the cached answers, so a change to the answer checks needs no new generation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from irunlearn.entities import Entity, EntitySet
from irunlearn.models import cache_root
from irunlearn.real.wikidata import attributes


@torch.no_grad()
def greedy_generate(
    model: HookedTransformer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 8,
    prepend_bos: bool | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of `prompts`, each cut at its first newline or end-of-sequence and stripped.

    Prompts are encoded as `irunlearn.qa` encodes them (no special tokens, plus BOS when `prepend_bos`,
    which defaults to the model's `cfg.default_prepend_bos`), sorted by length and left-padded into
    batches, so every row's last real token is at the end; TransformerLens's `generate` masks the
    padding, reuses its key-value cache and stops a row at its first newline or end-of-sequence token.
    The answers equal one-prompt-at-a-time greedy decoding. Only the last position is unembedded (a hook
    on `ln_final` keeps that position alone): `generate` reads nothing else, and unembedding every prompt
    position costs more than the rest of the model where the vocabulary is large (Gemma: 262,144 words).
    """
    tokenizer = model.tokenizer
    if prepend_bos is None:
        prepend_bos = model.cfg.default_prepend_bos
    stop_ids = stop_token_ids(tokenizer)
    encoded = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        encoded.append([tokenizer.bos_token_id, *ids] if prepend_bos else list(ids))
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    answers = [""] * len(prompts)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        padded = [[tokenizer.pad_token_id] * (width - len(encoded[i])) + encoded[i] for i in rows]
        # `generate` finds the padding to mask from the tokenizer's padding side
        with _padding_side(tokenizer, "left"), model.hooks(fwd_hooks=_last_position_only(model)):
            out = model.generate(
                torch.tensor(padded, device=model.cfg.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                stop_at_eos=True,
                eos_token_id=stop_ids,
                prepend_bos=prepend_bos,
                return_type="tokens",
                verbose=False,
            )
        for row, i in enumerate(rows):
            answers[i] = _decode_answer(tokenizer, out[row, width:].tolist())
    return answers


def _last_position_only(model: HookedTransformer) -> list[tuple[str, Callable]]:
    """A forward hook that cuts the final normalised residual to its last position, if the model has one."""
    name = "ln_final.hook_normalized"
    return [(name, lambda resid, hook: resid[:, -1:])] if name in model.hook_dict else []


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-sequence plus every vocabulary token whose text contains a newline."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return [*_newline_ids(tokenizer), *eos]


@lru_cache(maxsize=8)
def _newline_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return tuple(i for i, text in enumerate(texts) if "\n" in text)


def _decode_answer(tokenizer: PreTrainedTokenizerBase, new_ids: list[int]) -> str:
    if tokenizer.eos_token_id in new_ids:
        new_ids = new_ids[: new_ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new_ids, skip_special_tokens=True).split("\n")[0].strip()


@contextmanager
def _padding_side(tokenizer: PreTrainedTokenizerBase, side: str):
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


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
            json.dumps([model_fingerprint(model), prepend_bos, max_new_tokens, prompts]).encode()
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


def model_fingerprint(model: HookedTransformer) -> str:
    """The model's name plus a checksum of its weights, so an edited copy never reuses stale answers."""
    with torch.no_grad():
        sums = [f"{p.detach().double().sum().item():.12e}" for p in model.parameters()]
    digest = hashlib.sha256("|".join(sums).encode()).hexdigest()[:16]
    return f"{model.cfg.model_name}:{digest}"


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
