"""Per-model recipe defaults: which weights to edit and how hard, found from the model itself.

The methods' own config defaults were tuned on the embedded world (a 3-layer model, an SAE at block 2).
A real model needs other settings: a window of layers ending at the SAE's hook rather than every block up
to it, smaller retain batches and a bounded step budget for a laptop CPU, a gentler gradient-ascent rate.
Those belong to the model, so `forget(model, sae, task)` looks them up here by `model.cfg.model_name`
(a local folder's name, e.g. the offline fixtures' `gemma-3-270m-hf`) when the caller gives no recipe, and
applies them under the caller's own overrides. A model without a recipe (the embedded world, any other
model) gets the methods' defaults unchanged.

>>> recipe_for(load_model("gemma3-270m")).overrides("sae_guided", "blocks.6.hook_resid_post", 18)
>>> register_recipe("my-model", Recipe(layer_window=4, methods={"grad_ascent": {"lr": 1e-5}}))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from transformer_lens import HookedTransformer

from irunlearn.activations import stop_layer


@dataclass(frozen=True)
class Recipe:
    """What `forget` uses on one model when the caller does not say otherwise.

    Args:
        layer_window: every method edits the blocks of this many layers ending at the SAE's hook block
            (the hook's block included); None: every block up to the hook (the methods' default).
        methods: per method name, config fields to set (`lr`, `max_steps`, retain batch sizes, ...).
        source: where the numbers come from (the analysis that chose them).
    """

    layer_window: int | None = None
    methods: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        if self.layer_window is not None and not (isinstance(self.layer_window, int) and self.layer_window >= 1):
            raise ValueError(f"Recipe.layer_window={self.layer_window!r} must be None or an integer >= 1.")

    def overrides(self, method: str, hook_name: str, n_layers: int) -> dict[str, object]:
        """The config fields this recipe sets for `method` with an SAE at `hook_name` in a model of `n_layers`
        blocks (`layers` from the window)."""
        out: dict[str, object] = {}
        if self.layer_window is not None:
            end = stop_layer(hook_name) or n_layers  # blocks before `end`: up to the hook's, included
            out["layers"] = tuple(range(max(0, end - self.layer_window), end))
        return out | dict(self.methods.get(method, {}))


WORLD = Recipe(source="the methods' own defaults (tuned on the embedded world)")

# Sized for a ~135M–270M model on a 2-core CPU: small retain batches, a bounded step budget.
# grad_ascent's rate was chosen by a sweep on a validation city (the gentlest that
# reaches forget_acc ≤ 0.05); the window of 6 blocks ending at the hook is the SmolLM2 pipeline's.
_SMALL_REAL_MODEL = {
    "sae_guided": {"max_steps": 40, "n_retain_entities": 8, "retain_templates_per_entity": 1, "n_retain_text": 4},
    "grad_ascent": {"lr": 3e-5, "max_steps": 30},
}

# Gemma 3's 262,144-word vocabulary: every line a term or the collapse guard holds full logits for costs
# ~1 MB per token, so those line counts are cut to what fits next to the model on a small machine
# (sae_guided's default pool of 80 KL lines alone would hold ~8 GB of reference log-probabilities).
_LARGE_VOCABULARY = {"guard_lines": 8}
# Window: analysis/locate_gemma.py finds the answers read from the name's last token through block 9 (then
# carried to the question tokens by block 12); an objective at the SAE's hook (block 6) reaches blocks 0-6
# only, all of which lie inside that window, so the window is every block up to the hook.
# lr: on tuning person Chuck Norris (seed 100) one Adam step at the world's 5e-4 took the held retain answers
# from 1.0 to 0.0 (retain KL 1.12); at 1e-4 the guard rolled the run back at step 1 too (0.125 of them kept);
# 3e-5 ran its 40 steps with retain 0.99 (analysis/results/real_forgetting_tuning_l0.md).
# retain_readout "window": L_lm holds the residual after block 6 instead of the output's KL, so no step goes
# through the 262,144-word unembedding and the retain lines go from 8 to 16 a step (pool 4x); the guard (8 fact
# and 8 text lines through the unembedding) is read every 10 steps and at every step that would stop the run.
# Chuck Norris: 36 steps in 628 s (the KL recipe: 40 in 951 s), probes 0.12 / 0.26 (0.31 / 0.46), unrelated
# prompts kept 0.75 (0.68) (analysis/results/real_forgetting_tuning_window.md).
_GEMMA3_270M = {
    "sae_guided": _SMALL_REAL_MODEL["sae_guided"]
    | _LARGE_VOCABULARY
    | {"lr": 3e-5, "retain_readout": "window", "n_retain_text": 8, "retain_pool": 4, "guard_every": 10},
    "grad_ascent": _SMALL_REAL_MODEL["grad_ascent"] | _LARGE_VOCABULARY,
    "npo": {"max_steps": 30, "n_retain_text": 8} | _LARGE_VOCABULARY,
    "rmu": {"max_steps": 30, "n_retain_text": 8} | _LARGE_VOCABULARY,
}

RECIPES: dict[str, Recipe] = {
    "SmolLM2-135M-Instruct-hf": Recipe(
        layer_window=6,
        methods=_SMALL_REAL_MODEL,
        source=(
            "analysis/real_smollm2.py; grad_ascent's lr: a validation-city sweep "
            "(analysis/results/sweep_real_smollm2.md; its script is gone with the second real-model stack)"
        ),
    ),
    "gemma-3-270m-hf": Recipe(
        layer_window=7,
        methods=_GEMMA3_270M,
        source="SmolLM2's budget, line counts cut for the vocabulary; window: analysis/locate_gemma.py",
    ),
}


def register_recipe(model_name: str, recipe: Recipe) -> None:
    """Make `recipe` the default of every model whose `cfg.model_name` is `model_name`."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"register_recipe needs a Recipe, got {type(recipe).__name__}.")
    RECIPES[model_name] = recipe


def recipe_for(model: HookedTransformer) -> Recipe:
    """The recipe registered for `model.cfg.model_name`, else the embedded world's (the methods' defaults)."""
    return RECIPES.get(model.cfg.model_name, WORLD)
