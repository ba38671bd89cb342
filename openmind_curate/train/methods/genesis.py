"""Models Genesis (Zhou et al.): restore an image from a distorted copy.

Each sample is distorted on the CPU (`prepare`), in the original's order:
random flips (of the image and its target alike), local pixel shuffling, a
non-linear intensity transform (a monotone Bezier curve), then either
in-painting or out-painting (mutually exclusive). The network, dense output
with one channel on either family, restores the undistorted crop; the loss is
the mean squared error over all voxels (times 1 - anon with --anon-aware).

Every probability and parameter is nnssl's (``ModelGenesisTransform`` with
``ModelGenesisConfig``, as used by ``ModelGenesisTrainer``; the appendix gives
none): flip 0.4 (repeated up to 3 times), local shuffle 0.5 with 10000 blocks
of edge 1..edge//10, non-linear transform 0.9 (inverted half of the time),
painting 0.9 of which in-painting 0.2 (up to 5 boxes of edge edge//6..edge//3,
each kept with 0.95) and out-painting 0.8 (a kept box of edge
edge - (3..4)*edge//7, up to 4 more with 0.95), boxes >= 3 voxels from the
border, fills uniform in [0, 1). Optimisation: nnssl's defaults, SGD Nesterov
0.99, lr 1e-2, wd 3e-5 on ResEnc (``AbstractBaseTrainer``); AdamW 3e-4, wd
5e-2, betas (0.9, 0.98), 50 warm-up epochs, drop-path 0.2 on Primus
(``ModelGenesisEvaTrainer``).

Where we differ from nnssl's copy of the original code:

* Intensities. The transforms assume intensities in [0, 1] (the original's
  normalised CT); nnssl applies them to z-scored values, so the curve clamps
  everything outside [0, 1]. The default (``intensity="raw"``) does as nnssl
  does, because nnssl produced the paper's numbers; ``--set
  intensity=minmax`` min-max scales each sample to [0, 1], distorts it and
  scales it back, which keeps the whole intensity range (our option, not
  benchmarked).
* The curve is applied by `apply_curve`, linear-time and within 1e-7 of the
  original's ``np.interp`` at its 100000 curve points. (The original's
  inverted curve pairs the sorted x values with the y values in curve order;
  both coordinates of a cubic Bezier with these control points are monotone,
  so that equals the reversed sorted y values used here.)
* Flips. nnssl flips a (channel, x, y, z) array along an axis drawn from
  {0, 1, 2}, so one draw in three flips the single channel (a no-op) and z
  is never flipped; we draw among the three spatial axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import comb
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train import models
from openmind_curate.train.methods.base import Batch, Method, StepContext, per_sample_mean

#: Separates the Models Genesis draws from other draws of the same sample.
GENESIS_SALT = 0x4D47  # "MG"

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class GenesisParams:
    flip_rate: float = 0.4  # each of up to 3 flips continues with this probability
    local_rate: float = 0.5  # local pixel shuffling
    local_blocks: int = 10000  # shuffled blocks, edges 1 .. edge // 10
    nonlinear_rate: float = 0.9  # Bezier intensity curve
    invert_rate: float = 0.5  # of which an inverted (decreasing) curve
    paint_rate: float = 0.9  # in- or out-painting
    inpaint_rate: float = 0.2  # of which in-painting (the rest out-painting)
    curve_points: int = 100000  # samples of the Bezier curve
    intensity: str = "raw"  # "raw": as nnssl; "minmax": distort in [0, 1] and scale back
    drop_path: float = 0.2  # Primus: stochastic depth (nnssl's ModelGenesisEvaTrainer)


# -- the transforms (pure, NumPy, one 3D volume) -----------------------------------


def _randint(rng: np.random.Generator, lo: int, hi: int) -> int:
    """Python's ``random.randint``: both ends included."""
    return int(rng.integers(lo, hi + 1))


def flip(volumes: list[np.ndarray], rng: np.random.Generator, rate: float) -> list[np.ndarray]:
    """The same random flips of every volume: up to 3, each while a draw < rate."""
    for _ in range(3):
        if rng.random() >= rate:
            break
        axis = int(rng.integers(3))
        volumes = [np.flip(v, axis=axis) for v in volumes]
    return [np.ascontiguousarray(v) for v in volumes]


