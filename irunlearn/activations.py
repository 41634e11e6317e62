"""Entity-token activations at an SAE's hook, computed only as far into the model as that hook."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.entities import Entity
from irunlearn.prompts import Template, entity_token_positions


def sae_hook_name(sae: SAE) -> str:
    """The hook an SAE reads, from its own metadata."""
    name = sae.cfg.metadata.hook_name
    if not name:
        raise ValueError("This SAE carries no hook_name in cfg.metadata; set sae.cfg.metadata.hook_name.")
    return name


def stop_layer(hook_name: str) -> int | None:
    """The `stop_at_layer` that still runs the block a hook lives in (None: the whole model)."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) + 1 if match else None


def check_pairing(model: HookedTransformer, sae: SAE) -> str:
    """Check that `sae` can read `model`: its hook exists there and has the SAE's input width.

    Returns the hook name. Raises a ValueError naming both sides when they do not fit.
    """
    hook_name = sae_hook_name(sae)
    if hook_name not in model.hook_dict:
        near = [n for n in model.hook_dict if n.split(".")[-1] == hook_name.split(".")[-1]][:4]
        raise ValueError(
            f"SAE hook {hook_name!r} does not exist in the model ({model.cfg.n_layers} layers). "
            f"Hooks of that kind in this model: {near}. Load the SAE trained for this model and layer."
        )
    width = resid_width(model, hook_name)
    if sae.cfg.d_in != width:
        raise ValueError(
            f"SAE d_in={sae.cfg.d_in} but model hook {hook_name!r} has width {width} "
            f"(model d_model={model.cfg.d_model}). This SAE was trained for a different model."
        )
    return hook_name


def resid_width(model: HookedTransformer, hook_name: str) -> int:
    """Width of the activation at `hook_name`, read from one forward on a single token."""
    acts = forward_to_hook(model, torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device), hook_name)
    return acts.shape[-1]


def resid_hooks(model: HookedTransformer, *, up_to: int | None = None, embedding: bool = False) -> list[str]:
    """The residual stream's hook names in order: `blocks.L.hook_resid_post` for every block L ≤ `up_to`
    (default: every block), preceded by the embedding's output (`blocks.0.hook_resid_pre`) if `embedding`."""
    last = model.cfg.n_layers - 1 if up_to is None else up_to
    return ["blocks.0.hook_resid_pre"] * embedding + [f"blocks.{layer}.hook_resid_post" for layer in range(last + 1)]


def patched_logits(
    model: HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    hook_name: str,
    rows: Int[torch.Tensor, " n"],
    cols: Int[torch.Tensor, " n"],
    values: Float[torch.Tensor, "n d"],
) -> Float[torch.Tensor, "batch pos vocab"]:
    """`model`'s logits with the activation at `hook_name` replaced by `values` at (`rows`, `cols`): the one
    activation patch of the depth checks (key restoration, locating, UDS)."""

    def patch(activation: torch.Tensor, hook) -> torch.Tensor:
        activation = activation.clone()
        activation[rows, cols] = values.to(activation.dtype)
        return activation

    return model.run_with_hooks(tokens, fwd_hooks=[(hook_name, patch)], return_type="logits")


def forward_to_hook(
    model: HookedTransformer, tokens: Int[torch.Tensor, "batch pos"], hook_name: str
) -> Float[torch.Tensor, "batch pos d"]:
    """The activation at `hook_name`, running the model only up to the block that holds it.

    Gradients flow (no caching, no detach), so the same call serves extraction and weight editing.
    """
    store: dict[str, torch.Tensor] = {}

    def keep(activation: torch.Tensor, hook) -> None:
        store["act"] = activation

    model.run_with_hooks(tokens, fwd_hooks=[(hook_name, keep)], stop_at_layer=stop_layer(hook_name), return_type=None)
    return store["act"]


@dataclass
class EntityBatch:
    """Right-padded prompts (cut after the entity's name) and where each entity token sits."""

    tokens: Int[torch.Tensor, "batch pos"]
    positions: Int[torch.Tensor, " batch"]

    @classmethod
    def build(
        cls, model: HookedTransformer, prompts: Sequence[str], names: Sequence[str], prepend_bos: bool
    ) -> EntityBatch:
        located = entity_token_positions(model.tokenizer, prompts, names, prepend_bos)
        width = max(pos + 1 for _, pos in located)
        pad = model.tokenizer.pad_token_id or 0
        # Only tokens up to the entity token matter to a causal model: cut there, then right-pad.
        rows = [ids[: pos + 1] + [pad] * (width - pos - 1) for ids, pos in located]
        device = model.cfg.device
        return cls(torch.tensor(rows, device=device), torch.tensor([pos for _, pos in located], device=device))

    def rows(self, index: Int[torch.Tensor, " n"]) -> EntityBatch:
        """The rows at `index`, cut to the width they need."""
        positions = self.positions[index]
        return EntityBatch(self.tokens[index, : int(positions.max()) + 1], positions)

    def read(self, model: HookedTransformer, hook_name: str) -> Float[torch.Tensor, "batch d"]:
        acts = forward_to_hook(model, self.tokens, hook_name)
        return acts[torch.arange(len(self.positions), device=acts.device), self.positions]


