"""Headline figures of an embedded world: does the model know its people, and is the SAE faithful?"""

from __future__ import annotations

import itertools

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn.activations import forward_to_hook
from irunlearn.lm import encode_lines, perplexity
from irunlearn.qa import greedy_matches
from irunlearn.world.artifacts import EmbeddedWorld
from irunlearn.world.corpus import training_lines
from irunlearn.world.generator import World


def qa_accuracy(model: HookedTransformer, world: World, entities, split: str, progress: bool = False) -> float:
    """Fraction of (entity × question template of `split`) answered exactly, greedily."""
    questions = world.questions(entities, split)
    hits = greedy_matches(model, questions["prompt"].tolist(), questions["answer"].tolist(), progress=progress)
    return float(hits.float().mean())


@torch.no_grad()
def sae_quality(model: HookedTransformer, sae: SAE, world: World, n_lines: int = 2000, seed: int = 12345) -> dict:
    """FVU, mean L0 and dead-latent fraction of `sae` on real tokens of fresh training-distribution lines."""
    hook_name = sae.cfg.metadata.hook_name
    lines = list(itertools.islice(training_lines(world, seed=seed), n_lines))
    tokens, mask = encode_lines(model.tokenizer, lines, model.cfg.n_ctx, device=model.cfg.device)
    mask[:, 0] = False  # BOS is excluded from SAE training too
    acts = forward_to_hook(model, tokens, hook_name)[mask]
    latents = sae.encode(acts)
    recon = sae.decode(latents)
    fvu = (acts - recon).square().sum() / (acts - acts.mean(0)).square().sum()
    return {
        "sae_fvu": float(fvu),
        "sae_l0": float((latents > 0).sum(-1).float().mean()),
        "sae_dead_frac": float(((latents > 0).sum(0) == 0).float().mean()),
        "sae_eval_tokens": int(mask.sum()),
    }


def world_stats(ew: EmbeddedWorld, progress: bool = False) -> dict:
    """The figures `irunlearn world stats` prints (see the README for their meaning)."""
    world, model = ew.world, ew.model
    unknown = world.questions(world.unknown_eval, "all")
    idk = greedy_matches(model, unknown["prompt"].tolist(), unknown["answer"].tolist(), progress=progress)
    return {
        "known_qa_acc": qa_accuracy(model, world, world.known, "train", progress),
        "known_qa_acc_heldout_templates": qa_accuracy(model, world, world.known, "heldout", progress),
        "unknown_idk_rate": float(idk.float().mean()),
        "generic_ppl": perplexity(model, world.generic_heldout),
        **sae_quality(model, ew.sae, world),
        "hook_name": ew.hook_name,
        "n_known": len(world.known),
        "n_unknown_eval": len(world.unknown_eval),
    }
