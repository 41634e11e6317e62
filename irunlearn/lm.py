"""Language-model text utilities: padded batches of lines, next-token NLL, perplexity."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from irunlearn.prompts import bos_id


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id used for right padding: the pad token, else EOS, else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def encode_lines(
    tokenizer: PreTrainedTokenizerBase,
    lines: Sequence[str],
    n_ctx: int,
    prepend_bos: bool = True,
    append_eos: bool = True,
    *,
    device: torch.device | str,
) -> tuple[Int[torch.Tensor, "batch pos"], Bool[torch.Tensor, "batch pos"]]:
    """`BOS line EOS` per line (each part optional), cut at `n_ctx`, right-padded; and the real-token mask,
    both on `device` (the model's: `model.cfg.device`)."""
    ids = tokenizer(list(lines), add_special_tokens=False)["input_ids"]
    head = [bos_id(tokenizer)] if prepend_bos else []
    tail = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    rows = [(head + row + tail)[:n_ctx] for row in ids]
    width = max(len(row) for row in rows)
    tokens = torch.tensor([row + [pad_id(tokenizer)] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[True] * len(row) + [False] * (width - len(row)) for row in rows], device=device)
    return tokens, mask


def token_nll(
    logits: Float[torch.Tensor, "batch pos vocab"],
    tokens: Int[torch.Tensor, "batch pos"],
    mask: Bool[torch.Tensor, "batch pos"],
) -> Float[torch.Tensor, "batch pos_minus_1"]:
    """Next-token NLL at every position whose target is a real token (0 where it is padding)."""
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return nll * mask[:, 1:]


def lm_loss(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"], mask: Bool[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, ""]:
    """Mean next-token cross-entropy over real target tokens."""
    return token_nll(model(tokens, return_type="logits"), tokens, mask).sum() / mask[:, 1:].sum()


def unembed_only(model: HookedTransformer, low: int, high: int | None) -> list[tuple[str, Callable]]:
    """A forward hook cutting the final normalised residual to positions `low:high` before the unembedding,
    if the model has that hook (TransformerLens's `ln_final.hook_normalized`); else no hook (the caller
    slices the full logits). With a large vocabulary (Gemma: 262,144 words) the logits of every position cost
    more memory and time than the rest of the model."""
    name = "ln_final.hook_normalized"
    return [(name, lambda resid, hook: resid[:, low:high])] if name in model.hook_dict else []


def logits_at(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"], low: int, high: int
) -> Float[torch.Tensor, "batch window vocab"]:
    """The logits of positions `low:high` only: unembedded there alone where the model has the final-norm hook
    (`unembed_only`), else sliced from the full logits."""
    with model.hooks(fwd_hooks=unembed_only(model, low, high)):
        logits = model(tokens, return_type="logits")
    return logits if logits.shape[1] == high - low else logits[:, low:high]


MAX_LOGITS = 2**27  # most logits (batch × positions × vocabulary) one no-grad pass holds: 512 MB in fp32


@torch.no_grad()
def perplexity(
    model: HookedTransformer, texts: Sequence[str], prepend_bos: bool = True, batch_size: int = 128
) -> float:
    """exp(mean next-token NLL) over `texts` (each as `BOS text EOS`), padding ignored.

    At most `batch_size` texts a pass, fewer where the logits would exceed `MAX_LOGITS` (a large vocabulary:
    Gemma's 262,144 words make 128 texts of 80 tokens 11 GB of logits); the result does not depend on it.
    """
    if not texts:
        raise ValueError("perplexity needs at least one text.")
    longest = max(len(ids) for ids in model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]) + 2
    width = min(longest, model.cfg.n_ctx)
    batch_size = max(1, min(batch_size, MAX_LOGITS // (width * model.cfg.d_vocab)))
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        tokens, mask = encode_lines(
            model.tokenizer, texts[start : start + batch_size], model.cfg.n_ctx, prepend_bos, device=model.cfg.device
        )
        total += float(token_nll(model(tokens, return_type="logits"), tokens, mask).sum())
        count += int(mask[:, 1:].sum())
    return math.exp(total / count)
