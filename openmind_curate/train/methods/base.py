"""The contract between the one trainer loop and a pre-training method.

The loop (`train.trainer`) owns everything a method should not repeat: the
optimizer and its schedule, AMP, gradient accumulation, DDP, signals,
checkpoints and bit-exact resume, logs, and export to both checkpoint
layouts. A `Method` owns what makes it a method: the network it trains (the
backbone plus any heads), the inputs and targets it derives from a batch of
crops, and its loss. Hyper-parameters are a dataclass (`Method.Params`); a
variant is a set of overrides (`curate train --set name=value`), never a
subclass.

Randomness. Whatever a method draws for a sample (a mask, a transform, a
second crop) comes from `StepContext.generator` / `StepContext.rng`, seeded
by (seed, step, global sample index, stream): a sample's draw is the same on
any rank, for any number of ranks, and after a resume. Global RNGs are never
used (batchgenerators' transforms draw from them, so a method using them
seeds them per sample first: `seeded_globals`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train.mae import MASK_STREAM, VAL_STREAM, mask_seed

Batch = dict[str, Any]

__all__ = [
    "MASK_STREAM",
    "VAL_STREAM",
    "Batch",
    "Method",
    "Recipe",
    "StepContext",
    "parse_params",
    "per_sample_mean",
    "seeded_globals",
]


@dataclass(frozen=True)
class Recipe:
    """A method's optimisation defaults on one architecture family (appendix D
    unless `source` says otherwise). ``curate train`` options override them."""

    optimizer: str = "sgd"  # "sgd" (Nesterov) | "adamw"
    lr: float = 1e-2
    weight_decay: float = 3e-5
    momentum: float = 0.99  # SGD
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW
    eps: float = 1e-8  # AdamW
    warmup_epochs: int = 0  # linear warm-up (per epoch), then PolyLR
    grad_clip: float = 12.0  # max gradient norm; 0 = off
    patch: int = 160
    global_batch: int = 8
    source: str = "the paper, appendix D"


#: ResEnc-L's recipe (SGD Nesterov 0.99, lr 1e-2, wd 3e-5; nnssl clips the
#: gradient norm at 12) and Primus-M's (AdamW 3e-4, wd 5e-2, betas (0.9,
#: 0.98), eps 1e-8, 50 warm-up epochs; nnssl's Eva trainers clip at 1).
RESENC_RECIPE = Recipe()
PRIMUS_RECIPE = Recipe(
    optimizer="adamw", lr=3e-4, weight_decay=5e-2, warmup_epochs=50, grad_clip=1.0
)


@dataclass(frozen=True)
class StepContext:
    """What a method's loss may know about the step besides the batch."""

    step: int
    seed: int
    device: torch.device
    anon_aware: bool = False
    stream: int = MASK_STREAM  # VAL_STREAM for the fixed validation draws
    rank: int = 0
    world: int = 1

    def seed_of(self, index: int, salt: int = 0) -> int:
        """A 63-bit seed from (seed, step, global index, stream + salt)."""
        return mask_seed(self.seed, self.step, int(index), self.stream + salt)

    def generator(self, index: int, salt: int = 0) -> torch.Generator:
        """A CPU torch generator for global sample `index` (`salt` separates draws)."""
        return torch.Generator().manual_seed(self.seed_of(index, salt))

    def rng(self, index: int, salt: int = 0) -> np.random.Generator:
        """A NumPy generator for global sample `index`."""
        return np.random.default_rng(self.seed_of(index, salt))


