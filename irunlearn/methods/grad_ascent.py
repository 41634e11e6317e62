"""Gradient ascent: maximise the NLL of the target's answers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from irunlearn.methods.suppression import Suppression, SuppressionConfig


@dataclass
class GradAscentConfig(SuppressionConfig):
    lr: float = 3e-4  # analysis/sweep_baselines.py: forget_acc ≤ 0.05 with the best retain_acc


class GradAscent(Suppression):
    name = "grad_ascent"
    config_class = GradAscentConfig

    def forget_loss(self, model: HookedTransformer, logits: torch.Tensor) -> torch.Tensor:
        return -self.forget.answer_nll(logits).mean()
