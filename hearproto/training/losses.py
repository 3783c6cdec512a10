"""The training losses, the calibration of beta, and the authors' augmentation."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as nnf

__all__ = ["loss_from_errors", "calibrated_beta", "augment"]


def loss_from_errors(errors: Tensor, labels: Tensor, mode: str, beta: Tensor,
                     lambda_ce: float, use_ce: bool) -> Tensor:
    """Unsupervised: mean of min_k errors. Supervised: mean error of the true class's
    prototype, plus ``lambda_ce`` * cross-entropy of softmax(-beta * errors) when ``use_ce``."""
    if mode == "unsupervised":
        return errors.min(dim=1).values.mean()
    loss = errors.gather(1, labels[:, None]).mean()
    if use_ce:
        loss = loss + lambda_ce * nnf.cross_entropy(-beta * errors, labels)
    return loss


def calibrated_beta(errors: Tensor, labels: Tensor, low: float = 1e-2,
                    high: float = 1e7) -> float:
    """The inverse temperature beta in [low, high] that minimises the mean cross-entropy of
    softmax(-beta * errors) ``(N, K)`` against ``labels`` ``(N,)`` (temperature scaling; the
    loss is convex in beta)."""
    from scipy.optimize import minimize_scalar

    errors = errors.double()
    errors = errors - errors.min(dim=1, keepdim=True).values

    def loss(log_beta: float) -> float:
        return float(nnf.cross_entropy(-math.exp(log_beta) * errors, labels))

    found = minimize_scalar(loss, bounds=(math.log(low), math.log(high)), method="bounded",
                            options={"xatol": 1e-3})
    return math.exp(found.x)


def augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The authors' augmentation of a batch ``(B, T, F)``: a random stretch of the mel axis by
    exp(0.15 N), a global bias 0.05 N and per-bin noise 0.01 N."""
    batch, _, n_bins = x.shape
    options = {"generator": generator, "device": x.device}
    scale = torch.exp(0.15 * torch.randn(batch, 1, **options))
    source = torch.arange(n_bins, device=x.device, dtype=x.dtype)[None, :] / scale  # (B, F)
    source = source.clamp(0, n_bins - 1)
    low = source.floor().long().clamp(max=n_bins - 2)
    weight = (source - low)[:, None, :]
    index = low[:, None, :].expand(-1, x.shape[1], -1)
    stretched = torch.lerp(x.gather(2, index), x.gather(2, index + 1), weight)
    bias = 0.05 * torch.randn(batch, 1, 1, **options)
    return stretched + bias + 0.01 * torch.randn(x.shape, **options)
