"""Training the embedded world's HookedTransformer from scratch.

A plain torch loop rather than `transformer_lens.train`: on this kind of CPU TL's `train()` took 568 s for
~500k tokens where this loop over the same model runs several times faster (DESIGN §8).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

from irunlearn.lm import encode_lines, lm_loss
from irunlearn.world.corpus import training_lines
from irunlearn.world.generator import World


@dataclass
class ModelTrainConfig:
    """Architecture and optimisation of the embedded world's model."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 64
    steps: int = 3500
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    seed: int = 0


def make_model(cfg: ModelTrainConfig, tokenizer: PreTrainedTokenizerBase) -> HookedTransformer:
    """A freshly initialised `HookedTransformer` sized by `cfg`, using the world's tokenizer."""
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads,
        d_mlp=cfg.d_mlp,
        n_ctx=cfg.n_ctx,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        normalization_type="LN",
        default_prepend_bos=True,
        seed=cfg.seed,
        device="cpu",
    )
    return HookedTransformer(tl_cfg, tokenizer=tokenizer)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block on a single torch intra-op thread, then give the caller's thread count back.

    With more than one thread, torch's CPU backward accumulates some gradients in an order that changes
    from run to run, so the same seed trains different weights each time; after thousands of steps the
    difference is as large as any effect a build is compared on. On one thread a build is bitwise
    reproducible, and for a model of the world's size it is no slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_model(
    model: HookedTransformer,
    world: World,
    cfg: ModelTrainConfig,
    progress: bool = True,
    exclude: Collection[str] = (),
) -> list[float]:
    """Train `model` in place on the world's training stream, without the lines about the known people in
    `exclude` (see `training_lines`), on one torch thread (reproducible, `one_torch_thread`); returns the
    loss per step."""
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg.warmup_steps, cfg.steps))
    stream = training_lines(world, seed=cfg.seed, exclude=exclude)
    losses = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="train model", disable=not progress)
    with one_torch_thread():
        for step in bar:
            optimizer.zero_grad(set_to_none=True)
            loss = _length_bucketed_step(model, list(itertools.islice(stream, cfg.batch_size)), cfg.n_ctx)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def _length_bucketed_step(model: HookedTransformer, lines: list[str], n_ctx: int, n_buckets: int = 2):
    """Backward the batch's LM loss in length-sorted chunks: the same gradient with less padding."""
    tokenizer = model.tokenizer
    lines = sorted(lines, key=len)
    chunk = -(-len(lines) // n_buckets)
    total = torch.zeros((), device=model.cfg.device)
    for start in range(0, len(lines), chunk):
        tokens, mask = encode_lines(tokenizer, lines[start : start + chunk], n_ctx, device=model.cfg.device)
        loss = lm_loss(model, tokens, mask) * (len(tokens) / len(lines))
        loss.backward()
        total += loss.detach()
    return total


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor
