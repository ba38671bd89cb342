"""The one pre-training loop: any method, single process or DDP under torchrun, exact resume.

The method (`train.methods`, chosen by ``TrainConfig.method``) builds the
network and computes the loss; this loop does the rest for every method:
the optimizer and schedule, AMP, accumulation, DDP, signals, checkpoints,
logs, validation and export. Options left unset (None) take the method's
recipe for the architecture's family (`methods.base.Recipe`): on ResEnc-L
the paper's SGD with Nesterov momentum 0.99, lr 1e-2, weight decay 3e-5; on
Primus-M AdamW at 3e-4, wd 5e-2, with 50 warm-up epochs. The schedule is a
linear warm-up then PolyLR (exponent 0.9), both per epoch as nnssl does, or,
for classification fine-tuning, a warm-up then cosine annealing (`EpochLR`);
the gradient norm is clipped at 12 (nnssl); 1000 epochs of 250 steps. A
method that is a fine-tuning task (`finetune.classification`) registers
itself (`registry.register`) and trains through the same loop.

The data come through an abstraction, so tests pass an in-memory fake and the
CLI the store's loader: `batches(step, rank, world) -> dict` (the loader
contract's `sample_batch`, partially applied: a dict with `image` (b,1,p,p,p),
`anon` (b,1,p,p,p) and `index`, the global sample indices; the crop is the
method's `crop()`), or `stream(start,
rank, world) -> Iterator[dict]` (the same batches from `make_loader`, with
worker processes). A batch is a pure function of its step, and masks are
seeded by (seed, step, global sample index): a resumed run sees the very
batches and masks it would have seen, and the checkpoint carries every other
state (model, optimizer, scheduler, scaler, RNGs), so a resume on the CPU is
bit-exact.

DDP: when WORLD_SIZE > 1 (torchrun) the process group starts from the
environment (gloo on the CPU, NCCL on GPUs); `global_batch` is split evenly
over the ranks; rank 0 logs, validates and writes checkpoints.

Gradient accumulation (`accumulate` N): each rank's share of the global batch
is cut into N equal micro-batches (slices of the step's batch, so the batch
stays a pure function of the step), each micro-batch's loss is weighted by its
share of the rank's samples (1/N) and back-propagated, and one optimizer step
follows. The MAE loss averages each sample over its own masked voxels, then
the samples (`mae.mae_loss`), and the network normalizes per sample
(InstanceNorm), so the accumulated gradient is the un-accumulated one up to
float rounding; N = 1 is the plain step, bit for bit. Under DDP only the last
micro-batch all-reduces. 0 means auto (`auto_accumulate`). Contrastive
methods need every negative of the step in one loss, so they take no
accumulation: under DDP they gather the projections over the ranks instead,
and where the batch does not fit a GPU, the run takes the largest global
batch that does and says so in the log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from openmind_curate.atomic import atomic_path, atomic_write_text
from openmind_curate.errors import InputError
from openmind_curate.train import models, nnssl
from openmind_curate.train.checkpoint import (
    CheckpointError,
    config_hash,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from openmind_curate.train.mae import VAL_STREAM
from openmind_curate.train.methods import registry
from openmind_curate.train.methods.base import Method, Recipe, StepContext, parse_params

Batch = dict[str, Any]
BatchFn = Callable[[int, int, int], Batch]
StreamFn = Callable[[int, int, int], Iterator[Batch]]

AMP_MODES = ("none", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
#: A batch entry set (True) when the method's `prepare` already ran on it.
PREPARED = "prepared"
#: Separates the per-step seed of torch's global generators from other draws.
STEP_SALT = 0x5354  # "ST"
#: TrainConfig options a method's `Recipe` supplies when left None.
RECIPE_FIELDS = (
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "betas",
    "eps",
    "warmup_epochs",
    "grad_clip",
    "patch",
    "global_batch",
)
#: Options that do not change the trajectory: a resume may change them.
UNHASHED = frozenset(
    {
        "out",
        "resume",
        "stop_after",
        "val_every",
        "checkpoint_every",
        "progress",
        "compile",
        "device",
        "accumulate",  # the gradient is the same up to float rounding
    }
)

#: Per-GPU memory that `auto_accumulate` assumes, in GiB: (one sample's
#: activations at a 160^3 patch under bf16 autocast, what does not grow with
#: the batch: weights, gradients, momentum, cuDNN workspace). UNMEASURED: no
#: GPU has run this code yet (benchmarks/train_gpu.py's batch-8 probe measures
#: it). ResEnc-L's values are conservative guesses: nnU-Net plans its ResEnc-L
#: preset for a 24 GB card at batch 2 (about 12 GB a sample with its own patch
#: size), rounded up to 16; 102 M float32 parameters are 0.4 GB each for the
#: weights, gradients and momentum, rounded up to 4 with the workspace. An
#: architecture not listed is assumed to fit (N = 1).
ACCUMULATE_COST_GIB: dict[str, tuple[float, float]] = {"resenc-l": (16.0, 4.0)}


@dataclass
class TrainConfig:
    """One run. None means the method's default for the architecture
    (`resolved`); `params` overrides the method's own parameters by name
    (``curate train --set name=value``)."""

    out: str
    arch: str = "resenc-l"
    method: str = "mae"
    params: dict[str, Any] = field(default_factory=dict)
    patch: int | None = None
    global_batch: int | None = None
    epochs: int = 1000
    iters_per_epoch: int = 250
    optimizer: str | None = None  # "sgd" (Nesterov) | "adamw"
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = None
    warmup_epochs: int | None = None
    poly_exponent: float = 0.9
    schedule: str = "poly"  # "poly" (pre-training) | "cosine" (classification); `EpochLR`
    grad_clip: float | None = None  # max gradient norm (nnssl: 12 ResEnc, 1 Primus); 0 = off
    anon_aware: bool = False
    amp: str = "none"  # none | bf16 | fp16 (fp16 with a GradScaler, CUDA only)
    compile: str = ""  # "" or a torch.compile backend ("inductor")
    seed: int = 0
    val_every: int = 1  # epochs between validations (0: only at the end)
    checkpoint_every: int = 0  # steps between checkpoints (0: at each epoch's end); and at the end
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many steps in all
    spacing: tuple[float, float, float] | str = (1.0, 1.0, 1.0)
    normalization: str = "zscore"
    data: str = ""  # a fingerprint of the training data (part of the hash)
    progress: bool = True
    device: str = ""  # "" = cuda:LOCAL_RANK when CUDA is available, else cpu
    accumulate: int = 0  # micro-batches per optimizer step; 0 = auto (auto_accumulate)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.iters_per_epoch

    def hashed(self) -> dict[str, Any]:
        """The options that shape the trajectory (JSON round-tripped). The
        default schedule is left out, so checkpoints from before the option
        existed still resume."""
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in UNHASHED}
        if kept["schedule"] == "poly":
            del kept["schedule"]
        return json.loads(json.dumps(kept, default=str))

    def recipe(self) -> Recipe:
        """The method's defaults for this architecture's family."""
        return registry.method_class(self.method).recipe(models.family(self.arch))

    def resolved(self) -> TrainConfig:
        """Every None filled from the method's recipe and `params` completed
        with the method's defaults (unknown names refused). The recipe's
        warm-up is cut to the run's epochs (a short run warms up throughout);
        one given explicitly is checked instead. Idempotent."""
        cls = registry.method_class(self.method)
        recipe = self.recipe()
        filled = {
            name: getattr(recipe, name) for name in RECIPE_FIELDS if getattr(self, name) is None
        }
        if "warmup_epochs" in filled:
            filled["warmup_epochs"] = min(filled["warmup_epochs"], self.epochs)
        params = dataclasses.asdict(parse_params(cls.Params, dict(self.params), self.method))
        return dataclasses.replace(self, params=params, **filled)

    def method_object(self) -> Method:
        """The method of this (resolved) config, its parameters applied."""
        cls = registry.method_class(self.method)
        params = parse_params(cls.Params, dict(self.params), self.method)
        return cls(params, self.arch, int(self.patch or self.recipe().patch))

    def check(self) -> None:
        """Refuse a config that cannot run (after `resolved`)."""
        models.arch_config(self.arch)
        cls = registry.method_class(self.method)
        fam = models.family(self.arch)
        if fam not in cls.families:
            raise InputError(
                f"--method {self.method} does not train {self.arch} ({fam}); it trains "
                + " and ".join(cls.families)
            )
        unset = [name for name in RECIPE_FIELDS if getattr(self, name) is None]
        if unset:
            raise ValueError(f"unresolved options {unset}: call resolved() first")
        div = models.arch_config(self.arch).divisor
        if self.patch < div or self.patch % div:
            raise InputError(f"--patch {self.patch}: {self.arch} needs a multiple of {div}")
        for name in ("global_batch", "epochs", "iters_per_epoch"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.accumulate < 0:
            raise InputError(f"--accumulate must be >= 1 (or auto), got {self.accumulate}")
        if cls.contrastive and self.accumulate > 1:
            raise InputError(
                f"--method {self.method} is contrastive: its negatives come from the step's "
                "batch, which accumulation does not give; use --accumulate 1 (or auto) and "
                "more GPUs, or a smaller --batch"
            )
        if self.anon_aware and not cls.reconstruction:
            raise InputError(
                f"--anon-aware drops defaced voxels from a reconstruction loss; "
                f"--method {self.method} has none"
            )
        if self.amp not in AMP_MODES:
            raise InputError(f"--amp {self.amp!r}: choose one of {', '.join(AMP_MODES)}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer {self.optimizer!r}: choose one of {OPTIMIZERS}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= max(self.epochs, 1) + 1:
            raise InputError(f"--warmup-epochs {self.warmup_epochs}: give 0 .. --epochs")
        self.method_object().check()


@dataclass
class RunResult:
    out: Path
    steps: int  # steps done in all (including those before a resume)
    complete: bool
    loss: float | None  # the last step's loss
    val_loss: float | None  # the last validation loss
    seconds: float  # this process's training time
    resumed_from: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    signal: int | None = None  # SIGINT/SIGTERM that stopped the run (checkpoint written)
    accumulate: int = 1  # the micro-batches per step this run used


SCHEDULES = ("poly", "cosine")


class EpochLR(LRScheduler):
    """The learning rate as a function of the epoch, stepped once per
    training step but changing at epoch starts (e = step // iters_per_epoch,
    W warm-up epochs, E epochs in all):

    - ``poly`` (nnssl's, pre-training): a linear warm-up, base * (e + 1) / W
      (nnssl's `Lin_incr_LRScheduler`), then base * (1 - e' / (E - W)) **
      exponent with e' = e - W (`PolyLRScheduler_offset`; without warm-up,
      its PolyLR);
    - ``cosine`` (the image classification framework's
      `CosineAnnealingLR_Warmstart`, classification fine-tuning): a linear
      warm-up, base * (e + 1) / (W + 1), then cosine annealing to 0, base *
      (1 + cos(pi * e' / (E - W))) / 2. The framework's recursive update
      equals this closed form (eta_min 0) for every epoch of a run.
    """

    def __init__(
        self,
        optimizer,
        epochs: int,
        iters_per_epoch: int,
        exponent: float = 0.9,
        last_epoch: int = -1,
        warmup: int = 0,
        shape: str = "poly",
    ) -> None:
        if shape not in SCHEDULES:
            raise InputError(f"schedule {shape!r}: choose one of {', '.join(SCHEDULES)}")
        self.epochs, self.iters_per_epoch, self.exponent = epochs, iters_per_epoch, exponent
        self.warmup, self.shape = warmup, shape
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        epoch = max(step, 0) // self.iters_per_epoch
        cosine = self.shape == "cosine"
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1 if cosine else self.warmup)
        span = max(self.epochs - self.warmup, 1)
        done = min(epoch - self.warmup, span) / span
        if cosine:
            return 0.5 * (1.0 + math.cos(math.pi * done))
        return (1.0 - done) ** self.exponent

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


# --- distributed -----------------------------------------------------------------


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False


def _dist_setup() -> _Dist:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    created = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)  # env:// (MASTER_ADDR, RANK, ...)
        created = True
    return _Dist(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        created=created,
    )


def _ddp(net: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DDP wrapper inside `net` (under torch.compile), if any."""
    while True:
        if isinstance(net, nn.parallel.DistributedDataParallel):
            return net
        if not hasattr(net, "_orig_mod"):
            return None
        net = net._orig_mod


def _sync_unless(net: nn.Module, skip: bool):
    """DDP's `no_sync` while `skip` (a micro-batch that is not the step's last):
    the gradients add up locally and the last backward all-reduces them."""
    ddp = _ddp(net)
    return ddp.no_sync() if skip and ddp is not None else nullcontext()


def _sample_cost(arch: str, voxels: float) -> tuple[float, float] | None:
    """(bytes a sample, fixed bytes) by the `ACCUMULATE_COST_GIB` rule for a
    sample of `voxels` voxels seen by the network; None: not in the table."""
    cost = ACCUMULATE_COST_GIB.get(arch)
    if cost is None:
        return None
    per_sample, fixed = (c * 2**30 for c in cost)
    return per_sample * voxels / 160**3, fixed


def auto_accumulate(
    per_rank_batch: int, free_bytes: int, arch: str, patch: int, voxels: float | None = None
) -> int:
    """The fewest micro-batches N (a divisor of `per_rank_batch`) whose
    micro-batch fits 90% of `free_bytes` on the rank's GPU, by the
    `ACCUMULATE_COST_GIB` rule: the fixed cost plus the per-sample cost,
    scaled by the voxels a sample shows the network (`voxels`, default
    patch^3) over 160^3, times the micro-batch. One sample per micro-batch
    when nothing fits (the run then tries it)."""
    cost = _sample_cost(arch, patch**3 if voxels is None else voxels)
    if cost is None:
        return 1
    per_sample, fixed = cost
    usable = 0.9 * free_bytes - fixed
    for n in range(1, per_rank_batch + 1):
        if per_rank_batch % n == 0 and (per_rank_batch // n) * per_sample <= usable:
            return n
    return per_rank_batch


def fits_per_rank(config: TrainConfig, per_rank: int, free: int | None = None) -> int:
    """The largest per-rank batch (at most `per_rank`, at least 1) that the
    `ACCUMULATE_COST_GIB` rule fits in `free` bytes (default: the current
    GPU's free memory), a sample costing what the method shows the network
    (`Method.voxels_per_sample`). Even for methods that pair samples."""
    method = config.method_object()
    cost = _sample_cost(config.arch, method.voxels_per_sample())
    if cost is None:
        return per_rank
    if free is None:
        free = torch.cuda.mem_get_info()[0]
    per_sample, fixed = cost
    fit = max(1, min(per_rank, int((0.9 * free - fixed) // per_sample)))
    if method.pairs_samples and fit < per_rank:
        fit = max(2, fit - fit % 2)
    return fit


def _accumulate(config: TrainConfig, ctx: _Dist, device: torch.device) -> int:
    """`config.accumulate`, auto resolved (1 on a CPU), checked to divide the rank's batch."""
    per_rank = config.global_batch // ctx.world
    method = config.method_object()
    n = config.accumulate
    if n == 0:
        n = 1
        if device.type == "cuda" and not method.contrastive:  # its batch was fitted instead
            free = torch.cuda.mem_get_info(device)[0]
            voxels = method.voxels_per_sample()
            n = auto_accumulate(per_rank, free, config.arch, config.patch, voxels)
    if per_rank % n:
        raise InputError(
            f"--accumulate {n} does not divide the batch of each rank ({per_rank}: "
            f"--batch {config.global_batch} over {ctx.world} rank(s))"
        )
    return n


def _mean_over_ranks(value: torch.Tensor, ctx: _Dist) -> torch.Tensor:
    if ctx.world == 1:
        return value
    import torch.distributed as dist

    value = value.detach().clone()
    dist.all_reduce(value)
    return value / ctx.world


# --- logging ---------------------------------------------------------------------


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                break
    return out


def plot_losses(records: list[dict[str, Any]], path: Path, method: str = "mae") -> Path | None:
    """The loss curve (per step, per-epoch mean, validation) as a PNG."""
    if not records:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.array([r["step"] for r in records])
    losses = np.array([r["loss"] for r in records], dtype=float)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, losses, lw=0.5, alpha=0.4, color="tab:blue", label="train (step)")
    epochs = np.array([r["epoch"] for r in records])
    ends = [int(steps[epochs == e].max()) for e in np.unique(epochs)]
    means = [float(losses[epochs == e].mean()) for e in np.unique(epochs)]
    ax.plot(ends, means, lw=1.5, color="tab:blue", label="train (epoch mean)")
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    if val:
        vs, vl = zip(*val, strict=True)
        ax.plot(vs, vl, "o-", color="tab:orange", ms=3, label="validation")
    if np.all(losses > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{method} loss")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


class _Progress:
    """One line: rewritten in place on a terminal, printed per epoch otherwise."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.tty = enabled and sys.stderr.isatty()
        self.t0, self.n = time.perf_counter(), 0

    def update(self, rec: dict[str, Any], epochs: int, epoch_end: bool) -> None:
        if not self.enabled:
            return
        self.n += 1
        rate = self.n / max(time.perf_counter() - self.t0, 1e-9)
        val = f" val {rec['val_loss']:.4g}" if rec.get("val_loss") is not None else ""
        line = (
            f"epoch {rec['epoch'] + 1}/{epochs} step {rec['step'] + 1}/{self.total} "
            f"loss {rec['loss']:.4g}{val} lr {rec['lr']:.3g} {rate:.2f} steps/s"
        )
        if self.tty:
            sys.stderr.write("\r" + line.ljust(100)[:120] + ("\n" if epoch_end and val else ""))
            sys.stderr.flush()
        elif epoch_end:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


# --- the loop --------------------------------------------------------------------


def _device(config: TrainConfig, ctx: _Dist) -> torch.device:
    if config.device:
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def _autocast(config: TrainConfig, device: torch.device):
    if config.amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.to(device, non_blocking=True)


def _on(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor on `device`."""
    return {k: _to(v, device) if torch.is_tensor(v) else v for k, v in batch.items()}


@dataclass(frozen=True)
class PrepareInWorkers:
    """The method's `prepare` as the loader's workers call it, (batch, step)
    -> batch, marked `PREPARED` (picklable: a method is plain data)."""

    method: Method
    seed: int
    anon_aware: bool
    rank: int = 0
    world: int = 1

    def __call__(self, batch: Batch, step: int) -> Batch:
        ctx = StepContext(
            step, self.seed, torch.device("cpu"), self.anon_aware, rank=self.rank, world=self.world
        )
        return {**self.method.prepare(batch, ctx), PREPARED: True}


def _part(batch: Batch, part: slice) -> Batch:
    """Samples `part` of a batch (tensors and lists alike)."""
    return {
        k: v[part] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in batch.items()
    }


def validate(
    model: nn.Module,
    val: list[Batch],
    config: TrainConfig,
    device: torch.device,
    method: Method | None = None,
    chunk: int = 0,
) -> float:
    """The method's mean loss over fixed validation batches, with the
    validation stream's fixed draws (masks, transforms). `chunk`: forward at
    most this many samples at once (rank 0 validates a whole global batch,
    which under DDP is more than a rank trains on); contrastive methods keep
    the whole batch (their negatives)."""
    method = method or config.method_object()
    net = models.unwrap(model)
    was_training = net.training
    net.eval()
    losses = []
    offset = 0
    ctx = StepContext(0, config.seed, device, config.anon_aware, stream=VAL_STREAM)
    with torch.no_grad():
        for batch in val:
            n = len(batch["index"])
            batch = {**batch, "index": list(range(offset, offset + n))}
            offset += n
            batch = _on(method.prepare(batch, ctx), device)
            size = n if method.contrastive or chunk <= 0 else chunk
            for start in range(0, n, size):
                with _autocast(config, device):
                    part = _part(batch, slice(start, start + size))
                    losses.append(float(method.loss(net, part, ctx)))
    net.train(was_training)
    return float(np.mean(losses)) if losses else float("nan")


def _freeze_unused_heads(model: nn.Module) -> None:
    """Without deep supervision the decoder uses only its last segmentation layer;
    the others never get a gradient, which DDP (find_unused_parameters=False)
    would wait for. They are frozen (SGD skips them either way)."""
    heads = getattr(getattr(model, "decoder", None), "seg_layers", None)
    if heads is not None and not getattr(model.decoder, "deep_supervision", False):
        for head in list(heads)[:-1]:
            head.requires_grad_(False)


class _StopOnSignal:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the end of the step and
    stops. Only in a single process's main thread (under torchrun the ranks
    would stop at different steps)."""

    def __init__(self, active: bool) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if self.active:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@contextmanager
def process_group() -> Iterator[_Dist]:
    """This process's rank and world; under torchrun (WORLD_SIZE > 1) the
    process group, started here unless it already is, and ended here if it
    was started here. A caller running several `train` calls in one job
    (the folds of classification) holds it around them, so the group starts
    once."""
    ctx = _dist_setup()
    try:
        yield ctx
    finally:
        if ctx.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def barrier(ctx: _Dist) -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()


def train(
    config: TrainConfig,
    batches: BatchFn | None = None,
    val: list[Batch] | None = None,
    *,
    stream: StreamFn | None = None,
    after_backward: Callable[[int, nn.Module], None] | None = None,
) -> RunResult:
    """Run (or resume) pre-training; see the module docstring."""
    if (batches is None) == (stream is None):
        raise ValueError("give exactly one of `batches` and `stream`")
    config = config.resolved()
    config.check()
    with process_group() as ctx:
        return _train(config, batches, val, stream, after_backward, ctx)


@dataclass
class _Run:
    """One process's training state: what a step changes and a checkpoint keeps."""

    config: TrainConfig
    ctx: _Dist
    device: torch.device
    hashed: dict[str, Any]
    chash: str
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: EpochLR
    method: Method
    scaler: Any = None  # a GradScaler with --amp fp16
    net: nn.Module | None = None  # the model as trained (DDP, compiled)

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def main(self) -> bool:
        return self.ctx.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def log_path(self) -> Path:
        return self.out / "log.jsonl"

    def checkpoint(self, step: int) -> None:
        if not self.main:
            return
        save_checkpoint(
            self.ckpt_path,
            {
                "config": self.hashed,
                "config_hash": self.chash,
                "step": step,
                "model": models.unwrap(self.net).state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": rng_state(),
            },
        )

    def step(self, batch: Batch, step: int, after_backward) -> float:
        """One optimizer step on `batch`, in `config.accumulate` micro-batches
        (module docstring); returns the loss, averaged over the ranks."""
        config, device, opt, scaler = self.config, self.device, self.opt, self.scaler
        ctx = StepContext(
            step, config.seed, device, config.anon_aware, rank=self.ctx.rank, world=self.ctx.world
        )
        if not batch.get(PREPARED):  # the loader's workers may have done it
            batch = self.method.prepare(batch, ctx)
        # what the network draws itself (drop-path) comes from torch's global
        # generators: seeded per (seed, step, rank), so ranks differ and a
        # step's draws do not depend on what ran before it
        torch.manual_seed(ctx.seed_of(self.ctx.rank, salt=STEP_SALT))
        b = len(batch["index"])
        n = config.accumulate
        if b % n:
            raise ValueError(f"a batch of {b} does not split into {n} micro-batches")
        size = b // n
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        for k in range(n):
            # one micro-batch at a time on the device: a large accumulated
            # batch (classification's 4 x 48 volumes) never sits there whole
            part = _on(_part(batch, slice(k * size, (k + 1) * size)), device)
            with _sync_unless(self.net, skip=k < n - 1):
                with _autocast(config, device):
                    micro = self.method.loss(self.net, part, ctx).float() / n
                (scaler.scale(micro) if scaler is not None else micro).backward()
            loss += micro.detach()
        if scaler is not None:
            scaler.unscale_(opt)
        if after_backward is not None:
            after_backward(step, self.net)
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), config.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        self.sched.step()
        value = float(_mean_over_ranks(loss.detach(), self.ctx))
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss is {value} at step {step}; try a lower --lr or --amp bf16"
            )
        return value


def _train(config, batches, val, stream, after_backward, ctx: _Dist) -> RunResult:
    run, blob = _setup(config, ctx)
    config = run.config  # auto options resolved
    start = _restore(run, blob)
    records = [r for r in _read_log(run.log_path) if r["step"] < start] if blob else []
    if run.main:
        atomic_write_text(run.log_path, "".join(json.dumps(r) + "\n" for r in records))
        atomic_write_text(
            run.out / "config.json",
            json.dumps({**asdict(config), "config_hash": run.chash}, indent=2, default=str) + "\n",
        )
    run.net = _wrap(run.model, config, ctx, run.device)
    total = config.total_steps
    end = total if config.stop_after is None else min(total, config.stop_after)
    it = stream(start, ctx.rank, ctx.world) if stream is not None and start < end else None

    def next_batch(step: int) -> Batch:
        return next(it) if it is not None else batches(step, ctx.rank, ctx.world)

    t_run = time.perf_counter()
    stopper = _StopOnSignal(ctx.world == 1)
    end_run = _loop(run, range(start, end), next_batch, val, after_backward, records, stopper)
    steps = max(start, end_run)
    files = _save_outputs(run, records, steps) if run.main else {}
    vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
    return RunResult(
        out=run.out,
        steps=steps,
        complete=steps >= total,
        loss=records[-1]["loss"] if records else None,
        val_loss=vals[-1] if vals else None,
        seconds=time.perf_counter() - t_run,
        resumed_from=start,
        files={"checkpoint": run.ckpt_path, "log": run.log_path, **files},
        signal=stopper.signum,
        accumulate=config.accumulate,
    )


def _setup(config: TrainConfig, ctx: _Dist) -> tuple[_Run, dict[str, Any] | None]:
    """The device, the model, its optimizer, scheduler and scaler, seeded; and
    the checkpoint to resume from (None for a fresh run)."""
    if config.global_batch % ctx.world:
        raise InputError(
            f"global batch {config.global_batch} does not split over {ctx.world} ranks"
        )
    per_rank = config.global_batch // ctx.world
    if ctx.world > 1 and per_rank % 2 and config.method_object().pairs_samples:
        raise InputError(
            f"--method {config.method} pairs the samples of each rank's batch, and "
            f"--batch {config.global_batch} over {ctx.world} ranks leaves {per_rank} on each: "
            "give a batch that leaves an even number per rank"
        )
    out = Path(config.out)
    ckpt_path = out / "checkpoint.pt"
    device = _device(config, ctx)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed patch size: autotune the convolutions
    config = dataclasses.replace(config, accumulate=_accumulate(config, ctx, device))
    hashed = config.hashed()
    chash = config_hash(hashed)
    if ckpt_path.exists() and not config.resume:
        raise CheckpointError(
            f"{out} already holds a checkpoint ({ckpt_path.name}); "
            "pass --resume to continue it, or choose another --out"
        )
    blob = load_checkpoint(ckpt_path, chash, hashed) if config.resume else None
    if ctx.rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)  # noqa: NPY002 - for code using the global RNG
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    method = config.method_object()
    model = method.build().to(device)
    for module in model.modules():
        _freeze_unused_heads(module)
    opt = _optimizer(model, config)
    sched = EpochLR(
        opt,
        config.epochs,
        config.iters_per_epoch,
        config.poly_exponent,
        warmup=config.warmup_epochs,
        shape=config.schedule,
    )
    scaler = None
    if config.amp == "fp16":
        if device.type != "cuda":
            raise InputError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
        scaler = torch.amp.GradScaler("cuda")
    return _Run(config, ctx, device, hashed, chash, model, opt, sched, method, scaler), blob


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (ResEnc-L's recipe) or AdamW (Primus-M's)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params,
            lr=config.lr,
            betas=tuple(config.betas),
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )


def _restore(run: _Run, blob: dict[str, Any] | None) -> int:
    """Load a checkpoint's states (RNGs included); the step it resumes at."""
    if blob is None:
        return 0
    run.model.load_state_dict(blob["model"])
    run.opt.load_state_dict(blob["optimizer"])
    run.sched.load_state_dict(blob["scheduler"])
    if run.scaler is not None and blob.get("scaler") is not None:
        run.scaler.load_state_dict(blob["scaler"])
    set_rng_state(blob["rng"])
    return int(blob["step"])


def make_step(config: TrainConfig) -> tuple[TrainConfig, Callable[[Batch, int], float]]:
    """One process's training step as `train` takes it (the model, optimizer,
    AMP, accumulation and compile of `config`), without the run's files or
    checkpoints: for benchmarks (benchmarks/train_gpu.py). Returns the config
    with its auto options resolved and ``step(batch, step_number) -> loss``."""
    config = config.resolved()
    config.check()
    run, _ = _setup(dataclasses.replace(config, resume=False), _Dist())
    run.net = _wrap(run.model, run.config, run.ctx, run.device)
    run.net.train()
    return run.config, lambda batch, step: run.step(batch, step, None)


def _wrap(model: nn.Module, config: TrainConfig, ctx: _Dist, device: torch.device) -> nn.Module:
    """The model as trained: under DDP with several ranks, compiled on request."""
    net: nn.Module = model
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net, backend=config.compile)
    return net


