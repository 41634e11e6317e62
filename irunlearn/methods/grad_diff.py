"""Gradient difference: gradient ascent on the target's answers, descent on retain data."""

from __future__ import annotations

from dataclasses import dataclass

from irunlearn.methods.grad_ascent import GradAscent, GradAscentConfig


@dataclass
class GradDiffConfig(GradAscentConfig):
    lr: float = 3e-3  # analysis/sweep_baselines.py
    retain_weight: float = 1.0


class GradDiff(GradAscent):
    name = "grad_diff"
    config_class = GradDiffConfig