class Method:
    """One pre-training method. Subclasses set the class attributes and
    implement `build` and `loss`; `crop`, `prepare` and `export` have defaults."""

    name: ClassVar[str]  # its one-line help is in `registry.METHODS`
    #: The method's own hyper-parameters (a frozen dataclass, defaults = the paper's).
    Params: ClassVar[type]
    #: Architecture families it trains ("resenc", "primus").
    families: ClassVar[tuple[str, ...]] = ("resenc", "primus")
    #: A reconstruction loss: `--anon-aware` drops the defaced voxels from it.
    reconstruction: ClassVar[bool] = False
    #: Needs negatives from the same step: no gradient accumulation (under DDP
    #: the projections are gathered over the ranks instead).
    contrastive: ClassVar[bool] = False
    #: The loader centres each crop on its volume instead of placing it at random.
    centre_crop: ClassVar[bool] = False
    #: `prepare` pairs sample g with sample g ^ 1 of the rank's batch, so a
    #: rank's batch must be even under DDP (Volume Fusion, SwinUNETR).
    pairs_samples: ClassVar[bool] = False

    def __init__(self, params: Any, arch: str, patch: int) -> None:
        self.params, self.arch, self.patch = params, arch, patch

    # -- defaults ----------------------------------------------------------------

    @classmethod
    def recipe(cls, family: str) -> Recipe:
        """The optimisation defaults for `family`."""
        return PRIMUS_RECIPE if family == "primus" else RESENC_RECIPE

    def check(self) -> None:
        """Refuse parameters that cannot work (InputError naming the option)."""

    def crop(self) -> tuple[int, int, int]:
        """The crop the loader cuts per sample (default: the patch)."""
        return (self.patch,) * 3

    def voxels_per_sample(self) -> int:
        """Voxels the network sees per sample (default: one patch), which
        the GPU memory rule scales by (`trainer.auto_accumulate`)."""
        return self.patch**3

    # -- the work ----------------------------------------------------------------

    def build(self) -> nn.Module:
        """The network trained (backbone and heads), freshly initialised."""
        raise NotImplementedError

    def prepare(self, batch: Batch, ctx: StepContext) -> Batch:
        """CPU-side work on the loader's batch before it moves to the device
        (default: none). Must be a pure function of the batch and `ctx`."""
        return batch

    def loss(self, net: nn.Module, batch: Batch, ctx: StepContext) -> torch.Tensor:
        """The loss of one (micro-)batch on the device: the mean over its
        samples of each sample's own loss, so that accumulation and DDP give
        the whole batch's gradient (contrastive methods: over the batch).

        `net` is the network as trained (DDP-wrapped, compiled): call it as
        ``net(...)`` exactly once, so DDP sees one forward, and compute the
        loss from what its ``forward`` returns. Reaching into its modules
        (``models.unwrap(net).encoder(x)``) would bypass DDP's gradient sync.
        A method whose network needs several inputs or outputs builds a small
        wrapper module whose ``forward`` takes and returns them all."""
        raise NotImplementedError

    def export(self, net: nn.Module) -> nn.Module | None:
        """The part of `net` both checkpoint layouts carry: a dynamic-network-
        architectures network (or one with its ``encoder``); heads are never
        exported. Default: `net` itself. None: nothing to export (a
        fine-tuning task, whose run writes its own model file)."""
        return net

    def describe(self) -> dict[str, Any]:
        """The method's parameters for the encoder's metadata."""
        return dataclasses.asdict(self.params)


def per_sample_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each sample's weighted mean of `values` (weights broadcast), then the
    mean over samples; a sample with no weight counts 0 (never NaN)."""
    weight = weight.to(values.dtype).expand_as(values)
    dims = tuple(range(1, values.dim()))
    total = (values * weight).sum(dim=dims)
    count = weight.sum(dim=dims)
    return (total / count.clamp(min=1.0)).mean()


@contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global CPU generators for code that
    draws from them (batchgenerators' transforms), restoring them after.
    CUDA generators are left alone (`torch.manual_seed` would reseed them)."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.random.get_rng_state()  # noqa: NPY002
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)  # noqa: NPY002
        torch.random.set_rng_state(th)


def _coerce(value: str, default: Any, name: str) -> Any:
    """`value` (text from the command line) as the type of `default`."""
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
            kind = type(default[0]) if default else float
            return tuple(kind(p) for p in parts)
        return value
    except ValueError:
        raise InputError(f"--set {name}={value}: not a {type(default).__name__}") from None


def parse_params(params_type: type, overrides: dict[str, Any] | Sequence[str], method: str) -> Any:
    """The method's parameters: its defaults with `overrides` applied
    (``{"name": value}``, or ``["name=value", ...]`` from the command line).
    An unknown name is refused, listing the known ones."""
    defaults = params_type()
    known = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
    if not isinstance(overrides, dict):
        pairs = {}
        for item in overrides:
            name, sep, value = str(item).partition("=")
            if not sep:
                raise InputError(f"--set {item!r}: write name=value")
            pairs[name.strip().replace("-", "_")] = value.strip()
        overrides = pairs
    out = {}
    for name, value in overrides.items():
        if name not in known:
            names = ", ".join(sorted(known)) or "none"
            raise InputError(f"--set {name}: {method} has no such parameter (it has: {names})")
        out[name] = _coerce(value, known[name], name) if isinstance(value, str) else value
        if isinstance(known[name], tuple) and isinstance(out[name], list):
            out[name] = tuple(out[name])
    return dataclasses.replace(defaults, **out)
