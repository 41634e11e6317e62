"""RMU: scramble the target's activations at the hook layer toward `c·u`, keep retain activations fixed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from irunlearn.activations import forward_to_hook
from irunlearn.methods.suppression import Suppression, SuppressionConfig


@dataclass
class RMUConfig(SuppressionConfig):
    lr: float = 3e-4  # analysis/sweep_baselines.py
    steering_coef: float = 1.0  # c, in units of the mean activation norm on the forget tokens
    retain_weight: float = 10.0


class RMU(Suppression):
    name = "rmu"
    config_class = RMUConfig
    config: RMUConfig

    def setup(self, model: HookedTransformer) -> None:
        super().setup(model)
        generator = torch.Generator().manual_seed(self.config.seed)
        direction = torch.rand(model.cfg.d_model, generator=generator).to(model.cfg.device)
        # Scramble only what is about the target: its name and what follows. The question words before
        # the name are shared with every retained person and must stay intact.
        facts = self.task.facts(self.task.targets)
        name_start = torch.tensor(
            [
                len(model.tokenizer(p[: p.index(e)].rstrip(), add_special_tokens=False)["input_ids"])
                + self.task.prepend_bos
                for p, e in zip(facts["prompt"], facts["entity"], strict=True)
            ],
            device=model.cfg.device,
        )
        positions = torch.arange(self.forget.tokens.shape[1], device=model.cfg.device)
        self.forget_positions = self.forget.mask & (positions[None, :] >= name_start[:, None])
        with torch.no_grad():
            forget_acts = forward_to_hook(model, self.forget.tokens, self.hook_name)
            scale = forget_acts[self.forget_positions].norm(dim=-1).mean()
            self.control = self.config.steering_coef * scale * direction / direction.norm()
            self.retain_acts = forward_to_hook(model, self.retain_tokens, self.hook_name)

    def forget_loss(self, model: HookedTransformer, logits: torch.Tensor) -> torch.Tensor:
        acts = forward_to_hook(model, self.forget.tokens, self.hook_name)[self.forget_positions]
        return (acts - self.control).square().mean()

    def retain_loss(self, model: HookedTransformer) -> torch.Tensor:
        acts = forward_to_hook(model, self.retain_tokens, self.hook_name)
        return (acts - self.retain_acts)[self.retain_mask].square().mean()
