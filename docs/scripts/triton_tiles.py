"""The Triton reconstruction error (forward and backward, every transformation) for each tile
shape, at the paper's two shapes, against the torch path in the same run. One JSON line per
row. docs/kernels.md, "The CUDA kernel".

    python docs/scripts/triton_tiles.py --batch-size 128

``rel_l2`` is the largest, over the errors and the four gradients, of |fused - torch| / |torch|
(Euclidean norms). ``knot_rows`` counts the (b, k, t) rows whose pitch gradient differs by
more than 1e-3 of the largest: rows where a reading position lies within rounding of a knot of
the piecewise-linear interpolation, so that the two paths take the derivative from either side
(both are one-sided derivatives of the same function). A wrong kernel shows in ``rel_l2``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from hearproto.kernels import cuda as triton_kernel
from hearproto.kernels import use_backend
from hearproto.kernels import reconstruction_error
from hearproto.transforms import MelBins

SHAPES = {"sol": (33, 256), "librispeech": (128, 192)}
TILES = [(8, 4), (16, 4), (16, 8), (32, 4), (32, 8), (64, 8), (8, 2)]


def inputs(batch: int, n_protos: int, frames: int, device: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, 128, generator=g)
    prototypes = torch.randn(n_protos, 128, generator=g)
    pitch = torch.exp(0.5 * torch.tanh(torch.randn(batch, n_protos, frames, generator=g)))
    gain = 0.5 * torch.tanh(torch.randn(batch, n_protos, frames, generator=g))
    filters = 0.25 * torch.tanh(torch.randn(batch, n_protos, frames, 4, generator=g))
    return [t.to(device) for t in (x, prototypes, pitch, gain, filters)]


def errors_and_grads(args, backend: str, bins: MelBins, part: str = "all",
                     **options) -> list[torch.Tensor]:
    """The errors and the gradients of every input but x. ``part``: ``all``; ``forward``
    (no backward pass); ``no_prototypes`` (no gradient for the prototypes: the backward pass
    without its atomic adds)."""
    x, *leaves = [t.detach().clone() for t in args]
    for i, leaf in enumerate(leaves):
        leaf.requires_grad_(part == "all" or (part == "no_prototypes" and i > 0))
    with use_backend(backend), torch.set_grad_enabled(part != "forward"):
        errors = reconstruction_error(x, *leaves, constants=bins, **options)
    if part != "forward":
        errors.sum().backward()
    return [errors.detach()] + [leaf.grad for leaf in leaves]


def median_seconds(fn, device: str, repeats: int = 20, warmup: int = 3) -> float:
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--tiles", default=",".join(f"{t}x{w}" for t, w in TILES),
                        help="BLOCK_T x num_warps, comma-separated")
    parser.add_argument("--backwards", default=",".join(triton_kernel.BACKWARDS),
                        help="how the backward pass is split (hearproto.kernels.cuda.BACKWARD)")
    parser.add_argument("--parts", action="store_true",
                        help="also time the forward pass alone and the backward pass without "
                        "the prototypes' gradient (its atomic adds)")
    parser.add_argument("--no-torch-path", action="store_true",
                        help="skip timing the torch path (eager and compiled)")
    args = parser.parse_args()
    tiles = [tuple(int(n) for n in tile.split("x")) for tile in args.tiles.split(",")]
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device (on the CPU the fused path is the C kernel)")
    device = "cuda"
    bins = MelBins.from_range(128, 30.0, 8000.0).to(device)
    for shape in args.shapes.split(","):
        n_protos, frames = SHAPES[shape]
        data = inputs(args.batch_size, n_protos, frames, device)
        reference = errors_and_grads(data, "torch", bins, k_chunk=8)
        for (block_t, warps), backward in itertools.product(tiles, args.backwards.split(",")):
            triton_kernel.BLOCK_T, triton_kernel.NUM_WARPS = block_t, warps
            triton_kernel.BACKWARD = backward
            got = errors_and_grads(data, "fused", bins)
            rel_l2 = max(float((a - b).norm() / b.norm()) for a, b in zip(got, reference))
            pitch_gap = (got[2] - reference[2]).abs() > 1e-3 * reference[2].abs().max()
            row = {"shape": shape, "batch_size": args.batch_size, "BLOCK_T": block_t,
                   "num_warps": warps, "backward": backward}
            for part in ("all", "forward", "no_prototypes") if args.parts else ("all",):
                seconds = median_seconds(lambda: errors_and_grads(data, "fused", bins, part),
                                         device, args.repeats)
                row["ms" if part == "all" else f"ms_{part}"] = round(seconds * 1e3, 3)
            row.update(rel_l2=rel_l2, knot_rows=int(pitch_gap.sum()))
            print(json.dumps(row), flush=True)
        for compiled in () if args.no_torch_path else (False, True):
            seconds = median_seconds(
                lambda: errors_and_grads(data, "torch", bins, k_chunk=8, compiled=compiled),
                device, max(3, args.repeats // 2), 2)
            print(json.dumps({"shape": shape, "batch_size": args.batch_size,
                              "torch_path": "compiled" if compiled else "eager",
                              "ms": round(seconds * 1e3, 3)}), flush=True)


if __name__ == "__main__":
    main()
