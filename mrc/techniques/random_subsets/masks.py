"""The random subset's draw: a seeded bool mask over a group of tensors, the same on every
device and machine.

One implementation serves both sides: binding draws element partitions (`select … random`) with
it, and the random-subset integrator (mrc/techniques/random_subsets/integrator.py) draws each interval's subset with
it; the kernels of `mrc.kernels.subset` zero and restore the subset it selects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["random_subset_mask", "random_subset_masks"]


def random_subset_mask(numel: int, fraction: float, seed: int, *,
                       segments: Sequence[tuple[int, int]] | None = None,
                       per_tensor: bool = True,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """A bool mask of `numel` elements selecting a random subset, reproducible from `seed`.

    `segments` lists the `(offset, numel)` of each tensor in the flat buffer (a FlatGroup's
    `segments`; default: one segment over everything). With `per_tensor`, exactly
    round(fraction·numel_i) elements of each tensor are chosen; otherwise exactly
    round(fraction·total) over the union of the segments. Elements outside every segment (the
    padding) are never chosen. The draw uses a CPU generator seeded with `seed`, so the same
    seed gives the same mask on every device and machine.

    The stream of draws is fixed (resumed runs and the determinism tests rely on it): per
    tensor, one `randperm(numel_i)` per segment in order, drawn even when its count rounds to 0;
    globally, one `randperm` over all segment elements in order. A segment's first
    round(fraction·numel_i) permuted positions are the chosen ones.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], not {fraction}")
    segs = list(segments) if segments is not None else [(0, numel)]
    for off, size in segs:
        if off < 0 or size < 0 or off + size > numel:
            raise ValueError(f"segment ({off}, {size}) lies outside [0, {numel})")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    mask = torch.zeros(numel, dtype=torch.bool)
    if per_tensor:
        for off, size in segs:
            # always draw, so a tensor whose count rounds to 0 still advances the stream
            chosen = torch.randperm(size, generator=gen)[:round(fraction * size)]
            mask[off + chosen] = True
    else:
        positions = torch.cat([torch.arange(off, off + size) for off, size in segs])
        chosen = torch.randperm(positions.numel(), generator=gen)[:round(fraction * positions.numel())]
        mask[positions[chosen]] = True
    return mask.to(device) if device is not None else mask


def random_subset_masks(shapes: Sequence[Sequence[int]], fraction: float, seed: int, *,
                        per_tensor: bool = True,
                        device: torch.device | str | None = None) -> list[torch.Tensor]:
    """`random_subset_mask` over tensors of `shapes` laid end to end (no padding), returned as
    one mask per tensor in its shape: views of one flat mask, so `torch.cat` of their
    flattenings is the flat mask itself."""
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    segments, offset = [], 0
    for size in sizes:
        segments.append((offset, size))
        offset += size
    flat = random_subset_mask(offset, fraction, seed, segments=segments,
                              per_tensor=per_tensor, device=device)
    return [m.view(tuple(s)) for m, s in zip(flat.split(sizes), shapes, strict=True)]
