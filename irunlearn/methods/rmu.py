"""RMU: scramble the target's activations at the hook layer toward `c·u`, keep retain activations fixed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from irunlearn.activations import forward_to_hook
from irunlearn.methods.suppression import Suppression, SuppressionConfig


@dataclass
class RMUConfig(SuppressionConfig):
    lr: float = 1e-3
    steering_coef: float = 4.0  # c, in units of the mean activation norm on the forget tokens
    retain_weight: float = 1.0


class RMU(Suppression):
    name = "rmu"
    config_class = RMUConfig
    config: RMUConfig

    def setup(self, model: HookedTransformer) -> None:
        super().setup(model)
        generator = torch.Generator().manual_seed(self.config.seed)
        direction = torch.rand(model.cfg.d_model, generator=generator)
        with torch.no_grad():
            forget_acts = forward_to_hook(model, self.forget.tokens, self.hook_name)
            scale = forget_acts[self.forget.mask].norm(dim=-1).mean()
            self.control = self.config.steering_coef * scale * direction / direction.norm()
            self.retain_acts = forward_to_hook(model, self.retain_tokens, self.hook_name)

    def forget_loss(self, model: HookedTransformer, logits: torch.Tensor) -> torch.Tensor:
        acts = forward_to_hook(model, self.forget.tokens, self.hook_name)[self.forget.mask]
        return (acts - self.control).square().mean()

    def retain_loss(self, model: HookedTransformer) -> torch.Tensor:
        acts = forward_to_hook(model, self.retain_tokens, self.hook_name)
        return (acts - self.retain_acts)[self.retain_mask].square().mean()
