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
  ``d[b, m, f] = sum_{c, t} (z[b, c, t, f] - P[m, c, t, f])^2`` in the paper (here divided
  by the squared norms, see below); the similarity of a clip to a prototype is
  ``s[b, m] = sum_f softmax(w[m])[f] * exp(-d[b, m, f])`` (here ``exp(-k d)``) with learnable
  frequency weights ``w`` ``(M, F/4)``; a bias-free linear layer maps ``s`` (here
  standardised, see below) to the logits;
* loss ``alpha * CE + beta * L_proto + gamma * L_rec``: ``L_rec`` is the batch mean of the
  summed squared reconstruction error (in the ``2x - 1`` scale); ``L_proto`` pulls every
  prototype towards its nearest clip of the batch and every clip towards its nearest
  prototype, on ``d`` averaged over frequency.

Recommended training (the original trainer): AdamW, learning rate 1e-4, weight decay 0,
gradient clipping at norm 0.5. The training loop itself lives with the caller.

Size: 6,664,262 parameters at 33 classes, 256 frames, 128 mels, M = 100 (5,035,362 at 128
classes, 192 frames). The original's 1.8M comes from its smaller inputs: over 97 % of ours are
the latent prototypes, ``M x C x T/4 x F/4``, which grow with the paper's 256 x 128 log-Mels.

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
* **Relative distance and a learnable sharpness**: ``d`` is the squared distance over
  channels and time *divided by* ``|z|^2 + |P|^2`` (so ``d`` lies in [0, 2] whatever the
  latents' scale), and the similarity is ``exp(-k d)`` with ``k = exp(log_sharpness)`` learned
  (one more parameter). The paper's plain sum measured 600-1200 at initialisation on
  ``instruments``: ``exp(-d)`` was exactly 0 for every clip and prototype, the classifier got
  no gradient and stayed at chance (3.0 % test OA after 12 minutes, while L_rec fell to
  0.057). A fixed rescaling does not help either: the latents' scale drifted 50x within the
  first epoch, which again pushed ``exp(-k d)`` to 0 (or to 1 everywhere). ``k`` starts
  at 1, so similarities start in [exp(-2), 1].
* **Standardised similarities and a faster classifier**: the classifier reads the
  similarities through a batch normalisation without affine parameters (each prototype's
  similarity centred and scaled over the batch; running statistics at evaluation), and its
  weights learn at :data:`CLASSIFIER_LR_SCALE` times the network's rate
  (:meth:`APNet.parameter_groups`). Measured on ``speakers`` at the full scale (12 epochs,
  about 500 AdamW steps at lr 1e-3): the raw similarities sit at 0.54 with a spread of 0.1
  over clips, an ill-conditioned input for a bias-free linear layer, and the classifier stayed
  at chance (validation OA 2.5-4 % in every epoch) although a logistic regression on the same
  similarities, standardised, scores 85.5 % on validation. On those fixed similarities, 500
  steps of the bias-free layer reach 6 % raw at lr 1e-3, 19 % standardised at lr 1e-3 and
  45 % standardised at lr 1e-2. The original trains for hundreds of epochs, where the raw
  input catches up; our 2-core budget allows twelve.
* **Prototype initialisation**: :meth:`APNet.init_prototypes` sets the prototypes to the
  latents of training clips, chosen k-means++-style (as our model's prototypes), rather than
  uniform noise; the trainer calls it before the first epoch.
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

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hearproto.data.dataset import tile_frames

__all__ = ["APNet", "APNetOutput", "CLASSIFIER_LR_SCALE"]

_SLOPE = 0.01  # LeakyReLU negative slope
_CHUNK = 16  # clips or prototypes encoded / decoded at once (bounds memory)

#: The classifier's learning rate relative to the rest of the network (see the module notes).
CLASSIFIER_LR_SCALE = 10.0


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
                 alpha: float = 2.0, beta: float = 1.0, gamma: float = 1.0,
                 channels_last: bool = True) -> None:
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
        self.log_sharpness = nn.Parameter(torch.zeros(()))  # similarity exp(-d * e^this)
        self.standardise = nn.BatchNorm1d(n_prototypes, affine=False)
        self.classifier = nn.Linear(n_prototypes, n_classes, bias=False)
        if channels_last:  # oneDNN's NHWC convolutions: a 1.4x faster step on the CPU
            self.to(memory_format=torch.channels_last)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups: the classifier at ``CLASSIFIER_LR_SCALE * lr``, every
        other parameter at ``lr``."""
        head = list(self.classifier.parameters())
        ids = {id(p) for p in head}
        body = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": body, "lr": lr}, {"params": head, "lr": CLASSIFIER_LR_SCALE * lr}]

    def _classify(self, similarity: Tensor) -> Tensor:
        """Logits ``(B, K)`` from similarities ``(B, M)``."""
        return self.classifier(self.standardise(similarity))

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
        """Relative squared distance ``(B, M, F/4)`` in [0, 2] of latents ``(B, C, T/4, F/4)``
        to the prototypes: ``|z - p|^2 / (|z|^2 + |p|^2)`` over channels and time, per
        frequency band."""
        p = self.prototypes
        cross = torch.einsum("bctf,mctf->bmf", z, p)
        norms = z.pow(2).sum((1, 2))[:, None, :] + p.pow(2).sum((1, 2))[None]
        return (norms - 2 * cross).clamp_min(0) / (norms + 1e-8)

    def _similarity(self, distance: Tensor) -> Tensor:
        """Frequency-weighted similarity ``(B, M)`` from distances ``(B, M, F/4)``."""
        weights = torch.softmax(self.frequency_weights, dim=-1)
        return (weights[None] * torch.exp(-distance * self.log_sharpness.exp())).sum(-1)

    def _run(self, x: Tensor) -> _Forward:
        target = 2 * self.fit_length(x) - 1
        z, mask1, mask2 = self._encode(target[:, None])
        decoded = self._decode(z, mask1, mask2)[:, 0]
        distance = self._distance(z)
        similarity = self._similarity(distance)
        return _Forward(target, decoded, distance, similarity, self._classify(similarity))

    # -- public API -------------------------------------------------------------------------
    @torch.no_grad()
    def init_prototypes(self, x: Tensor, generator: torch.Generator | None = None) -> None:
        """Set the prototypes to the latents of clips of ``x`` ``(N, T', F)`` chosen
        k-means++-style (the first at random, each next with probability proportional to its
        squared distance to the nearest one chosen), plus 0.01 N(0, 1) noise so that no two
        are equal. With fewer distinct clips than prototypes, clips are reused."""
        z = torch.cat([self._encode(2 * self.fit_length(part)[:, None] - 1)[0]
                       for part in x.split(_CHUNK)])
        flat = z.flatten(1)
        chosen = [int(torch.randint(len(flat), (1,), generator=generator))]
        nearest = (flat - flat[chosen[0]]).square().sum(1)
        for _ in range(1, self.n_prototypes):
            weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
            pick = int(torch.multinomial(weights.cpu(), 1, generator=generator))
            chosen.append(pick)
            nearest = torch.minimum(nearest, (flat - flat[pick]).square().sum(1))
        noise = torch.randn(self.prototypes.shape, generator=generator).to(z)
        self.prototypes.copy_(z[chosen] + 0.01 * noise)

    def forward(self, x: Tensor) -> APNetOutput:
        """``x`` ``(B, T', F)`` in [0, 1] -> logits ``(B, K)``, reconstruction
        ``(B, frames, F)`` in [0, 1], distances ``(B, M)``, similarities ``(B, M)``."""
        out = self._run(x)
        return APNetOutput(out.logits, (out.decoded + 1) / 2, out.distance.mean(-1),
                           out.similarity)

    def loss(self, x: Tensor, y: Tensor,
             batch_minima: Callable[[Tensor], Tensor] | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss on ``x`` ``(B, T', F)``, labels ``y`` ``(B,)``: the total
        ``alpha * ce + beta * proto + gamma * rec`` and its three terms, detached (as
        tensors: reading them would make the host wait for a GPU every step). The prototype
        term reads, for each prototype, its nearest clip of the batch: where ``x`` is one
        share of a batch, ``batch_minima`` stacks the shares' minima ``(M,)`` into
        ``(shares, M)``."""
        out = self._run(x)
        ce = F.cross_entropy(out.logits, y)
        rec = (out.target - out.decoded).pow(2).sum((1, 2)).mean()
        d = out.distance.mean(-1)  # (B, M)
        nearest = d.min(0).values
        if batch_minima is not None:
            nearest = batch_minima(nearest).min(0).values
        proto = nearest.mean() + d.min(1).values.mean()
        total = self.alpha * ce + self.beta * proto + self.gamma * rec
        return total, {"ce": ce.detach(), "proto": proto.detach(), "rec": rec.detach()}

    def logits(self, x: Tensor) -> Tensor:
        """Class logits ``(B, K)`` of ``x`` ``(B, T', F)``."""
        return self._classify(self.features(x))

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
        parts = [self._decode(self.prototypes[i:i + _CHUNK], mask1[i:i + _CHUNK],
                              mask2[i:i + _CHUNK])[:, 0]
                 for i in range(0, m, _CHUNK)]
        return (torch.cat(parts) + 1) / 2
