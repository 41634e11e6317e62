"""SAE steering: no weight edit. At inference, in any text that names a target, from the name's first token
to the end of the text, clamp the known latents to `clamp_value` (Farrell et al. clamp them negative) and
add the top unknown latent's decoder direction (Ferrando et al.).

Why every position from the name onward: in the embedded world the question tokens after the name have
read the person's facts by layer 1, so at the SAE's hook (layer 2) steering the name tokens alone changes the
probe's reading but not one answer (`positions="name"`, the first version, kept for that contrast).

Shown for contrast: the model itself still knows the target (remove the hooks and it answers again), so
the result is marked `persistent=False` and cannot be saved as an edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformer_lens import HookedTransformer

from irunlearn.activations import sae_hook_name
from irunlearn.methods.base import ForgetConfig, Method


@dataclass
class SAESteerConfig(ForgetConfig):
    steer_coef: float = 4.0  # multiples of the norm of the unknown centroid's reconstruction
    clamp_known: bool = True
    clamp_value: float = 0.0  # what the known latents are set to (negative: pushed past "absent")
    positions: Literal["name", "from_name"] = "from_name"


def _name_variants(model: HookedTransformer, name: str) -> list[list[int]]:
    """Token ids of the name as it appears mid-sentence and at the start of a text."""
    encode = model.tokenizer
    return [encode(text, add_special_tokens=False)["input_ids"] for text in {f" {name}", name}]


class SAESteer(Method):
    name = "sae_steer"
    config_class = SAESteerConfig
    inference_only = True
    config: SAESteerConfig

    def attach(self, model: HookedTransformer) -> None:
        """Add the permanent hooks to `model` (a copy made by the caller)."""
        cfg, recognizer, sae = self.config, self.task.recognizer, self.sae
        hook_name = sae_hook_name(sae)
        known = torch.tensor(recognizer.top_latents("known")["latent"].tolist(), device=sae.W_dec.device)
        unknown = int(recognizer.top_latents("unknown")["latent"].iloc[0])
        with torch.no_grad():
            direction = sae.W_dec[unknown] / sae.W_dec[unknown].norm()
            scale = sae.decode(recognizer.mu_unknown[None])[0].norm()
        push = cfg.steer_coef * scale * direction
        patterns = [ids for target in self.task.targets for ids in _name_variants(model, target.name)]
        seen: dict[str, torch.Tensor] = {}

        def remember_tokens(module, args):
            seen["tokens"] = args[0]

        def steer(resid: torch.Tensor, hook) -> torch.Tensor:
            mask = _pattern_positions(seen["tokens"], patterns)
            if cfg.positions == "from_name":
                mask = mask.int().cummax(dim=1).values.bool()
            if not mask.any():
                return resid
            picked = resid[mask]
            if cfg.clamp_known:
                latents = sae.encode(picked)
                picked = picked + (cfg.clamp_value - latents[:, known]) @ sae.W_dec[known]
            resid = resid.clone()
            resid[mask] = picked + push
            return resid

        model.embed.register_forward_pre_hook(remember_tokens)
        model.add_hook(hook_name, steer, is_permanent=True)


def _pattern_positions(tokens: torch.Tensor, patterns: list[list[int]]) -> torch.Tensor:
    """Boolean [batch, pos]: positions covered by any occurrence of any pattern."""
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for pattern in patterns:
        n = len(pattern)
        if n == 0 or n > tokens.shape[1]:
            continue
        windows = tokens.unfold(1, n, 1)  # [batch, pos - n + 1, n]
        starts = (windows == torch.tensor(pattern, device=tokens.device)).all(-1)
        for offset in range(n):
            mask[:, offset : offset + starts.shape[1]] |= starts
    return mask
