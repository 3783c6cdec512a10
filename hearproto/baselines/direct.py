"""Direct Classification: the supervised reference of Table 3.

A convolutional network reads the log-Mel clip ``(B, T, F)`` and predicts the class with a
cross-entropy loss; it has no prototypes and reconstructs nothing. Layout (the sizes of the
authors' baseline): four down blocks as in our encoder (conv 3x3, then a stride-2 conv 2x2,
each followed by ReLU and batch norm; channels 1 -> 8 -> 16 -> 32 -> 64), the maximum over
time of the last feature maps (so whole clips of any length are classified), flattened to
``64 * F / 16`` features, then a perceptron 128 -> 64 -> classes.

``channels_last=True`` keeps the convolution weights channels-last, as the autoencoder does
(about twice as fast a step on the CPU, ``hearproto bench --baselines``). It is off by
default: this network's gradient is so sensitive to rounding (batch norm of a few clips
after a max over time) that, channels-last, two processes' first step parts from one
process's by 5e-2 instead of 1.4e-4 (``tests/test_distributed.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from hearproto.model import DOWN_CHANNELS, TIME_MULTIPLE, conv_block

__all__ = ["DirectClassifier", "down_stack"]

HIDDEN = (128, 64)


def down_stack(channels: tuple[int, ...] = DOWN_CHANNELS) -> nn.Sequential:
    """Conv 3x3 then stride-2 conv 2x2 per level (each ReLU + batch norm): ``(B, 1, T, F)``
    -> ``(B, channels[-1], T / 2^L, F / 2^L)``."""
    layers, previous = [], 1
    for out in channels:
        layers += [conv_block(nn.Conv2d(previous, out, 3, padding=1), out, True),
                   conv_block(nn.Conv2d(out, out, 2, stride=2), out, True)]
        previous = out
    return nn.Sequential(*layers)


def pad_time(x: Tensor, multiple: int = TIME_MULTIPLE) -> Tensor:
    """Zero-pad ``(B, T, F)`` in time to a multiple of ``multiple`` frames."""
    extra = -x.shape[1] % multiple
    return nnf.pad(x, (0, 0, 0, extra)) if extra else x


class DirectClassifier(nn.Module):
    """Log-Mels ``(B, T, F)`` (T any length; padded to a multiple of 16) -> logits ``(B, C)``."""

    kind = "direct"

    def __init__(self, n_classes: int, n_mels: int = 128, channels_last: bool = False) -> None:
        super().__init__()
        if n_mels % TIME_MULTIPLE:
            raise ValueError(f"n_mels must be a multiple of {TIME_MULTIPLE}, got {n_mels}")
        self.n_classes, self.n_mels = n_classes, n_mels
        self.convs = down_stack()
        layers, previous = [], DOWN_CHANNELS[-1] * n_mels // TIME_MULTIPLE
        for width in HIDDEN:
            layers += [nn.Linear(previous, width), nn.ReLU(inplace=True), nn.BatchNorm1d(width)]
            previous = width
        self.classifier = nn.Sequential(*layers, nn.Linear(previous, n_classes))
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def logits(self, x: Tensor) -> Tensor:
        """``(B, T, F)`` -> ``(B, C)``."""
        maps = self.convs((2 * pad_time(x) - 1).unsqueeze(1))  # (B, 64, T/16, F/16)
        return self.classifier(maps.amax(dim=2).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(x)

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Cross-entropy; parts for logging (detached tensors)."""
        loss = nnf.cross_entropy(self.logits(x), y)
        return loss, {"ce": loss.detach()}
