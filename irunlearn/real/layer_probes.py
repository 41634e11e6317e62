"""Where does a model tell known from unknown entities? A residual probe at the name's last token, every layer.

One forward per batch reads the residual at every requested hook (up to the deepest, with
`stop_at_layer`), so the whole layer sweep costs one pass to the deepest layer instead of one per layer.
The split and the probe are `fit_recognizer`'s: entities 60/20/20 (seeded) into fit / calibration / test,
probes (`LinearProbe`) fit on fit-entities × training templates, calibrated on calibration-entities ×
training templates and scored by AUROC on test-entities × held-out templates, so the figures here and a
`Recognizer`'s `probe_auroc_resid` at the same hook are the same computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from irunlearn.activations import EntityBatch, entity_prompts, resid_hooks, stop_layer
from irunlearn.entities import Entity, EntitySet
from irunlearn.probes import LinearProbe, auroc
from irunlearn.prompts import Template


@torch.no_grad()
def extract_at_hooks(
    model: HookedTransformer,
    hooks: Sequence[str],
    entities: Sequence[Entity],
    templates: Sequence[Template],
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Float[torch.Tensor, "n d_model"]]:
    """The residual at the last token of each entity's name at every hook, rows in `entity_prompts` order.

    BOS as the model's `default_prepend_bos`; each prompt runs only up to its entity token.
    """
    missing = [hook for hook in hooks if hook not in model.hook_dict]
    if missing:
        raise ValueError(
            f"Hooks {missing} do not exist in {model.cfg.model_name}; see resid_hooks(model, embedding=True)."
        )
    if not entities or not templates:
        raise ValueError(f"Need entities and templates; got {len(entities)} entities and {len(templates)} templates.")
    layers = [stop_layer(hook) for hook in hooks]
    stop = None if None in layers else max(layers)
    index = entity_prompts(entities, templates)
    # Batches of similar lengths waste little on padding (few-shot prompts are five times the open ones).
    order = sorted(range(len(index)), key=lambda i: len(index.at[i, "prompt"]))
    out: dict[str, list[torch.Tensor]] = {hook: [] for hook in hooks}
    for start in tqdm(range(0, len(order), batch_size), desc="activations", disable=not progress, leave=False):
        rows = index.iloc[order[start : start + batch_size]]
        batch = EntityBatch.build(
            model, rows["prompt"].tolist(), rows["entity"].tolist(), bool(model.cfg.default_prepend_bos)
        )
        _, cache = model.run_with_cache(
            batch.tokens.to(model.cfg.device), names_filter=list(hooks), stop_at_layer=stop, return_type=None
        )
        at = torch.arange(len(batch.positions))
        for hook in hooks:
            out[hook].append(cache[hook][at, batch.positions.to(cache[hook].device)].float().cpu())
    restore = torch.argsort(torch.tensor(order))
    return {hook: torch.cat(chunks)[restore] for hook, chunks in out.items()}


def layer_probe_aurocs(
    model: HookedTransformer,
    entities: EntitySet,
    train_templates: Sequence[Template],
    heldout_templates: Sequence[Template],
    *,
    hooks: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Held-out AUROC of a residual probe at each hook (default: the embedding and every block), known vs unknown.

    Returns one row per hook: `layer` (-1 for the embedding), `hook`, `auroc`, `accuracy` (at the
    calibrated 0.5 threshold), `n_fit_rows`, `n_test_rows`.
    """
    if not entities.known or not entities.unknown:
        raise ValueError(
            f"Need known and unknown entities; got {len(entities.known)} known and {len(entities.unknown)} unknown."
        )
    hooks = list(hooks or resid_hooks(model, embedding=True))
    fit_set, rest = entities.split(0.6, seed)
    calib_set, test_set = rest.split(0.5, seed + 2)

    def rows(subset: EntitySet, templates: Sequence[Template]):
        acts = extract_at_hooks(model, hooks, subset.known + subset.unknown, templates, progress=progress)
        labels = torch.tensor([1] * len(subset.known) + [0] * len(subset.unknown))
        return acts, labels.repeat_interleave(len(templates))

    fit, y_fit = rows(fit_set, train_templates)
    calib, y_calib = rows(calib_set, train_templates)
    test, y_test = rows(test_set, heldout_templates)
    records = []
    for hook in hooks:
        probe = LinearProbe.fit(fit[hook], y_fit, calib[hook], y_calib)
        p = probe.predict_proba(test[hook])
        block = stop_layer(hook)  # a block's resid_pre is the previous block's output
        records.append(
            {
                "layer": model.cfg.n_layers if block is None else block - 1 - hook.endswith("hook_resid_pre"),
                "hook": hook,
                "auroc": auroc(p, y_test),
                "accuracy": float(((p > 0.5).long() == y_test).float().mean()),
                "n_fit_rows": len(y_fit),
                "n_test_rows": len(y_test),
            }
        )
    return pd.DataFrame(records)
