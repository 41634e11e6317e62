"""Training the embedded world's SAE with SAELens's own runner, offline."""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection
from dataclasses import dataclass

import torch
from datasets import Dataset
from sae_lens import (
    SAE,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    TopKTrainingSAEConfig,
)
from transformer_lens import HookedTransformer

from irunlearn.lm import encode_lines
from irunlearn.world.corpus import training_lines
from irunlearn.world.generator import World
from irunlearn.world.train_model import one_torch_thread


@dataclass
class SAETrainConfig:
    """A TopK SAE on one residual hook of the world model."""

    hook_name: str = "blocks.2.hook_resid_post"
    d_sae: int = 1024
    k: int = 16
    training_tokens: int = 1_000_000
    context_size: int = 32
    batch_size_tokens: int = 2048
    lr: float = 1e-3
    # steps without firing before a latent counts as dead and TopK's aux-k loss revives it; SAELens's
    # default (1000) is longer than this whole run (~490 steps), which left a quarter of the latents dead
    dead_feature_window: int = 100
    seed: int = 0


def sae_dataset(
    model: HookedTransformer, world: World, n_rows: int, context_size: int, seed: int, exclude: Collection[str] = ()
) -> Dataset:
    """Rows of `BOS line EOS pad…`, one training line each, as a `datasets.Dataset` with `tokens`.

    One line per row keeps every activation in the distribution the model was trained on (a line starts
    at position 0 after BOS); BOS and padding are excluded from SAE training by the runner. Lines about the
    known people in `exclude` are left out, as in the model's own training (`training_lines`).
    """
    lines = list(itertools.islice(training_lines(world, seed=seed + 1, exclude=exclude), n_rows))
    tokens, _ = encode_lines(model.tokenizer, lines, context_size, device="cpu")  # rows for a datasets.Dataset
    pad = torch.full((len(tokens), context_size - tokens.shape[1]), model.tokenizer.pad_token_id)
    return Dataset.from_dict({"tokens": torch.cat([tokens, pad], dim=1).tolist()})


def train_sae(
    model: HookedTransformer,
    world: World,
    cfg: SAETrainConfig,
    progress: bool = True,
    exclude: Collection[str] = (),
) -> SAE:
    """Train a TopK SAE on `cfg.hook_name` with `LanguageModelSAETrainingRunner` (wandb off, no hub), on
    training lines without those about the known people in `exclude`, on one torch thread as the model
    (`one_torch_thread`: reproducible)."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.manual_seed(cfg.seed)  # the runner's `seed` does not cover every draw (without this the SAE
    # depended on what the process had drawn before)
    tokenizer = model.tokenizer
    # Roughly half of each padded row is real tokens; draw enough rows to cover the token budget twice.
    n_rows = 4 * cfg.training_tokens // cfg.context_size
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=model.cfg.d_model, d_sae=cfg.d_sae, k=cfg.k),
        model_name="irunlearn-world",
        hook_name=cfg.hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=cfg.context_size,
        prepend_bos=False,  # rows already start with BOS
        disable_concat_sequences=True,
        exclude_special_tokens=[tokenizer.bos_token_id, tokenizer.pad_token_id],
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.batch_size_tokens,
        n_batches_in_buffer=64,
        store_batch_size_prompts=64,
        lr=cfg.lr,
        lr_warm_up_steps=50,
        dead_feature_window=cfg.dead_feature_window,
        device="cpu",
        seed=cfg.seed,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=None,
        verbose=progress,
    )
    runner = LanguageModelSAETrainingRunner(
        runner_cfg,
        override_model=model,
        override_dataset=sae_dataset(model, world, n_rows, cfg.context_size, cfg.seed, exclude),
    )
    with one_torch_thread():
        sae = runner.run()
    sae.cfg.metadata.hook_name = cfg.hook_name
    return sae
