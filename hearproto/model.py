"""The prototype model: K spectral prototypes and the networks that transform them.

A shared 2-D encoder reads a log-Mel clip ``(B, T, F)``; three 1-D decoders (pitch, gain,
filters) predict, for every prototype and time step, the parameters of its transformations
(docs/design.md, "The model"). The reconstruction of clip b by prototype k is
``filters(gain(pitch(P_k)))`` at every time step; its mean squared error is the score that
assigns clips to prototypes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from hearproto.frontend import FrontEnd
from hearproto.kernels import reconstruction_error
from hearproto.kernels.encoder import first_level, first_level_applies
from hearproto.transforms import (MelBins, filter_params_from_raw, gain_from_raw, mel_bin_constants, pitch_from_raw, reconstruct)

__all__ = ["BETA_PARAMETRISATIONS", "TRANSFORMATIONS", "PrototypeModel", "Transformations"]

#: How the trainable ``b`` gives the inverse temperature: the paper's ``softplus(b)``, or
#: ``exp(b)`` (log space: steps of Adam change beta by a fixed ratio, not a fixed amount).
BETA_PARAMETRISATIONS = ("softplus", "log")

#: In the order the curriculum switches them on (and the order they are applied).
TRANSFORMATIONS = ("gain", "pitch", "filters")
PARAMS_PER_TRANSFORMATION = {"pitch": 1, "gain": 1, "filters": 4}
DOWN_CHANNELS = (8, 16, 32, 64)
SKIP_CHANNELS = 2
DECODER_CHANNELS = 64
TIME_MULTIPLE = 2 ** len(DOWN_CHANNELS)


def conv_block(conv: nn.Module, channels: int, two_d: bool) -> nn.Sequential:
    """``conv``, ReLU, then batch norm (2-D or 1-D) over ``channels``."""
    norm = nn.BatchNorm2d(channels) if two_d else nn.BatchNorm1d(channels)
    return nn.Sequential(conv, nn.ReLU(inplace=True), norm)


class _FrequencyPool(torch.autograd.Function):
    """``out[b, o, t] = sum over c, h of x[b, c, t, h] * weight[o, c, h]``, ``x`` ``(B, C, T, H)``,
    ``weight`` ``(O, C, H)``: ``(B, O, T)``. Each pass is one batched matrix product that reads
    ``x`` in place; the same contraction by ``einsum`` permutes ``x`` into copies, and its
    weight gradient, an (C*H, B*T) by (B*T, O) product with O = 2, took 23 ms of a 0.4 s
    training step on 2 CPU cores (docs/kernels.md)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.matmul(x, weight.permute(1, 2, 0).to(x.dtype)).sum(1).transpose(1, 2)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:  # (B, 1, T, O) @ (C, O, H) -> (B, C, T, H)
            grad_x = torch.matmul(grad.transpose(1, 2).unsqueeze(1),
                                  weight.transpose(0, 1).to(grad.dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:  # (B, 1, O, T) @ (B, C, T, H) -> (B, C, O, H), summed over B
            grad_weight = torch.matmul(grad.unsqueeze(1).to(x.dtype), x).sum(0)
            grad_weight = grad_weight.transpose(0, 1).to(weight.dtype)
        return grad_x, grad_weight


def frequency_pool(h: Tensor, pool: nn.Conv2d) -> Tensor:
    """``pool`` (a conv whose kernel spans the whole frequency height, ``(C_out, C, 1, H)``)
    applied to ``h`` ``(B, C, T, H)`` as one contraction: ``(B, C_out, T)``. The same numbers
    as ``pool(h).squeeze(-1)``, with a backward pass several times faster on CPU (oneDNN's
    convolution backward is slow for these shapes: a quarter of a training step at the first
    level)."""
    return _FrequencyPool.apply(h, pool.weight[:, :, 0]) + pool.bias[:, None]


class Encoder(nn.Module):
    """``(B, T, F)`` -> bottleneck ``(B, 64, T/16)`` and skips ``[(B, 2, T/2^i)]``, i = 0..3.

    Four down blocks (conv 3x3, then a stride-2 conv 2x2, each followed by ReLU and batch
    norm); from each level a learned frequency pooling (a conv spanning the whole remaining
    frequency height) gives a 2-channel 1-D skip.
    """

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        if n_mels % TIME_MULTIPLE:
            raise ValueError(f"n_mels must be a multiple of {TIME_MULTIPLE}, got {n_mels}")
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.pools = nn.ModuleList()
        channels, height = 1, n_mels
        for out in DOWN_CHANNELS:
            self.levels.append(conv_block(nn.Conv2d(channels, out, 3, padding=1), out, True))
            self.pools.append(nn.Conv2d(out, SKIP_CHANNELS, (1, height)))
            self.downs.append(conv_block(nn.Conv2d(out, out, 2, stride=2), out, True))
            channels, height = out, height // 2
        self.last = conv_block(nn.Conv2d(channels, 2 * channels, 3, padding=1), 2 * channels, True)
        self.collapse = conv_block(nn.Conv2d(2 * channels, DECODER_CHANNELS, (1, height)),
                                    DECODER_CHANNELS, True)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = 2 * x - 1  # (B, T, F), values ~[-1, 1]
        skips, first = [], 0
        conv, _, norm = self.levels[0]
        if first_level_applies(h, conv, norm):  # the same numbers, fused (docs/kernels.md)
            skip, h = first_level(h, conv, norm, self.pools[0], self.downs[0][0])
            skips.append(skip)
            h, first = self.downs[0][2](self.downs[0][1](h)), 1
        else:
            h = h.unsqueeze(1)  # (B, 1, T, F)
        for level, pool, down in list(zip(self.levels, self.pools, self.downs))[first:]:
            h = level(h)
            skips.append(frequency_pool(h, pool))  # (B, 2, T / 2^i)
            h = down(h)
        return self.collapse(self.last(h)).squeeze(-1), skips


class Decoder(nn.Module):
    """Bottleneck and skips -> raw parameters ``(B, K, T, n)`` for one transformation family.

    Four up blocks (conv1d k3, then a transposed conv k2 s2 to 62 channels, each followed by
    ReLU and batch norm, then the 2-channel skip of that resolution concatenated), a conv1d k3,
    and a 1x1 conv to ``n * K`` outputs whose weights start near zero (N(0, 1e-5)), so that the
    transformation starts as the identity.
    """

    def __init__(self, num_prototypes: int, n_params: int) -> None:
        super().__init__()
        c = DECODER_CHANNELS
        self.num_prototypes, self.n_params = num_prototypes, n_params
        self.ups = nn.ModuleList(
            nn.Sequential(
                conv_block(nn.Conv1d(c, c, 3, padding=1), c, False),
                conv_block(nn.ConvTranspose1d(c, c - SKIP_CHANNELS, 2, stride=2),
                            c - SKIP_CHANNELS, False),
            )
            for _ in DOWN_CHANNELS
        )
        self.smooth = conv_block(nn.Conv1d(c, c, 3, padding=1), c, False)
        self.head = nn.Conv1d(c, n_params * num_prototypes, 1)
        nn.init.normal_(self.head.weight, std=1e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, bottleneck: Tensor, skips: list[Tensor]) -> Tensor:
        h = bottleneck
        for up, skip in zip(self.ups, reversed(skips)):
            h = torch.cat([up(h), skip], dim=1)
        out = self.head(self.smooth(h))  # (B, n * K, T)
        batch, _, time = out.shape
        return out.view(batch, self.num_prototypes, self.n_params, time).permute(0, 1, 3, 2)


@dataclass
class Transformations:
    """Per (clip, prototype, time step) parameters; None where a transformation is off."""

    pitch: Tensor | None = None  # (B, K, T), factor s in [1/e, e]
    gain: Tensor | None = None  # (B, K, T), added log power
    filters: Tensor | None = None  # (B, K, T, 4): c_h, G_h, c_l, G_l

    def crop(self, length: int) -> "Transformations":
        return self.frames(slice(0, length))

    def frames(self, frames: slice) -> "Transformations":
        """The parameters of the time steps ``frames`` only."""
        return Transformations(*(None if p is None else p[:, :, frames]
                                 for p in (self.pitch, self.gain, self.filters)))


class PrototypeModel(nn.Module):
    """K prototypes ``(K, F)``, a shared encoder, one decoder per transformation family, and
    the learnable inverse temperature ``beta`` of the supervised loss: ``softplus(b)`` (the
    paper) or ``exp(b)`` (``beta_parametrisation="log"``).

    ``active`` (a set of names from :data:`TRANSFORMATIONS`) is part of the model's state:
    the curriculum switches transformations on one by one.
    """

    def __init__(self, num_prototypes: int, frontend: FrontEnd, beta_init: float = -4.0,
                 beta_parametrisation: str = "softplus") -> None:
        super().__init__()
        if beta_parametrisation not in BETA_PARAMETRISATIONS:
            raise ValueError(f"beta_parametrisation must be one of {BETA_PARAMETRISATIONS}, "
                             f"got {beta_parametrisation!r}")
        self.beta_parametrisation = beta_parametrisation
        self.frontend = frontend
        self.num_prototypes = num_prototypes
        self.prototypes = nn.Parameter(torch.full((num_prototypes, frontend.n_mels), 0.5))
        self.beta_raw = nn.Parameter(torch.tensor(float(beta_init)))
        self.encoder = Encoder(frontend.n_mels)
        self.decoders = nn.ModuleDict({
            name: Decoder(num_prototypes, PARAMS_PER_TRANSFORMATION[name])
            for name in TRANSFORMATIONS
        })
        self.bins = mel_bin_constants(frontend)
        self._bins_by_device: dict[str, MelBins] = {}
        self.register_buffer("active_mask", torch.zeros(len(TRANSFORMATIONS), dtype=torch.bool))
        self._active_seen: tuple[Tensor, int, frozenset[str]] | None = None

    # -- curriculum state ---------------------------------------------------------------------

    def bins_on(self, device: torch.device) -> MelBins:
        """The mel-bin constants on ``device``, copied there once (a copy per step would make
        the host wait for the GPU)."""
        key = str(device)
        if key not in self._bins_by_device:
            self._bins_by_device[key] = self.bins.to(device)
        return self._bins_by_device[key]

    @property
    def active(self) -> set[str]:
        """The names of the transformations switched on. Read from ``active_mask`` only when
        that buffer has changed (a new tensor, or written in place: its version counter), so
        that a training step on a GPU never waits for the device to read it."""
        mask, seen = self.active_mask, self._active_seen
        if seen is None or seen[0] is not mask or seen[1] != mask._version:
            names = frozenset(n for n, on in zip(TRANSFORMATIONS, mask.tolist()) if on)
            self._active_seen = seen = (mask, mask._version, names)
        return set(seen[2])

    def activate(self, name: str) -> None:
        if name not in TRANSFORMATIONS:
            raise ValueError(f"unknown transformation {name!r}; choose from {TRANSFORMATIONS}")
        names = self.active | {name}
        self.active_mask[TRANSFORMATIONS.index(name)] = True
        self._active_seen = (self.active_mask, self.active_mask._version, frozenset(names))

    @property
    def beta(self) -> Tensor:
        if self.beta_parametrisation == "log":
            return self.beta_raw.exp()
        return nnf.softplus(self.beta_raw)

    @torch.no_grad()
    def set_beta(self, value: float) -> None:
        """Set the inverse temperature to ``value`` > 0 (inverting the parametrisation)."""
        if not value > 0:
            raise ValueError(f"beta must be positive, got {value}")
        b = math.log(value) if self.beta_parametrisation == "log" else _inverse_softplus(value)
        self.beta_raw.fill_(b)

    # -- forward ------------------------------------------------------------------------------

    def transformations(self, x: Tensor) -> Transformations:
        """Parameters of the active transformations for clips ``x`` ``(B, T, F)``. For the
        encoder T must be a multiple of 16: the clips are extended by repeating them from
        their start, as training tiles clips shorter than its crops, and the parameters are
        cropped back. (Frames of zeros, which training never shows, tripled the error of
        unsupervised models on whole clips; docs/training.md.)"""
        active = self.active
        if not active:
            return Transformations()
        length = x.shape[1]
        padded = -(-length // TIME_MULTIPLE) * TIME_MULTIPLE
        if padded != length:
            x = x.repeat(1, -(-padded // length), 1)[:, :padded]
        bottleneck, skips = self.encoder(x)
        # in a fixed order: the encoder's gradient sums the decoders' in the order they ran,
        # and a set's order changes from one Python process to the next
        raw = {name: self.decoders[name](bottleneck, skips) for name in TRANSFORMATIONS
               if name in active}
        params = Transformations(
            pitch=pitch_from_raw(raw["pitch"][..., 0]) if "pitch" in raw else None,
            gain=gain_from_raw(raw["gain"][..., 0]) if "gain" in raw else None,
            filters=filter_params_from_raw(raw["filters"]) if "filters" in raw else None,
        )
        return params.crop(length)

    def errors(self, x: Tensor, k_chunk: int | None = 8, compiled: bool = False,
               frames: slice | None = None) -> tuple[Tensor, Transformations]:
        """Reconstruction error of every clip by every prototype, ``(B, K)`` (mean over T and
        F of the squared error), and the transformations used, without materialising all
        ``(B, K, T, F)`` reconstructions at once (``compiled``: fused by torch.compile).
        ``frames`` (e.g. ``slice(1, None, 4)``): the error of those time steps only, an
        unbiased estimate of the whole error at a fraction of the cost (the encoder still reads
        every frame)."""
        params = self.transformations(x)
        if frames is not None:
            x, params = x[:, frames], params.frames(frames)
        errors = reconstruction_error(
            x, self.prototypes, pitch=params.pitch, gain=params.gain, filters=params.filters,
            constants=self.bins_on(x.device), k_chunk=k_chunk, compiled=compiled,
        )
        return errors, params

    def target_errors(self, x: Tensor, targets: Tensor, compiled: bool = False,
                      frames: slice | None = None) -> Tensor:
        """Reconstruction error of each clip by one prototype of its own, ``targets`` ``(B,)``
        (the class prototype in supervised training): ``(B,)``. Equals
        ``errors(x)[0].gather(1, targets[:, None])`` at a K-th of the cost (``frames`` as in
        :meth:`errors`)."""
        params = self.transformations(x)
        if frames is not None:
            x, params = x[:, frames], params.frames(frames)
        rows = torch.arange(x.shape[0], device=x.device)
        chosen = [None if p is None else p[rows, targets][:, None]
                  for p in (params.pitch, params.gain, params.filters)]
        prototypes = self.prototypes[targets][:, None, None, :]  # (B, 1, 1, F)
        errors = reconstruction_error(x, prototypes, *chosen, constants=self.bins_on(x.device),
                                      k_chunk=None, compiled=compiled)
        return errors[:, 0]

    def reconstructions(self, x: Tensor, prototypes: Tensor | None = None) -> Tensor:
        """All reconstructions ``(B, K, T, F)`` (or of the prototype indices given)."""
        params = self.transformations(x)
        if prototypes is not None:
            params = Transformations(*(None if p is None else p[:, prototypes]
                                       for p in (params.pitch, params.gain, params.filters)))
        table = self.prototypes if prototypes is None else self.prototypes[prototypes]
        out = reconstruct(table, pitch=params.pitch, gain=params.gain, filters=params.filters,
                          constants=self.bins_on(x.device))
        # with no transformation the prototypes broadcast: one per frame of every clip
        return out.expand(x.shape[0], -1, x.shape[1], -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.errors(x)[0]

    @torch.no_grad()
    def recalibrate_norms(self, batches: Iterable[Tensor]) -> None:
        """Set the running mean and variance of the batch norms in use (encoder and active
        decoders) to their plain average over ``batches`` of clips ``(B, T, F)``, at the
        current weights ("precise" batch norm); the model is left in evaluation mode.

        Training normalises with each batch's own statistics. The running averages that
        evaluation uses lag behind weights that move fast, which can multiply the evaluation
        error several times (docs/training.md)."""
        if not self.active:  # the raw stage runs no network
            return
        in_use = [self.encoder, *(self.decoders[name] for name in self.active)]
        norms = [m for part in in_use for m in part.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [norm.momentum for norm in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average
        self.train()
        seen = 0
        try:
            for batch in batches:
                self.transformations(batch)
                seen += 1
        finally:
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
            self.eval()
        if not seen:
            raise ValueError("recalibrate_norms needs at least one batch")


def _inverse_softplus(value: float) -> float:
    """b with softplus(b) = value, stable for large values."""
    return value + math.log(-math.expm1(-value))
