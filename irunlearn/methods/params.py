"""Which weights an unlearning method may change, optionally through LoRA, with snapshots for rollback."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformer_lens import HookedTransformer


class LoRA(nn.Module):
    """`W + A @ B` with rank-`r` factors; B starts at zero so the weight starts unchanged.

    Weights with more than two dimensions (TransformerLens's per-head `W_Q` etc.) are treated as the
    matrix of their leading dimensions flattened against the last one.
    """

    def __init__(self, shape: torch.Size, rank: int):
        super().__init__()
        self.shape = shape
        self.A = nn.Parameter(torch.randn(shape[:-1].numel(), rank) / rank**0.5)
        self.B = nn.Parameter(torch.zeros(rank, shape[-1]))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.A @ self.B).reshape(self.shape)


class TrainableWeights:
    """The weights of `layers` that a method edits: MLP in/out (and attention Q/K/V/O with `attn`).

    Everything else is frozen. With `lora_rank`, each chosen matrix gets a LoRA parametrisation that
    `finish()` merges back into a plain weight.
    """

    def __init__(
        self,
        model: HookedTransformer,
        layers: Sequence[int],
        attn: bool = False,
        lora_rank: int | None = None,
    ):
        bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
        if bad or not layers:
            raise ValueError(f"layers must be a non-empty subset of 0..{model.cfg.n_layers - 1}; got {list(layers)}")
        self.model, self.lora = model, lora_rank is not None
        model.requires_grad_(False)
        self.targets: list[tuple[nn.Module, str]] = []
        for layer in layers:
            block = model.blocks[layer]
            self.targets += [
                (block.mlp, name) for name in ("W_in", "W_out", "b_in", "b_out") if hasattr(block.mlp, name)
            ]
            if attn:
                self.targets += [(block.attn, name) for name in ("W_Q", "W_K", "W_V", "W_O")]
        if self.lora:
            for module, name in self.targets:
                weight = getattr(module, name)
                if weight.ndim >= 2:
                    parametrize.register_parametrization(module, name, LoRA(weight.shape, lora_rank))
        self._params = [p for p in self._all_parameters() if p.requires_grad or not self.lora]
        for p in self._params:
            p.requires_grad_(True)

    def _all_parameters(self) -> list[nn.Parameter]:
        params = []
        for module, name in self.targets:
            if self.lora and parametrize.is_parametrized(module, name):
                params += list(module.parametrizations[name][0].parameters())
            elif not self.lora:
                params.append(getattr(module, name))
        return params

    def parameters(self) -> list[nn.Parameter]:
        return self._params

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self._params]

    def restore(self, snapshot: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, saved in zip(self._params, snapshot, strict=True):
                p.copy_(saved)

    def finish(self) -> None:
        """Merge LoRA factors into the weights and freeze everything."""
        if self.lora:
            for module, name in self.targets:
                if parametrize.is_parametrized(module, name):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        self.model.requires_grad_(False)