def _loop(
    run: _Run,
    steps: range,
    next_batch: Callable[[int], Batch],
    val: list[Batch] | None,
    after_backward,
    records: list[dict[str, Any]],
    stopper: _StopOnSignal,
) -> int:
    """Train `steps`, logging each (and validating when due) and checkpointing
    on schedule; a stop signal ends the loop after a checkpoint. Returns the
    number of steps done in all."""
    config = run.config
    total = config.total_steps
    every = config.checkpoint_every or config.iters_per_epoch
    progress = _Progress(config.progress and run.main, total)
    log = open(run.log_path, "a") if run.main else None  # noqa: SIM115 - closed in finally
    try:
        stopper.__enter__()
        run.net.train()
        for step in steps:
            t0 = time.perf_counter()
            lr = run.opt.param_groups[0]["lr"]
            loss = run.step(next_batch(step), step, after_backward)
            epoch, done = step // config.iters_per_epoch, step + 1
            epoch_end = done % config.iters_per_epoch == 0
            rec: dict[str, Any] = {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "lr": lr,
                "seconds": round(time.perf_counter() - t0, 4),
            }
            due = config.val_every and epoch_end and (epoch + 1) % config.val_every == 0
            if val and run.main and (due or done == total):
                chunk = config.global_batch // run.ctx.world // config.accumulate
                rec["val_loss"] = validate(run.net, val, config, run.device, run.method, chunk)
            if log is not None:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            records.append(rec)
            progress.update(rec, config.epochs, epoch_end)
            if done % every == 0 or done == steps.stop or stopper.signum is not None:
                run.checkpoint(done)
            if stopper.signum is not None:
                return done
    finally:
        stopper.__exit__()
        progress.close()
        if log is not None:
            log.close()
    return steps.stop


