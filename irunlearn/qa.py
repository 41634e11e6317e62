"""Asking a model attribute questions: batched greedy answer checks and free-form greedy answers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.prompts import bos_id


def _encode(model: HookedTransformer, text: str, prepend_bos: bool) -> list[int]:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return [bos_id(model.tokenizer), *ids] if prepend_bos else list(ids)


@torch.no_grad()
def greedy_matches(
    model: HookedTransformer,
    prompts: Sequence[str],
    answers: Sequence[str],
    prepend_bos: bool = True,
    batch_size: int = 256,
    progress: bool = False,
    answer_eos: bool = True,
) -> Bool[torch.Tensor, " n"]:
    """Whether greedy decoding after each prompt produces exactly `" " + answer` (and then stops, with
    `answer_eos`: the embedded world's format; a few-shot answer of a real model ends however it likes).

    Checked by teacher forcing in one batched forward per chunk: the greedy continuation equals the
    answer iff the argmax at every answer position (and the end-of-sequence after it) is the gold token.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
    tokenizer = model.tokenizer
    stop = tokenizer.eos_token_id if answer_eos else None
    rows, spans = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids = _encode(model, prompt, prepend_bos)
        full = _encode(model, f"{prompt} {answer}", prepend_bos) + ([stop] if stop is not None else [])
        if full[: len(prompt_ids)] != prompt_ids:  # the answer merged into the prompt's last token
            prompt_ids = prompt_ids[:-1]
        rows.append(full)
        spans.append((len(prompt_ids), len(full)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.zeros(len(rows), dtype=torch.bool, device=model.cfg.device)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in tqdm(range(0, len(rows), batch_size), desc="QA", disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        width = max(len(rows[i]) for i in idx)
        tokens = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in idx], device=model.cfg.device)
        predicted = model(tokens, return_type="logits").argmax(-1)
        for row, i in enumerate(idx):
            a, b = spans[i]
            out[i] = bool((predicted[row, a - 1 : b - 1] == tokens[row, a:b]).all())
    return out


@torch.no_grad()
def greedy_continuations(
    model: HookedTransformer, prompts: Sequence[str], max_new_tokens: int = 6, prepend_bos: bool = True
) -> list[list[int]]:
    """Greedy continuation token ids per prompt, up to `max_new_tokens` or the end-of-sequence token."""
    continuations = []
    for prompt in prompts:
        tokens = torch.tensor([_encode(model, prompt, prepend_bos)], device=model.cfg.device)
        new: list[int] = []
        for _ in range(max_new_tokens):
            next_id = int(model(tokens, return_type="logits")[0, -1].argmax())
            if next_id == model.tokenizer.eos_token_id:
                break
            new.append(next_id)
            tokens = torch.cat([tokens, torch.tensor([[next_id]], device=tokens.device)], dim=1)
        continuations.append(new)
    return continuations


def greedy_answers(
    model: HookedTransformer, prompts: Sequence[str], max_new_tokens: int = 6, prepend_bos: bool = True
) -> list[str]:
    """Free-form greedy answers: the continuation's first line, stripped."""
    return [
        model.tokenizer.decode(ids).split("\n")[0].strip()
        for ids in greedy_continuations(model, prompts, max_new_tokens, prepend_bos)
    ]


@torch.no_grad()
def answer_logprob(
    model: HookedTransformer,
    prompts: Sequence[str],
    answers: Sequence[str],
    prepend_bos: bool | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """`log p(" " + answer | prompt)` per pair: the summed log-probabilities of the answer's tokens.

    Teacher-forced, batched with right padding. When the answer's first characters merge into the
    prompt's last token, the merged token counts as part of the answer.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
    tokenizer = model.tokenizer
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    head = [bos_id(tokenizer)] if bos else []
    rows, starts = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids = head + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = head + tokenizer(f"{prompt} {answer}", add_special_tokens=False)["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(full, prompt_ids, strict=False)) if a != b), len(prompt_ids))
        if start == 0 or start >= len(full):
            raise ValueError(f"Cannot locate the answer {answer!r} after the prompt {prompt[-40:]!r}.")
        rows.append(full)
        starts.append(start)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.cfg.device
    out = torch.zeros(len(rows), device=device)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        width = max(len(r) for r in chunk)
        tokens = torch.tensor([r + [pad] * (width - len(r)) for r in chunk], device=device)
        logprobs = model(tokens, return_type="logits").log_softmax(-1)
        for j, row in enumerate(chunk):
            positions = torch.arange(starts[s + j], len(row), device=device)
            out[s + j] = logprobs[j, positions - 1, tokens[j, positions]].sum()
    return out
