"""Prompt templates, locating an entity's last token in a tokenized prompt, and the (entity, question,
answer) tables rendered from them with their per-entity accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    from irunlearn.entities import Entity

NAME_SLOT = "{name}"


@dataclass(frozen=True)
class Template:
    """A phrasing with a `{name}` slot.

    `kind="question"` templates end where the answer starts (the answer follows after a space);
    `kind="statement"` templates hold an `{answer}` slot of their own. `split` says whether the phrasing is
    used for training (`"train"`) or kept for paraphrase evaluation (`"heldout"`).
    """

    text: str
    attribute: str | None = None
    kind: Literal["question", "statement"] = "question"
    split: Literal["train", "heldout"] = "train"

    def __post_init__(self) -> None:
        if self.text.count(NAME_SLOT) != 1:
            raise ValueError(f"Template must contain {NAME_SLOT!r} exactly once: {self.text!r}")

    def render(self, name: str, answer: str | None = None) -> str:
        """The template filled in; for a question with `answer`, the answer appended after a space."""
        filled = self.text.replace(NAME_SLOT, name)
        if self.kind == "statement":
            return filled.replace("{answer}", answer if answer is not None else "{answer}")
        return filled if answer is None else f"{filled} {answer}"

    def prefix(self, name: str) -> str:
        """The rendered text up to and including the name: all a causal model sees at the entity token."""
        return self.text[: self.text.index(NAME_SLOT)] + name


def entity_token_index(tokenizer: PreTrainedTokenizerBase, prompt: str, name: str, prepend_bos: bool = True) -> int:
    """Position of the last token of the first occurrence of `name` in `prompt`.

    Found from the tokenizer's character offsets (or incremental decoding for tokenizers without them),
    so it holds for any tokenization of the name. The position counts the BOS token when `prepend_bos`.

    >>> entity_token_index(tok, "Q: Where was Kalo Renvi born? A:", "Kalo Renvi")
    """
    return entity_token_positions(tokenizer, [prompt], [name], prepend_bos)[0][1]


def entity_token_positions(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    names: Sequence[str],
    prepend_bos: bool = True,
) -> list[tuple[list[int], int]]:
    """For each (prompt, name): the token ids (BOS first when `prepend_bos`) and the entity-token index."""
    if len(prompts) != len(names):
        raise ValueError(f"{len(prompts)} prompts but {len(names)} names.")
    out = []
    for prompt, name in zip(prompts, names, strict=True):
        ids, _, last = name_token_span(tokenizer, prompt, name)
        bos = [bos_id(tokenizer)] if prepend_bos else []
        out.append((bos + ids, last + len(bos)))
    return out


def name_token_span(tokenizer: PreTrainedTokenizerBase, prompt: str, name: str) -> tuple[list[int], int, int]:
    """`prompt`'s token ids (no special tokens) and the indices of the first and last token of `name` in it
    (its first occurrence), from where each token starts: the last token starting before the name's second
    character, and the last starting before its end."""
    start = prompt.find(name)
    if not name or start < 0:
        raise ValueError(
            f"Entity {name!r} does not occur in prompt {prompt!r}. Render the prompt from a template "
            "with the entity's exact name (names are case-sensitive)."
        )
    ids, starts = _token_starts(tokenizer, prompt)
    return ids, _last_token_before(starts, start + 1), _last_token_before(starts, start + len(name))


def _token_starts(tokenizer: PreTrainedTokenizerBase, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids of `prompt` (no special tokens) and the character where each token's text starts."""
    if tokenizer.is_fast:
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [s for s, _ in enc["offset_mapping"]]
    # incremental decoding: where each token's text starts in the prompt
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ids, [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


def _last_token_before(starts: list[int], end: int) -> int:
    """The index of the last token that starts before character `end`."""
    return [i for i, s in enumerate(starts) if s < end][-1]


def bos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("prepend_bos=True but the tokenizer has no bos_token; pass prepend_bos=False.")
    return bos


def fact_questions(
    entities: Sequence[Entity], templates: Sequence[Template], questions_only: bool = True
) -> pd.DataFrame:
    """(entity, attribute, prompt, answer) for each entity × template of an attribute it has: what the
    evaluator asks (question templates only) and what a method trains on (`questions_only=False`)."""
    return pd.DataFrame(
        [
            {
                "entity": e.name,
                "attribute": t.attribute,
                "prompt": t.render(e.name),
                "answer": e.attributes[t.attribute],
            }
            for e in entities
            for t in templates
            if (t.kind == "question" or not questions_only) and t.attribute in e.attributes
        ],
        columns=["entity", "attribute", "prompt", "answer"],
    )


def names_in_place(questions: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Each question (`fact_questions` rows) asked again with each of `names` in its entity's place, the
    entity and answer kept (how a stranger fares on a target's question), question by question."""
    rows = [
        {**question, "prompt": question["prompt"].replace(question["entity"], name)}
        for question in questions.to_dict("records")
        for name in names
    ]
    return pd.DataFrame(rows, columns=questions.columns)


def per_entity_accuracy(questions: pd.DataFrame, correct: torch.Tensor) -> pd.Series:
    """Per-entity fraction of `questions` judged `correct`, in the entities' order of appearance."""
    return pd.Series(correct.float().cpu().numpy(), index=questions["entity"]).groupby(level=0, sort=False).mean()