def shuffle_boxes(shape: tuple[int, ...], rng: np.random.Generator, n: int) -> list[Box]:
    """`n` boxes of edge 1 .. edge // 10 per axis, anywhere in `shape`."""
    top = [max(1, s // 10) for s in shape]
    size = rng.integers(1, np.array(top) + 1, size=(n, 3))
    start = rng.integers(0, np.array(shape) - size + 1)
    stop = (start + size).tolist()
    return [
        (slice(a[0], b[0]), slice(a[1], b[1]), slice(a[2], b[2]))
        for a, b in zip(start.tolist(), stop, strict=True)
    ]


def local_shuffle(x: np.ndarray, boxes: list[Box], rng: np.random.Generator) -> np.ndarray:
    """Each box's voxels of the original `x`, permuted, written in turn (a later
    box overwrites an earlier one where they overlap, as in the original)."""
    out = x.copy()
    for box in boxes:
        window = x[box]
        out[box] = rng.permutation(window.ravel()).reshape(window.shape)
    return out


def bezier_curve(points: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The Bezier curve of control `points` (k, 2) at `n` parameter values,
    running from the last control point (t = 0) to the first (t = 1)."""
    k = len(points) - 1
    t = np.linspace(0.0, 1.0, n)
    basis = np.array([comb(k, i) * t ** (k - i) * (1 - t) ** i for i in range(k + 1)])
    return points[:, 0] @ basis, points[:, 1] @ basis


def intensity_curve(
    rng: np.random.Generator, n: int, invert: bool
) -> tuple[np.ndarray, np.ndarray]:
    """A monotone curve on [0, 1] through (0, 0) and (1, 1) (inverted: (0, 1)
    and (1, 0)), bent by two control points drawn uniformly in [0, 1)^2."""
    inner = rng.random((2, 2))
    points = np.array([[0.0, 0.0], inner[0], inner[1], [1.0, 1.0]])
    xs, ys = bezier_curve(points, n)
    xs, ys = np.sort(xs), np.sort(ys)
    return xs, (ys[::-1] if invert else ys)


def apply_curve(x: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """``np.interp(x, xs, ys)`` (values outside [0, 1] clamped to the ends) in
    linear time: the curve is first resampled on a uniform grid of len(xs)
    points, so a voxel's neighbours are found by arithmetic, not a search."""
    n = len(xs)
    grid = np.interp(np.linspace(0.0, 1.0, n), xs, ys)
    pos = np.clip(x, 0.0, 1.0) * (n - 1)
    i = np.minimum(pos.astype(np.int64), n - 2)
    frac = pos - i
    return (grid[i] * (1.0 - frac) + grid[i + 1] * frac).astype(x.dtype)


def inpaint_boxes(shape: tuple[int, ...], rng: np.random.Generator) -> list[Box]:
    """Up to 5 boxes of edge edge//6 .. edge//3, each kept while a draw < 0.95."""
    boxes = []
    while len(boxes) < 5 and rng.random() < 0.95:
        size = [_randint(rng, s // 6, s // 3) for s in shape]
        boxes.append(_place(shape, size, rng))
    return boxes


def outpaint_boxes(shape: tuple[int, ...], rng: np.random.Generator) -> list[Box]:
    """One box of edge edge - (3..4)*edge//7, then up to 4 more while a draw < 0.95."""
    boxes: list[Box] = []
    while not boxes or (len(boxes) < 5 and rng.random() < 0.95):
        size = [s - _randint(rng, 3 * s // 7, 4 * s // 7) for s in shape]
        boxes.append(_place(shape, size, rng))
    return boxes


def _place(shape: tuple[int, ...], size: list[int], rng: np.random.Generator) -> Box:
    """A box of `size` at least 3 voxels from every border (the original's margin)."""
    start = [_randint(rng, 3, s - e - 3) for s, e in zip(shape, size, strict=True)]
    return tuple(slice(a, a + e) for a, e in zip(start, size, strict=True))


def inpaint(x: np.ndarray, boxes: list[Box], rng: np.random.Generator) -> np.ndarray:
    """`x` with each box filled with uniform noise in [0, 1)."""
    out = x.copy()
    for box in boxes:
        out[box] = rng.random(out[box].shape)
    return out


def outpaint(x: np.ndarray, boxes: list[Box], rng: np.random.Generator) -> np.ndarray:
    """Uniform noise in [0, 1) everywhere but the boxes, which keep `x`."""
    out = rng.random(x.shape).astype(x.dtype)
    for box in boxes:
        out[box] = x[box]
    return out


def distort(x: np.ndarray, rng: np.random.Generator, p: GenesisParams) -> np.ndarray:
    """The Models Genesis input for a volume `x` already in [0, 1] (flips aside)."""
    if rng.random() < p.local_rate:
        x = local_shuffle(x, shuffle_boxes(x.shape, rng, p.local_blocks), rng)
    if rng.random() < p.nonlinear_rate:
        xs, ys = intensity_curve(rng, p.curve_points, rng.random() < p.invert_rate)
        x = apply_curve(x, xs, ys)
    if rng.random() < p.paint_rate:
        if rng.random() < p.inpaint_rate:
            x = inpaint(x, inpaint_boxes(x.shape, rng), rng)
        else:
            x = outpaint(x, outpaint_boxes(x.shape, rng), rng)
    return x


def genesis_sample(
    volumes: list[np.ndarray], rng: np.random.Generator, p: GenesisParams
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(input, flipped volumes) for one sample: `volumes[0]` is the image, the
    rest (its masks) are flipped with it."""
    volumes = flip(volumes, rng, p.flip_rate)
    image = volumes[0]
    if p.intensity == "raw":
        return distort(image, rng, p).astype(np.float32), volumes
    lo, hi = float(image.min()), float(image.max())
    scale = hi - lo if hi > lo else 1.0
    out = distort((image - lo) / scale, rng, p)
    return (out * scale + lo).astype(np.float32), volumes


# -- the method ---------------------------------------------------------------------


class ModelsGenesis(Method):
    """Restore the original from its Models Genesis distortion (see the module docstring)."""

    name = "models-genesis"
    Params = GenesisParams
    families = ("resenc", "primus")
    reconstruction = True

    def check(self) -> None:
        p = self.params
        for field in (
            "flip_rate",
            "local_rate",
            "nonlinear_rate",
            "invert_rate",
            "paint_rate",
            "inpaint_rate",
        ):
            if not 0.0 <= getattr(p, field) <= 1.0:
                raise InputError(f"--set {field}={getattr(p, field)}: must be in [0, 1]")
        if p.local_blocks < 0 or p.curve_points < 2:
            raise InputError("--set local_blocks must be >= 0 and curve_points >= 2")
        if p.intensity not in ("minmax", "raw"):
            raise InputError(f"--set intensity={p.intensity}: choose minmax or raw")
        if self.patch < 14:
            raise InputError(
                f"models-genesis needs a patch of at least 14 voxels, not {self.patch}"
            )

    def build(self) -> nn.Module:
        drop = self.params.drop_path if models.family(self.arch) == "primus" else 0.0
        return models.build(self.arch, patch=self.patch, drop_path=drop)

    def prepare(self, batch: Batch, ctx: StepContext) -> Batch:
        keys = [k for k in ("image", "anat", "anon") if k in batch]
        stacks: dict[str, list[np.ndarray]] = {k: [] for k in [*keys, "input"]}
        for i, index in enumerate(batch["index"]):
            volumes = [batch[k][i, 0].numpy() for k in keys]
            inp, volumes = genesis_sample(volumes, ctx.rng(index, GENESIS_SALT), self.params)
            stacks["input"].append(inp)
            for k, v in zip(keys, volumes, strict=True):
                stacks[k].append(v)
        out = dict(batch)
        for k, vs in stacks.items():
            out[k] = torch.from_numpy(np.stack(vs)).unsqueeze(1).float()
        return out

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        pred = net(batch["input"]).float()
        err = (pred - batch["image"].float()) ** 2
        weight = 1.0 - batch["anon"].float() if ctx.anon_aware else torch.ones_like(err[:, :1])
        return per_sample_mean(err, weight)
