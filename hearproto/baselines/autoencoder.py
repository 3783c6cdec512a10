"""Autoencoder + K-means: the reconstruction-only reference of Table 2.

A 2-D convolutional autoencoder without skip connections, trained with an L2 reconstruction
loss on the log-Mel clip ``(B, T, F)``. Its innermost feature maps, averaged over time, are
the features that K-means clusters (K = number of classes, clusters mapped to classes by
majority, as for our unsupervised model).

Layout (the sizes of the authors' baseline): four levels of conv 5x5 with 32 channels and
LeakyReLU, each followed by a 2x2 max-pool; the decoder mirrors it with nearest upsampling
and conv 5x5 + LeakyReLU, and a last conv 5x5 to one channel with tanh, in the ``2x - 1``
scale of the input.

The weights are kept channels-last (NHWC), so that every convolution after the first runs
channels-last too: on the CPU, oneDNN's NHWC kernels make a training step about 1.5x faster
than the default layout, for the same numbers (``hearproto bench --baselines``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from hearproto.baselines.direct import pad_time

__all__ = ["ConvAutoencoder"]

LEVELS = 4
CHANNELS = 32
KERNEL = 5


class ConvAutoencoder(nn.Module):
    """Log-Mels ``(B, T, F)`` -> reconstructions ``(B, T, F)`` through a bottleneck
    ``(B, 32, T / 16, F / 16)``; T any length (padded to a multiple of 16, cropped back)."""

    kind = "autoencoder"

    def __init__(self, n_mels: int = 128, channels: int = CHANNELS, levels: int = LEVELS,
                 channels_last: bool = True) -> None:
        super().__init__()
        if n_mels % 2 ** levels:
            raise ValueError(f"n_mels must be a multiple of {2 ** levels}, got {n_mels}")
        self.n_mels, self.levels = n_mels, levels
        pad = KERNEL // 2
        self.encoder = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(1 if i == 0 else channels, channels, KERNEL, padding=pad),
                          nn.LeakyReLU(), nn.MaxPool2d(2))
            for i in range(levels)))
        self.decoder = nn.Sequential(*(
            nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                          nn.Conv2d(channels, channels, KERNEL, padding=pad), nn.LeakyReLU())
            for _ in range(levels)))
        self.output = nn.Conv2d(channels, 1, KERNEL, padding=pad)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def encode(self, x: Tensor) -> Tensor:
        """``(B, T, F)`` -> innermost feature maps ``(B, C, T' / 16, F / 16)``, T' padded."""
        return self.encoder((2 * pad_time(x, 2 ** self.levels) - 1).unsqueeze(1))

    def reconstruct(self, x: Tensor) -> Tensor:
        """``(B, T, F)`` -> ``(B, T, F)`` in the [0, 1] scale of ``x``."""
        out = torch.tanh(self.output(self.decoder(self.encode(x)))).squeeze(1)
        return (out[:, : x.shape[1]] + 1) / 2

    def features(self, x: Tensor) -> Tensor:
        """Innermost feature maps averaged over time, flattened: ``(B, C * F / 16)`` (padded
        frames excluded from the average)."""
        maps = self.encode(x)
        valid = -(-x.shape[1] // 2 ** self.levels)  # bottleneck frames that saw real input
        return maps[:, :, :valid].mean(dim=2).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x)

    def loss(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Mean squared error of the reconstruction (labels unused); parts for logging
        (detached tensors)."""
        loss = nnf.mse_loss(self.reconstruct(x), x)
        return loss, {"rec": loss.detach()}
