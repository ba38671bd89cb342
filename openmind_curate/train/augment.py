"""Patch augmentation in torch: flips, and rotation + scaling through
`affine_grid` / `grid_sample` (linear for the image, nearest for the masks, so
masks stay {0, 1} and move in lockstep with the image).

The spatial transform is applied with probability ``spatial_prob`` (nnU-Net
uses ~0.2); a patch without it costs only its flips. Parameters come from a
`torch.Generator`, so a sample's augmentation is fixed by its seed.

Conventions. Tensors are (..., D, H, W). `AugParams.matrix` maps an output
voxel's offset from the patch centre to the input offset it samples (voxel
units, (D, H, W) order): ``rotation @ (offset / zoom)``: a zoom above 1
magnifies the content. Rotations are about the patch centre, so the centre
voxel samples the same anatomy.

Two ways in:
- the loader (CPU, per sample in its worker) reads the input region a sample
  needs (`input_size`: larger than the patch when rotated or zoomed out), so
  the corners hold real data;
- `augment_batch` (CPU or GPU, a whole batch on its device) only has the
  patch: what a rotation brings in from outside it is 0 (as the loader's
  padding outside a volume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugParams:
    spatial: bool
    matrix: np.ndarray  # (3, 3) float64, (D, H, W)
    flips: tuple[bool, bool, bool]


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from angles (radians) about axes 0, 1 and 2."""
    mats = []
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[2] @ mats[1] @ mats[0]


def sample_params(config: Any, generator: torch.Generator) -> AugParams:
    """One sample's augmentation, from `config` (`LoaderConfig`: spatial_prob,
    flip_prob, rotation_deg, scale). Always draws the same numbers, so a
    sample's flips do not depend on whether it was rotated."""
    u = torch.rand(8, generator=generator, dtype=torch.float64, device=generator.device)
    u = u.cpu().numpy()  # a CUDA generator works too
    spatial = bool(u[0] < config.spatial_prob)
    flips = tuple(bool(v < config.flip_prob) for v in u[1:4])
    if not spatial:
        return AugParams(False, np.eye(3), flips)  # type: ignore[arg-type]
    rot = math.radians(config.rotation_deg)
    angles = (2 * u[4:7] - 1) * rot
    low, high = config.scale
    zoom = low + (high - low) * u[7]
    return AugParams(True, _rotation(angles) / zoom, flips)  # type: ignore[arg-type]


def input_size(params: AugParams | None, patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """The input region (centred on the patch) a sample needs: the patch
    itself, or the bounding box of its transformed extent plus a voxel of
    margin, with the patch's parity (so the centres coincide exactly)."""
    if params is None or not params.spatial:
        return tuple(patch)  # type: ignore[return-value]
    half = np.abs(params.matrix) @ (np.asarray(patch, float) / 2) + 1
    out = []
    for p, h in zip(patch, half, strict=True):
        need = max(p, math.ceil(2 * h))
        need += (need - p) % 2
        out.append(int(need))
    return tuple(out)  # type: ignore[return-value]


def theta(params: AugParams, out: tuple[int, ...], inp: tuple[int, ...]) -> torch.Tensor:
    """`affine_grid`'s (3, 4) matrix for an output of size `out` sampling an
    input of size `inp` (both centred; align_corners=False)."""
    a = params.matrix * np.asarray(out, float)[None, :] / np.asarray(inp, float)[:, None]
    a = a[::-1, ::-1]  # grid coordinates are (x, y, z) = (W, H, D)
    t = np.zeros((3, 4))
    t[:, :3] = a
    return torch.as_tensor(t, dtype=torch.float32)


def _transform(
    image: torch.Tensor, masks: torch.Tensor | None, thetas: torch.Tensor, out: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(n, C, ...) inputs through `thetas` (n, 3, 4) to (n, C, *out)."""
    grid = F.affine_grid(thetas.to(image.device), [image.shape[0], 1, *out], align_corners=False)
    img = F.grid_sample(
        image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    if masks is None:
        return img, None
    msk = F.grid_sample(
        masks, grid.to(masks.dtype), mode="nearest", padding_mode="zeros", align_corners=False
    )
    return img, msk


def _flip(x: torch.Tensor, flips: tuple[bool, bool, bool]) -> torch.Tensor:
    dims = [x.ndim - 3 + i for i, f in enumerate(flips) if f]
    return torch.flip(x, dims) if dims else x


def apply(
    image: torch.Tensor,
    masks: torch.Tensor | None,
    params: AugParams,
    out: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One sample: `image` (C, *inp) and `masks` (K, *inp) (float), the input
    region of `input_size`, to (C, *out) and (K, *out)."""
    inp = tuple(image.shape[-3:])
    if params.spatial:
        th = theta(params, out, inp)[None]
        img, msk = _transform(image[None], None if masks is None else masks[None], th, out)
        image, masks = img[0], None if msk is None else msk[0]
    elif inp != tuple(out):  # centre crop (the loader reads exactly `out` then)
        sl = tuple(slice((i - o) // 2, (i - o) // 2 + o) for i, o in zip(inp, out, strict=True))
        image = image[(..., *sl)]
        masks = None if masks is None else masks[(..., *sl)]
    image = _flip(image, params.flips)
    masks = None if masks is None else _flip(masks, params.flips)
    return image, masks


MASK_KEYS = ("anat", "anon")


def augment_batch(batch: dict[str, Any], config: Any, generator: torch.Generator) -> dict[str, Any]:
    """Augment a whole batch on its device: ``image`` (b, C, D, H, W) and the
    masks ``anat``/``anon`` (b, 1, D, H, W) present, in lockstep. Parameters
    are drawn per sample, in order, from `generator` (CPU or CUDA, whatever
    the batch's device). Returns a new dict; other entries are passed through."""
    image = batch["image"]
    keys = [k for k in MASK_KEYS if batch.get(k) is not None]
    masks = torch.cat([batch[k].to(image.dtype) for k in keys], 1) if keys else None
    params = [sample_params(config, generator) for _ in range(image.shape[0])]
    out_size = tuple(image.shape[-3:])
    spatial = [i for i, p in enumerate(params) if p.spatial]
    image = image.clone()
    masks = None if masks is None else masks.clone()
    if spatial:
        idx = torch.as_tensor(spatial, device=image.device)
        th = torch.stack([theta(params[i], out_size, out_size) for i in spatial])
        img, msk = _transform(image[idx], None if masks is None else masks[idx], th, out_size)
        image[idx] = img
        if masks is not None:
            masks[idx] = msk
    for i, p in enumerate(params):
        if any(p.flips):
            image[i] = _flip(image[i], p.flips)
            if masks is not None:
                masks[i] = _flip(masks[i], p.flips)
    result = dict(batch)
    result["image"] = image
    for n, k in enumerate(keys):
        result[k] = masks[:, n : n + 1].to(batch[k].dtype)  # type: ignore[index]
    return result
