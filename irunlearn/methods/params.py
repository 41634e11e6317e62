"""Which weights an unlearning method may change, optionally through LoRA or only along the targets' own
keys, with snapshots for rollback."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
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


class KeyedDelta(nn.Module):
    """`W + K @ B`: a change to a weight that only inputs along the fixed key basis `K` [d_in, r] see.

    With `K` spanning `C⁻¹ k` (C the covariance of ordinary inputs, k the targets' keys, as ROME's rank-one
    edit), an input `x` sees the change in proportion to `x C⁻¹ k`: fully at the targets' own tokens, hardly
    at all on ordinary text, which C says varies little along those directions. B starts at zero.
    """

    def __init__(self, basis: Float[torch.Tensor, "d_in r"], d_out: int):
        super().__init__()
        self.register_buffer("basis", basis)
        self.B = nn.Parameter(torch.zeros(basis.shape[1], d_out, device=basis.device, dtype=basis.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.basis @ self.B


# The MLP weights `edit="name_keys"` may change, and the hook that gives each one's input (for its keys).
KEY_INPUTS = {"W_in": "ln2.hook_normalized", "W_gate": "ln2.hook_normalized", "W_out": "mlp.hook_post"}


def key_bases(
    model: HookedTransformer,
    key_tokens: Int[torch.Tensor, "batch pos"],
    key_positions: Int[torch.Tensor, " batch"],
    text_tokens: Int[torch.Tensor, "lines pos"],
    text_mask: Bool[torch.Tensor, "lines pos"],
    layers: Sequence[int],
    rank: int,
    ridge: float = 0.1,
) -> dict[tuple[int, str], Float[torch.Tensor, "d_in r"]]:
    """Per (layer, MLP weight), the basis `KeyedDelta` edits along: the top `rank` directions of `C⁻¹ K`.

    K: the weight's inputs at `key_positions` of `key_tokens` (the targets' name tokens); C: the covariance
    of its inputs over the unmasked tokens of `text_tokens` (ordinary lines), plus `ridge` times its mean
    variance on the diagonal (there are fewer lines than dimensions). The basis is scaled so the keys' own
    projections have unit root-mean-square: the same learning rate moves the targets alike on any model.
    """
    names = {f"blocks.{layer}.{hook}" for layer in layers for hook in KEY_INPUTS.values()}
    with torch.no_grad():
        _, keys = model.run_with_cache(key_tokens, names_filter=lambda n: n in names, stop_at_layer=max(layers) + 1)
        _, text = model.run_with_cache(text_tokens, names_filter=lambda n: n in names, stop_at_layer=max(layers) + 1)
    rows = torch.arange(len(key_positions), device=key_positions.device)
    bases = {}
    for layer in layers:
        for weight, hook in KEY_INPUTS.items():
            if not hasattr(model.blocks[layer].mlp, weight):
                continue
            inputs = text[f"blocks.{layer}.{hook}"][text_mask].double()
            covariance = inputs.T @ inputs / len(inputs)
            covariance += (
                ridge
                * covariance.diagonal().mean()
                * torch.eye(len(covariance), dtype=covariance.dtype, device=covariance.device)
            )
            k = keys[f"blocks.{layer}.{hook}"][rows, key_positions].double()
            directions = torch.linalg.solve(covariance, k.T)  # [d_in, n_keys]
            u, _, _ = torch.linalg.svd(directions, full_matrices=False)
            basis = u[:, : min(rank, u.shape[1])]
            basis = basis / (k @ basis).square().mean().sqrt().clamp(min=1e-12)
            bases[(layer, weight)] = basis.to(model.cfg.dtype)
    return bases


class TrainableWeights:
    """The weights of `layers` that a method edits: MLP in/out (and attention Q/K/V/O with `attn`).

    Everything else is frozen. With `lora_rank`, each chosen matrix gets a LoRA parametrisation; with
    `bases` (from `key_bases`), only the MLP weights named there change, each along its key basis
    (`KeyedDelta`), biases and attention fixed. `finish()` merges either back into a plain weight.
    """

    def __init__(
        self,
        model: HookedTransformer,
        layers: Sequence[int],
        attn: bool = False,
        lora_rank: int | None = None,
        bases: dict[tuple[int, str], torch.Tensor] | None = None,
    ):
        bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
        if bad or not layers:
            raise ValueError(f"layers must be a non-empty subset of 0..{model.cfg.n_layers - 1}; got {list(layers)}")
        if bases is not None and (attn or lora_rank is not None):
            raise ValueError("Edits along key bases change MLP weights only: give no lora_rank and attn=False.")
        self.model, self.parametrized = model, lora_rank is not None or bases is not None
        model.requires_grad_(False)
        self.targets: list[tuple[nn.Module, str]] = []
        if bases is not None:
            for (layer, name), basis in bases.items():
                module = model.blocks[layer].mlp
                self.targets.append((module, name))
                parametrize.register_parametrization(module, name, KeyedDelta(basis, getattr(module, name).shape[-1]))
        else:
            for layer in layers:
                block = model.blocks[layer]
                self.targets += [
                    (block.mlp, name) for name in ("W_in", "W_out", "b_in", "b_out") if hasattr(block.mlp, name)
                ]
                if attn:
                    self.targets += [(block.attn, name) for name in ("W_Q", "W_K", "W_V", "W_O")]
        if lora_rank is not None:
            for module, name in self.targets:
                weight = getattr(module, name)
                if weight.ndim >= 2:
                    parametrize.register_parametrization(module, name, LoRA(weight.shape, lora_rank))
        self._params = [p for p in self._all_parameters() if p.requires_grad or not self.parametrized]
        for p in self._params:
            p.requires_grad_(True)

    def _all_parameters(self) -> list[nn.Parameter]:
        params = []
        for module, name in self.targets:
            if self.parametrized and parametrize.is_parametrized(module, name):
                params += list(module.parametrizations[name][0].parameters())
            elif not self.parametrized:
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
        if self.parametrized:
            for module, name in self.targets:
                if parametrize.is_parametrized(module, name):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        self.model.requires_grad_(False)