@dataclass
class EntityActivations:
    """Residual activations at the entity token, one row per (entity, template), plus their index.

    `index` has columns `entity`, `template`, `split` (the template's), `label` (1 known, 0 unknown,
    -1 unlabelled), `prompt` and `position` (the entity token's index, BOS included).
    """

    resid: Float[torch.Tensor, "n d_model"]
    index: pd.DataFrame
    hook_name: str

    def select(self, mask: Sequence[bool] | pd.Series) -> EntityActivations:
        keep = [bool(m) for m in mask]
        rows = torch.tensor(keep, dtype=torch.bool, device=self.resid.device)
        return EntityActivations(self.resid[rows], self.index[keep].reset_index(drop=True), self.hook_name)

    @property
    def labels(self) -> Int[torch.Tensor, " n"]:
        return torch.tensor(self.index["label"].to_numpy(), device=self.resid.device)


def entity_prompts(
    entities: Sequence[Entity], templates: Sequence[Template], labels: Sequence[int] | None = None
) -> pd.DataFrame:
    """The (entity × template) grid as a DataFrame: entity, template, split, label, prompt (the prefix)."""
    labels = list(labels) if labels is not None else [-1] * len(entities)
    return pd.DataFrame(
        [
            {
                "entity": e.name,
                "template": t.text,
                "split": t.split,
                "label": label,
                "prompt": t.prefix(e.name),
            }
            for e, label in zip(entities, labels, strict=True)
            for t in templates
        ]
    )


@torch.no_grad()
def extract_activations(
    model: HookedTransformer,
    hook_name: str,
    entities: Sequence[Entity],
    templates: Sequence[Template],
    labels: Sequence[int] | None = None,
    prepend_bos: bool | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> EntityActivations:
    """Residual at the last token of each entity's name, for every (entity × template) pair.

    Runs the forward only to the hook's block (`stop_at_layer`) and on each prompt only up to the
    entity token. `prepend_bos` defaults to the model's `default_prepend_bos`.
    """
    if not entities:
        raise ValueError("No entities given: extract_activations needs at least one entity.")
    if not templates:
        raise ValueError("No templates given: extract_activations needs at least one template.")
    if hook_name not in model.hook_dict:
        raise ValueError(f"Hook {hook_name!r} does not exist in this model.")
    bos = model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    index = entity_prompts(entities, templates, labels)
    chunks, positions = [], []
    for start in tqdm(range(0, len(index), batch_size), desc="activations", disable=not progress, leave=False):
        rows = index.iloc[start : start + batch_size]
        batch = EntityBatch.build(model, rows["prompt"].tolist(), rows["entity"].tolist(), bos)
        chunks.append(batch.read(model, hook_name))
        positions.append(batch.positions)
    index["position"] = torch.cat(positions).cpu().numpy()
    return EntityActivations(torch.cat(chunks), index, hook_name)


@torch.no_grad()
def encode_latents(
    sae: SAE, resid: Float[torch.Tensor, "n d_in"], batch_size: int = 4096
) -> Float[torch.Tensor, "n d_sae"]:
    """SAE latents (post-activation) of residual vectors."""
    return torch.cat([sae.encode(resid[i : i + batch_size]) for i in range(0, len(resid), batch_size)])


def extraction_throughput(
    model: HookedTransformer,
    hook_name: str,
    entities: Sequence[Entity],
    templates: Sequence[Template],
    prepend_bos: bool | None = None,
) -> float:
    """Prompt tokens per second of one timed `extract_activations` pass over every (entity × template).

    What `irunlearn recognize` reports as `extract_tokens_per_s`: the cost of reading a model at the
    entity token, on this machine, for the entities and templates at hand.
    """
    start = time.perf_counter()
    acts = extract_activations(model, hook_name, entities, templates, prepend_bos=prepend_bos, progress=False)
    n_tokens = int((acts.index["position"] + 1).sum())
    return n_tokens / (time.perf_counter() - start)
