"""A standardised, calibrated logistic-regression probe, and AUROC, in plain torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int


def auroc(scores: Float[torch.Tensor, " n"], labels: Int[torch.Tensor, " n"]) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties counted half); labels are 1 / 0."""
    labels = labels.bool()
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs both positive and negative examples.")
    greater = (pos[:, None] > neg[None, :]).float().mean()
    ties = (pos[:, None] == neg[None, :]).float().mean()
    return float(greater + 0.5 * ties)


@dataclass
class LinearProbe:
    """`p = sigmoid(a · (w·(x − mean)/std + b) + c)`: logistic regression on standardised inputs,
    then Platt scaling (`a` ≥ 0, `c`) fit on validation data so that 0.5 is a calibrated threshold.

    A feature non-zero in fewer than `min_support` fitting rows has `std = inf` (it enters as 0): standardising
    a sparse SAE latent that fires in a handful of rows blows it up to √n, and the regression then
    memorises each fitting entity by its rare latents, which says nothing about a new one. A calibration
    set on which the probe ranks backwards gets `a = 0` (every reading the calibration base rate) rather
    than an inverted probe: `signal` is then False.
    """

    mean: Float[torch.Tensor, " d"]
    std: Float[torch.Tensor, " d"]
    weight: Float[torch.Tensor, " d"]
    bias: Float[torch.Tensor, ""]
    scale: Float[torch.Tensor, ""]
    shift: Float[torch.Tensor, ""]

    @classmethod
    def fit(
        cls,
        x: Float[torch.Tensor, "n d"],
        y: Int[torch.Tensor, " n"],
        x_val: Float[torch.Tensor, "m d"] | None = None,
        y_val: Int[torch.Tensor, " m"] | None = None,
        l2: float = 1e-2,
        min_support: int = 0,
    ) -> LinearProbe:
        """Fit on (x, y); calibrate on (x_val, y_val) when given (else no recalibration). Features non-zero
        in fewer than `min_support` rows of `x` are left out."""
        if y.unique().numel() < 2:
            raise ValueError("A probe needs both known (1) and unknown (0) examples to fit.")
        x, target = x.detach().float(), y.float()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        if min_support > 0:
            std = std.masked_fill((x != 0).sum(0) < min_support, float("inf"))
        weight = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
        bias = torch.zeros((), device=x.device, requires_grad=True)
        _lbfgs(
            [weight, bias],
            lambda: (
                torch.nn.functional.binary_cross_entropy_with_logits(((x - mean) / std) @ weight + bias, target)
                + l2 * weight.square().sum()
            ),
        )
        one, zero = torch.ones((), device=x.device), torch.zeros((), device=x.device)
        probe = cls(mean, std, weight.detach(), bias.detach(), one, zero)
        if x_val is not None and y_val is not None:
            probe = probe.calibrated(x_val, y_val)
        return probe

    def calibrated(self, x: Float[torch.Tensor, "n d"], y: Int[torch.Tensor, " n"]) -> LinearProbe:
        """A copy with Platt scaling refit on (x, y)."""
        raw = self.raw_logit(x).detach()
        scale = torch.ones((), device=raw.device, requires_grad=True)
        shift = torch.zeros((), device=raw.device, requires_grad=True)
        _lbfgs(
            [scale, shift],
            lambda: torch.nn.functional.binary_cross_entropy_with_logits(scale * raw + shift, y.float()),
        )
        if scale.item() <= 0:  # ranked backwards on held-out rows: no signal, read the base rate
            rate = y.float().mean().clamp(1e-6, 1 - 1e-6)
            scale, shift = torch.zeros_like(scale), torch.log(rate / (1 - rate))
        return LinearProbe(self.mean, self.std, self.weight, self.bias, scale.detach(), shift.detach())

    @property
    def signal(self) -> bool:
        """False when calibration found the probe ranking backwards (its readings are the base rate)."""
        return bool(self.scale > 0)

    def raw_logit(self, x: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, " n"]:
        return ((x - self.mean) / self.std) @ self.weight + self.bias

    def logit(self, x: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, " n"]:
        """Calibrated logit; differentiable in `x`."""
        return self.scale * self.raw_logit(x) + self.shift

    def predict_proba(self, x: Float[torch.Tensor, "n d"]) -> Float[torch.Tensor, " n"]:
        return torch.sigmoid(self.logit(x))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).contiguous() for k in ("mean", "std", "weight", "bias", "scale", "shift")}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> LinearProbe:
        return cls(**state)


def _lbfgs(params: list[torch.Tensor], objective, iterations: int = 200) -> None:
    optimizer = torch.optim.LBFGS(params, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
