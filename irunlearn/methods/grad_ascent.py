"""Gradient ascent: maximise the NLL of the target's answers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from irunlearn.methods.suppression import Suppression, SuppressionConfig


@dataclass
class GradAscentConfig(SuppressionConfig):
    lr: float = 1e-3


class GradAscent(Suppression):
    name = "grad_ascent"
    config_class = GradAscentConfig

    def forget_loss(self, model: HookedTransformer, logits: torch.Tensor) -> torch.Tensor:
        return -self.forget.answer_nll(logits).mean()
