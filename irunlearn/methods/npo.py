"""Negative preference optimisation: `(2/β)·E[log(1 + (π_θ/π_ref)^β)]` on forget data, plus retain NLL."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from irunlearn.methods.grad_diff import GradDiff, GradDiffConfig


@dataclass
class NPOConfig(GradDiffConfig):
    lr: float = 3e-4  # analysis/sweep_baselines.py
    beta: float = 0.1


class NPO(GradDiff):
    name = "npo"
    config_class = NPOConfig
    config: NPOConfig

    def setup(self, model: HookedTransformer) -> None:
        super().setup(model)
        with torch.no_grad():
            self.ref_nll = self.forget.answer_nll(model(self.forget.tokens, return_type="logits"))

    def forget_loss(self, model: HookedTransformer, logits: torch.Tensor) -> torch.Tensor:
        beta = self.config.beta
        log_ratio = self.ref_nll - self.forget.answer_nll(logits)  # log π_θ(y|x) − log π_ref(y|x)
        return (2 / beta) * F.softplus(beta * log_ratio).mean()
