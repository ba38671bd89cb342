"""Token masking for Primus: which of a patch's 8^3 tokens are dropped.

A Primus cuts a patch into cubic tokens (8^3 voxels) in (D, H, W) order,
the order of ``flatten(2)`` after its patch embedding. For each sample,
exactly round(ratio * N) of the N tokens are dropped, drawn without
replacement from a generator that the caller seeds per sample, in practice
``StepContext.generator(global index)``: a sample's draw depends only on
(seed, step, global index, stream), whichever rank draws it, however many
ranks there are, and after a resume.

Written here rather than taken from timm's ``PatchDropout``, which draws
from the global generator inside the network and hides the indices' order.
Pure functions: drawing (CPU), gathering the kept tokens, putting tokens
back in place with a mask token, and expanding a token mask to voxels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def token_grid(shape: Sequence[int], token: int = 8) -> tuple[int, int, int]:
    """The token grid (d, h, w) of a patch of spatial `shape` (each edge a
    multiple of `token`)."""
    if any(int(s) % token for s in shape):
        raise ValueError(f"patch {tuple(shape)} is not a multiple of the {token}^3 token")
    return tuple(int(s) // token for s in shape)  # type: ignore[return-value]


def n_dropped(n: int, ratio: float) -> int:
    """How many of `n` tokens a `ratio` drops: round(ratio * n), refusing a
    ratio that keeps none or drops none (nothing to encode or to learn)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    k = round(ratio * n)
    if not 0 < k < n:
        raise ValueError(f"a ratio of {ratio} drops {k} of {n} tokens; it must drop some, not all")
    return k


def draw_dropped(n: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A (n,) bool mask, True for the exactly round(ratio * n) dropped tokens."""
    dropped = torch.zeros(n, dtype=torch.bool)
    dropped[torch.randperm(n, generator=generator)[: n_dropped(n, ratio)]] = True
    return dropped


def batch_dropped(
    n: int,
    indices: Sequence[int],
    ratio: float,
    generator_of: Callable[[int], torch.Generator],
) -> torch.Tensor:
    """(b, n) bool masks (True = dropped) for the samples with these global
    indices; `generator_of(index)` gives each sample's generator (on the CPU),
    e.g. ``ctx.generator``."""
    return torch.stack([draw_dropped(n, ratio, generator_of(int(i))) for i in indices])


def keep_indices(dropped: torch.Tensor) -> torch.Tensor:
    """(b, K) indices of the kept tokens, ascending, from (b, n) `dropped`
    masks (every sample keeps the same number K)."""
    b, n = dropped.shape
    kept = (~dropped).sum(dim=1)
    if b and not bool((kept == kept[0]).all()):
        raise ValueError("every sample must keep the same number of tokens")
    # a stable sort puts the kept (False) tokens first, in their order
    order = torch.sort(dropped.to(torch.uint8), dim=1, stable=True).indices
    return order[:, : int(kept[0]) if b else 0]


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The kept tokens (b, K, C) of `x` (b, n, C); `keep` (b, K)."""
    return torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gather_rows(table: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-sample rows (b, K, C) of a shared (n, C) table (a positional or
    rotary embedding), for the kept tokens `keep` (b, K)."""
    return table[keep]


def scatter_tokens(
    kept: torch.Tensor, keep: torch.Tensor, n: int, mask_token: torch.Tensor
) -> torch.Tensor:
    """The full sequence (b, n, C): the `kept` tokens (b, K, C) back at their
    places `keep`, `mask_token` (C,) or (1, 1, C) at every dropped place.
    Gradients reach both the kept tokens and the mask token."""
    b, _, c = kept.shape
    fill = mask_token.reshape(1, 1, c).to(kept.dtype).expand(b, n, c)
    return torch.scatter(fill, 1, keep.unsqueeze(-1).expand(-1, -1, c), kept)


def replace_tokens(
    x: torch.Tensor, dropped: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """`x` (b, n, C) with `mask_token` (C,) in place of the dropped tokens
    (`dropped` (b, n) bool): SimMIM's input."""
    token = mask_token.reshape(1, 1, -1).to(x.dtype)
    return torch.where(dropped.unsqueeze(-1), token, x)


def to_voxels(dropped: torch.Tensor, grid: Sequence[int], token: int = 8) -> torch.Tensor:
    """(b, 1, D, H, W) voxel mask from (b, n) token masks on `grid` (d, h, w):
    each token's value fills its `token`^3 cube."""
    b = dropped.shape[0]
    if dropped.shape[1] != math.prod(grid):
        raise ValueError(f"{dropped.shape[1]} tokens do not fill a {tuple(grid)} grid")
    out = dropped.reshape(b, 1, *grid)
    for dim in (2, 3, 4):
        out = out.repeat_interleave(token, dim=dim)
    return out
