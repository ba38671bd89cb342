"""Masked auto-encoding (MAE) for 3D volumes, as in the paper's recipe.

A patch is cut into cubic blocks (16^3 voxels by default); 75% of them are
masked (filled with zeros) and the network reconstructs the whole patch at the
input resolution. The loss is the squared error on the masked voxels only.

Masks come from a `torch.Generator` seeded by (seed, step, global sample
index), never from a global RNG: a sample's mask is the same whichever rank
draws it, however many ranks there are, and after a resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

#: Separates the mask streams from the loader's (same seed, different stream).
MASK_STREAM = 0x4D414531  # "MAE1"
#: The "step" of the fixed validation masks (training steps are >= 0).
VAL_STREAM = 0x56414C31  # "VAL1"


def mask_seed(seed: int, step: int, index: int, stream: int = MASK_STREAM) -> int:
    """A 63-bit generator seed from (seed, step, global sample index)."""
    words = np.random.SeedSequence([stream, seed, step, index]).generate_state(2, np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


def _coarse(
    shape: tuple[int, ...], block: int, ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """The block grid (ceil(shape / block)), exactly round(ratio * blocks) True."""
    if block < 1:
        raise ValueError(f"mask block must be >= 1, got {block}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    grid = tuple(math.ceil(s / block) for s in shape)
    n = math.prod(grid)
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=generator)[: round(ratio * n)]] = True
    return flat.view(grid)


def _expand(coarse: torch.Tensor, block: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Blocks to voxels over the last three dims, cropped to `shape`."""
    for dim in range(-3, 0):
        coarse = coarse.repeat_interleave(block, dim=dim)
    return coarse[..., : shape[0], : shape[1], : shape[2]].contiguous()


def mask_blocks(
    shape: Sequence[int],
    block: int = 16,
    ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A bool mask of spatial `shape` (D, H, W), True where masked.

    The volume is tiled by `block`^3 cubes (the last ones cropped when an edge is
    not a multiple of `block`); exactly round(ratio * number of blocks) of them,
    drawn without replacement, are masked.
    """
    shape = tuple(int(s) for s in shape)
    return _expand(_coarse(shape, block, ratio, generator), block, shape)


def batch_masks(
    spatial: Sequence[int],
    indices: Sequence[int],
    step: int,
    seed: int,
    block: int = 16,
    ratio: float = 0.75,
    stream: int = MASK_STREAM,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Masks (b, 1, D, H, W) for the samples with these global indices at `step`
    (drawn on the CPU, expanded to voxels on `device`)."""
    shape = tuple(int(s) for s in spatial)
    coarse = [
        _coarse(
            shape,
            block,
            ratio,
            torch.Generator().manual_seed(mask_seed(seed, step, int(g), stream)),
        )
        for g in indices
    ]
    return _expand(torch.stack(coarse).unsqueeze(1).to(device), block, shape)


def apply_mask(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The network input: masked voxels set to zero."""
    return image.masked_fill(mask, 0.0)


def mae_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    anon: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error over the masked voxels (times 1 - anon when given).

    Each sample's error is averaged over its own loss voxels, then the samples
    are averaged: a batch split across ranks (each averaging its share, DDP
    averaging the ranks) gives the gradient of the whole batch in one process.
    A sample with no loss voxel contributes 0; a batch with none gives 0.0 with
    the graph intact (zero gradients, never NaN).
    """
    weight = mask.to(pred.dtype)
    if anon is not None:
        weight = weight * (1.0 - anon.to(pred.dtype))
    weight = weight.expand_as(pred)
    dims = tuple(range(1, pred.dim()))
    err = ((pred - target) ** 2 * weight).sum(dim=dims)
    count = weight.sum(dim=dims)
    return (err / count.clamp(min=1.0)).mean()