def _save_outputs(run: _Run, records: list[dict[str, Any]], steps: int) -> dict[str, Path]:
    """The loss curve and the encoder with its metadata (rank 0)."""
    config = run.config
    files: dict[str, Path] = {}
    png = plot_losses(records, run.out / "loss.png", config.method)
    if png is not None:
        files["loss_png"] = png
    spacing = config.spacing if isinstance(config.spacing, str) else tuple(config.spacing)
    meta = models.EncoderMeta(
        arch=config.arch,
        patch_size=(config.patch,) * 3,
        spacing=spacing,
        normalization=config.normalization,
        method=config.method,
        extra={
            "config_hash": run.chash,
            "steps": steps,
            "complete": steps >= config.total_steps,
            "params": dict(config.params),
            "anon_aware": config.anon_aware,
        },
    )
    backbone = run.method.export(models.unwrap(run.net))  # heads are never exported
    if backbone is None:  # a fine-tuning task: its run writes its own model file
        return files
    files["encoder"] = models.save_encoder(backbone, run.out / "encoder.pt", meta)
    # the same weights in nnssl's layout: the authors' nnU-Net fork fine-tunes from it
    files["nnssl"] = nnssl.save_checkpoint(backbone, run.out / "nnssl_checkpoint.pth", meta)
    return files
