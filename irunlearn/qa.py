"""Asking a model attribute questions: batched greedy answer checks and free-form greedy answers.

Two ways to read an answer: teacher-forced checks of a given answer (`greedy_matches`, `answer_logprob`,
one batched forward, the exact judge's and the probability metrics' input) and free-form greedy
generation (`greedy_token_ids`, batched with a key-value cache; `greedy_generate` decodes it to the first
line: what the lenient judge and real-model labelling read; generation health reads the token ids).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from irunlearn.lm import MAX_LOGITS, logits_at, unembed_only
from irunlearn.prompts import bos_id

ANSWER_WINDOW = 16  # positions a batch's answers are assumed to span, to size batches under `MAX_LOGITS`


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
    out = torch.zeros(len(prompts), dtype=torch.bool, device=model.cfg.device)
    for i, _, hits in _answer_passes(model, prompts, answers, prepend_bos, answer_eos, batch_size, progress):
        out[i] = bool(hits.all())
    return out


@torch.no_grad()
def answer_token_scores(
    model: HookedTransformer,
    prompts: Sequence[str],
    answers: Sequence[str],
    prepend_bos: bool = True,
    batch_size: int = 256,
    progress: bool = False,
) -> list[tuple[Float[torch.Tensor, " a"], Bool[torch.Tensor, " a"]]]:
    """Per (prompt, answer): the log-probability of each token of `" " + answer` after the prompt (teacher
    forced) and whether it is the greedy choice there. The answer's own tokens only (no end-of-sequence),
    tokenised exactly as `greedy_matches` does; the input of probability-based unlearning metrics."""
    out: list = [None] * len(prompts)
    for i, logprobs, hits in _answer_passes(model, prompts, answers, prepend_bos, False, batch_size, progress):
        out[i] = (logprobs, hits)
    return out


def _answer_passes(
    model: HookedTransformer,
    prompts: Sequence[str],
    answers: Sequence[str],
    prepend_bos: bool,
    with_stop: bool,
    batch_size: int,
    progress: bool,
) -> Iterator[tuple[int, Float[torch.Tensor, " a"], Bool[torch.Tensor, " a"]]]:
    """Teacher-forced passes over `prompt answer [EOS]`, length-sorted in batches: for each item its index,
    the log-probabilities of its answer tokens and whether each is the argmax."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers.")
    tokenizer = model.tokenizer
    stop = [tokenizer.eos_token_id] if with_stop and tokenizer.eos_token_id is not None else []
    rows, spans = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        prompt_ids = _encode(model, prompt, prepend_bos)
        full = _encode(model, f"{prompt} {answer}", prepend_bos) + stop
        if full[: len(prompt_ids)] != prompt_ids:  # the answer merged into the prompt's last token
            prompt_ids = prompt_ids[:-1]
        rows.append(full)
        spans.append((len(prompt_ids), len(full)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    batch_size = max(1, min(batch_size, MAX_LOGITS // (ANSWER_WINDOW * model.cfg.d_vocab)))
    for start in tqdm(range(0, len(rows), batch_size), desc="QA", disable=not progress, leave=False):
        idx = order[start : start + batch_size]
        width = max(len(rows[i]) for i in idx)
        tokens = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in idx], device=model.cfg.device)
        # Unembed only the positions that predict answer tokens: with a large vocabulary (Gemma: 262,144
        # words) the logits of every prompt position cost more memory and time than the rest of the model.
        low, high = min(spans[i][0] for i in idx) - 1, max(spans[i][1] for i in idx) - 1
        logprobs = logits_at(model, tokens, low, high).log_softmax(-1)
        for row, i in enumerate(idx):
            a, b = spans[i]
            step = logprobs[row, a - 1 - low : b - 1 - low]
            gold = tokens[row, a:b]
            yield i, step.gather(-1, gold[:, None])[:, 0], step.argmax(-1) == gold


@torch.no_grad()
def answer_logprob(
    model: HookedTransformer,
    prompts: Sequence[str],
    answers: Sequence[str],
    prepend_bos: bool | None = None,
    batch_size: int = 32,
) -> Float[torch.Tensor, " n"]:
    """`log p(" " + answer | prompt)` per pair: the summed log-probabilities of the answer's tokens
    (`answer_token_scores`; a token the answer merges into the prompt's last one counts as the answer's).
    `prepend_bos` defaults to the model's."""
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    scores = answer_token_scores(model, prompts, answers, bos, batch_size)
    if not scores:
        return torch.zeros(0, device=model.cfg.device)
    return torch.stack([logprobs.sum() for logprobs, _ in scores])


@torch.no_grad()
def greedy_token_ids(
    model: HookedTransformer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 8,
    prepend_bos: bool | None = None,
    stop_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[list[int]]:
    """Greedy continuation token ids per prompt: the one generator of the package.

    Each continuation ends at its first stop token (`stop_ids`, default `stop_token_ids`: end-of-sequence or
    any token containing a newline), which is kept unless it is the end-of-sequence token. Prompts are encoded
    as the teacher-forced checks encode them (no special tokens, plus BOS when `prepend_bos`, which defaults
    to the model's `cfg.default_prepend_bos`), sorted by length, left-padded into batches, so every row's last
    real token is at the end; TransformerLens's `generate` masks the padding, reuses its key-value cache and
    stops a row at its first stop token. The continuations equal one-prompt-at-a-time greedy decoding. A
    model carrying hooks of its own (an inference-time edit such as `sae_steer`, whose hooks read the token
    sequence at the embedding, which `generate` embeds once) is decoded one prompt at a time by full forward
    passes on the whole sequence, as its hooks expect. Only the last position is unembedded (a hook on
    `ln_final` keeps that position alone): `generate` reads nothing else, and unembedding every prompt
    position costs more than the rest of the model where the vocabulary is large (Gemma: 262,144 words).
    """
    tokenizer = model.tokenizer
    if prepend_bos is None:
        prepend_bos = model.cfg.default_prepend_bos
    stops = list(stop_token_ids(tokenizer) if stop_ids is None else stop_ids)
    if _has_own_hooks(model):
        return [_argmax_loop(model, _encode(model, p, prepend_bos), max_new_tokens, stops) for p in prompts]
    encoded = [_encode(model, prompt, prepend_bos) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    continuations: list[list[int]] = [[] for _ in prompts]
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=not progress, leave=False):
        rows = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in rows)
        padded = [[tokenizer.pad_token_id] * (width - len(encoded[i])) + encoded[i] for i in rows]
        # `generate` finds the padding to mask from the tokenizer's padding side
        with _padding_side(tokenizer, "left"), model.hooks(fwd_hooks=unembed_only(model, -1, None)):
            out = model.generate(
                torch.tensor(padded, device=model.cfg.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                stop_at_eos=bool(stops),
                eos_token_id=stops or None,
                prepend_bos=prepend_bos,
                return_type="tokens",
                verbose=False,
            )
        for row, i in enumerate(rows):
            continuations[i] = _cut_at_stop(out[row, width:].tolist(), stops, tokenizer.eos_token_id)
    return continuations


def greedy_generate(
    model: HookedTransformer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 8,
    prepend_bos: bool | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """Free-form greedy answers: each prompt's `greedy_token_ids` continuation decoded, cut at its first
    newline, stripped (what the lenient judge and the labelling read)."""
    continuations = greedy_token_ids(
        model,
        prompts,
        max_new_tokens=max_new_tokens,
        prepend_bos=prepend_bos,
        batch_size=batch_size,
        progress=progress,
    )
    decode = model.tokenizer.decode
    return [decode(ids, skip_special_tokens=True).split("\n")[0].strip() for ids in continuations]


def _has_own_hooks(model: HookedTransformer) -> bool:
    """Whether `model` carries hooks (on its hook points or a module) that a key-value cache would bypass."""
    return any(module._forward_hooks or module._forward_pre_hooks for module in model.modules())


def _argmax_loop(model: HookedTransformer, prompt: list[int], max_new_tokens: int, stops: list[int]) -> list[int]:
    """Greedy decoding by a full forward pass per new token (for models whose own hooks read every token)."""
    tokens = torch.tensor([prompt], device=model.cfg.device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        new.append(int(model(tokens, return_type="logits")[0, -1].argmax()))
        if new[-1] in stops:
            break
        tokens = torch.cat([tokens, torch.tensor([[new[-1]]], device=tokens.device)], dim=1)
    return _cut_at_stop(new, stops, model.tokenizer.eos_token_id)


def _cut_at_stop(new_ids: list[int], stops: Sequence[int], eos: int | None) -> list[int]:
    """`new_ids` up to its first stop token, kept unless it is `eos` (padding after a stop is dropped)."""
    for position, token in enumerate(new_ids):
        if token in stops:
            return new_ids[: position + (token != eos)]
    return new_ids


def stop_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """End-of-sequence plus every vocabulary token whose text contains a newline."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return [*_newline_ids(tokenizer), *eos]


@lru_cache(maxsize=8)
def _newline_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return tuple(i for i, text in enumerate(texts) if "\n" in text)


@contextmanager
def _padding_side(tokenizer: PreTrainedTokenizerBase, side: str):
    previous = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous
