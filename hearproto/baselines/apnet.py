"""APNet: an autoencoder with latent prototypes, the classification baseline of the paper.

Reimplementation, from the paper's description, of APNet (P. Zinemanas, M. Rocamora,
M. Miron, F. Font, X. Serra, "An Interpretable Deep Learning Model for Automatic Sound
Classification", *Electronics* 10(7):850, 2021). It is the "APNet" row of Table 3
(classification) and, with K-means on its prototype similarities, the "APNet + K-means" row
of Table 2 (clustering).

Model, for a batch ``x`` of scaled log-Mels ``(B, T, F)`` in about [0, 1]:

* the network sees ``2x - 1`` as a one-channel image ``(B, 1, T, F)`` (time, then frequency);
* encoder: three 5x5 convolutions (``channels`` filters, "same" padding), each followed by a
  LeakyReLU, with a 2x2 max-pool after the first two. For each pool, the binary mask of the
  positions that held the maximum (``y >= upsample(maxpool(y))``) is kept;
* decoder, the mirror image: transposed convolution, nearest x2 upsampling, product with the
  pool-2 mask, LeakyReLU; the same with the pool-1 mask; a last transposed convolution to
  one channel and ``tanh`` (the ``[-1, 1]`` scale of ``2x - 1``);
* ``M`` prototypes living in the latent space ``(C, T/4, F/4)``; the distance of a latent map
  ``z`` to a prototype ``P`` is kept per frequency band,
  ``d[b, m, f] = sum_{c, t} (z[b, c, t, f] - P[m, c, t, f])^2``; the similarity of a clip to a
  prototype is ``s[b, m] = sum_f softmax(w[m])[f] * exp(-d[b, m, f])`` with learnable
  frequency weights ``w`` ``(M, F/4)``; a bias-free linear layer maps ``s`` to the logits;
* loss ``alpha * CE + beta * L_proto + gamma * L_rec``: ``L_rec`` is the batch mean of the
  summed squared reconstruction error (in the ``2x - 1`` scale); ``L_proto`` pulls every
  prototype towards its nearest clip of the batch and every clip towards its nearest
  prototype, on ``d`` averaged over frequency.

Recommended training (the original trainer): AdamW, learning rate 1e-4, weight decay 0,
gradient clipping at norm 0.5. The training loop itself lives with the caller.

Choices made where the paper (or the brief) is silent:

* **Layout** ``(B, 1, T, F)``: time is the image's height, frequency its width.
* **LeakyReLU slope** 0.01 (PyTorch's default, as in the authors' PyTorch port; Keras'
  default would be 0.3).
* **Distance computation**: ``|z|^2 + |P|^2 - 2 <z, P>`` summed per frequency band (an einsum
  instead of a ``(B, M, C, T/4, F/4)`` difference tensor, which would take ~1 GB at the paper's
  sizes), clamped at 0 against rounding. Equal to the naive sum up to float rounding.
* **Mask ties**: the mask keeps *every* position equal to its cell's maximum (the ``>=`` rule),
  so a cell with a tie passes the value to several positions.
* **Fixed length**: the prototypes have ``frames / 4`` time steps, so the model is built for
  ``frames`` frames; :meth:`APNet.fit_length` crops longer clips from the start and tiles
  (repeats) shorter ones. Every public method calls it, so whole clips of any length can be
  passed, but only their first ``frames`` frames (or their repetition) are seen.
* **Similarity underflow**: ``d`` sums ``C * T/4`` squared terms (2048 at the paper's sizes), so
  ``exp(-d)`` may underflow to 0 early in training; this is the original design, kept as is
  (the prototype loss brings latents and prototypes together).
* **Decoding a prototype** (:meth:`APNet.decode_prototypes`) needs unpooling masks that a
  latent prototype does not have. With an example batch, each prototype borrows the masks of
  the example clip nearest to it (smallest frequency-averaged distance). Without one, every
  mask is the constant 1/4, the *expected* mask when the position of each cell's maximum is
  unknown and uniform: it keeps each 2x2 cell's mean instead of placing the whole value at
  one guessed position; it is exact in expectation up to the first nonlinearity after the
  second unpooling (LeakyReLU is positively homogeneous) and a mean-field approximation
  beyond.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hearproto.data.dataset import tile_frames

__all__ = ["APNet", "APNetOutput"]

_SLOPE = 0.01  # LeakyReLU negative slope
_DECODE_CHUNK = 16  # prototypes decoded at once in decode_prototypes (bounds memory)


class APNetOutput(NamedTuple):
    """Everything one forward pass gives.

    ``logits`` ``(B, K)``; ``reconstruction`` ``(B, T, F)`` in the same [0, 1] scale as the
    input; ``distances`` ``(B, M)`` (latent squared distances averaged over frequency);
    ``similarities`` ``(B, M)`` in [0, 1].
    """

    logits: Tensor
    reconstruction: Tensor
    distances: Tensor
    similarities: Tensor


class _Forward(NamedTuple):
    """Internal: one forward pass with the intermediate tensors the losses need."""

    target: Tensor  # (B, T, F), 2x - 1
    decoded: Tensor  # (B, T, F), tanh output in [-1, 1]
    distance: Tensor  # (B, M, F/4)
    similarity: Tensor  # (B, M)
    logits: Tensor  # (B, K)


def _pool_with_mask(y: Tensor) -> tuple[Tensor, Tensor]:
    """2x2 max-pool ``y`` ``(B, C, H, W)``; also the mask ``(B, C, H, W)`` of the maxima."""
    pooled = F.max_pool2d(y, 2)
    mask = (y >= F.interpolate(pooled, scale_factor=2.0, mode="nearest")).to(y.dtype)
    return pooled, mask


class APNet(nn.Module):
    """APNet (Zinemanas et al., 2021) for log-Mels ``(B, T, F)`` of ``frames`` x ``n_mels``.

    ``frames`` and ``n_mels`` must be multiples of 4 (two 2x2 poolings).
    """

    def __init__(self, n_classes: int, n_mels: int = 128, frames: int = 256,
                 n_prototypes: int = 100, channels: int = 32, kernel: int = 5,
                 alpha: float = 2.0, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        if frames % 4 or n_mels % 4:
            raise ValueError(f"frames ({frames}) and n_mels ({n_mels}) must be multiples of 4")
        if kernel % 2 == 0:
            raise ValueError(f"kernel ({kernel}) must be odd to keep the sizes")
        self.n_classes, self.n_mels, self.frames = n_classes, n_mels, frames
        self.n_prototypes, self.channels = n_prototypes, channels
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        pad = kernel // 2
        self.conv1 = nn.Conv2d(1, channels, kernel, padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=pad)
        self.conv3 = nn.Conv2d(channels, channels, kernel, padding=pad)
        self.deconv3 = nn.ConvTranspose2d(channels, channels, kernel, padding=pad)
        self.deconv2 = nn.ConvTranspose2d(channels, channels, kernel, padding=pad)
        self.deconv1 = nn.ConvTranspose2d(channels, 1, kernel, padding=pad)
        self.prototypes = nn.Parameter(torch.rand(n_prototypes, channels, frames // 4, n_mels // 4))
        self.frequency_weights = nn.Parameter(torch.zeros(n_prototypes, n_mels // 4))
        self.classifier = nn.Linear(n_prototypes, n_classes, bias=False)

    # -- plumbing ---------------------------------------------------------------------------
    def fit_length(self, x: Tensor) -> Tensor:
        """Crop (keep the start) or tile (repeat) ``x`` ``(B, T', F)`` to ``(B, frames, F)``."""
        if x.shape[1] == 0:
            raise ValueError("cannot fit an empty clip")
        return tile_frames(x, self.frames)[:, : self.frames]

    def _encode(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``image`` ``(B, 1, T, F)`` -> latent ``(B, C, T/4, F/4)``, masks of pool 1 and 2."""
        y = F.leaky_relu(self.conv1(image), _SLOPE)
        y, mask1 = _pool_with_mask(y)
        y = F.leaky_relu(self.conv2(y), _SLOPE)
        y, mask2 = _pool_with_mask(y)
        z = F.leaky_relu(self.conv3(y), _SLOPE)
        return z, mask1, mask2

    def _decode(self, z: Tensor, mask1: Tensor, mask2: Tensor) -> Tensor:
        """Latent ``(B, C, T/4, F/4)`` and masks -> image ``(B, 1, T, F)`` in [-1, 1]."""
        y = F.interpolate(self.deconv3(z), scale_factor=2.0, mode="nearest") * mask2
        y = F.leaky_relu(y, _SLOPE)
        y = F.interpolate(self.deconv2(y), scale_factor=2.0, mode="nearest") * mask1
        y = F.leaky_relu(y, _SLOPE)
        return torch.tanh(self.deconv1(y))

    def _distance(self, z: Tensor) -> Tensor:
        """Squared distance ``(B, M, F/4)`` of latents ``(B, C, T/4, F/4)`` to the prototypes,
        summed over channels and time, kept per frequency band."""
        p = self.prototypes
        cross = torch.einsum("bctf,mctf->bmf", z, p)
        d = z.pow(2).sum((1, 2))[:, None, :] + p.pow(2).sum((1, 2))[None] - 2 * cross
        return d.clamp_min(0)

    def _similarity(self, distance: Tensor) -> Tensor:
        """Frequency-weighted similarity ``(B, M)`` from distances ``(B, M, F/4)``."""
        weights = torch.softmax(self.frequency_weights, dim=-1)
        return (weights[None] * torch.exp(-distance)).sum(-1)

    def _run(self, x: Tensor) -> _Forward:
        target = 2 * self.fit_length(x) - 1
        z, mask1, mask2 = self._encode(target[:, None])
        decoded = self._decode(z, mask1, mask2)[:, 0]
        distance = self._distance(z)
        similarity = self._similarity(distance)
        return _Forward(target, decoded, distance, similarity, self.classifier(similarity))

    # -- public API -------------------------------------------------------------------------
    def forward(self, x: Tensor) -> APNetOutput:
        """``x`` ``(B, T', F)`` in [0, 1] -> logits ``(B, K)``, reconstruction
        ``(B, frames, F)`` in [0, 1], distances ``(B, M)``, similarities ``(B, M)``."""
        out = self._run(x)
        return APNetOutput(out.logits, (out.decoded + 1) / 2, out.distance.mean(-1),
                           out.similarity)

    def loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Training loss on ``x`` ``(B, T', F)``, labels ``y`` ``(B,)``: the total
        ``alpha * ce + beta * proto + gamma * rec`` and its three terms as floats."""
        out = self._run(x)
        ce = F.cross_entropy(out.logits, y)
        rec = (out.target - out.decoded).pow(2).sum((1, 2)).mean()
        d = out.distance.mean(-1)  # (B, M)
        proto = d.min(0).values.mean() + d.min(1).values.mean()
        total = self.alpha * ce + self.beta * proto + self.gamma * rec
        return total, {"ce": ce.item(), "proto": proto.item(), "rec": rec.item()}

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``(B, K)`` of ``x`` ``(B, T', F)``."""
        return self.classifier(self.features(x))

    def features(self, x: Tensor) -> Tensor:
        """Prototype similarities ``(B, M)`` of ``x`` ``(B, T', F)`` (the features that
        "APNet + K-means" clusters)."""
        target = 2 * self.fit_length(x) - 1
        z, _, _ = self._encode(target[:, None])
        return self._similarity(self._distance(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruction ``(B, frames, F)`` of ``x`` ``(B, T', F)``, in the [0, 1] scale."""
        return (self._run(x).decoded + 1) / 2

    @torch.no_grad()
    def decode_prototypes(self, masks_from: Tensor | None = None) -> Tensor:
        """Decode the latent prototypes into log-Mels ``(M, frames, F)`` in [0, 1] (playable).

        The decoder's unpooling needs masks of where each pooled maximum was. With
        ``masks_from`` (an example batch ``(B, T', F)``, e.g. training clips), each prototype
        uses the masks of the example clip nearest to it in the latent space (smallest
        frequency-averaged distance). Without it, every mask is the constant 1/4: the expected
        mask when the position of each 2x2 maximum is unknown and uniformly distributed.
        """
        m, c = self.n_prototypes, self.channels
        h, w = self.frames, self.n_mels
        if masks_from is not None:
            target = 2 * self.fit_length(masks_from) - 1
            z, mask1, mask2 = self._encode(target[:, None])
            nearest = self._distance(z).mean(-1).argmin(0)  # (M,)
            mask1, mask2 = mask1[nearest], mask2[nearest]
        else:
            mask1 = self.prototypes.new_full((1, c, h, w), 0.25).expand(m, -1, -1, -1)
            mask2 = self.prototypes.new_full((1, c, h // 2, w // 2), 0.25).expand(m, -1, -1, -1)
        parts = [self._decode(self.prototypes[i:i + _DECODE_CHUNK], mask1[i:i + _DECODE_CHUNK],
                              mask2[i:i + _DECODE_CHUNK])[:, 0]
                 for i in range(0, m, _DECODE_CHUNK)]
        return (torch.cat(parts) + 1) / 2
