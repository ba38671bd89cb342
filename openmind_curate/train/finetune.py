"""Segmentation fine-tuning of a pre-trained encoder (or training from scratch).

nnU-Net's recipe at small scale: Dice + cross-entropy loss, SGD with Nesterov
momentum 0.99 and weight decay 3e-5, random patches with foreground
oversampling and mirroring, the learning rate set per epoch by one of the
paper's five schedules (`schedules`). Decoder-only epochs freeze the encoder:
its parameters get ``requires_grad = False`` (so they get no gradient, and
SGD, which skips parameters without a gradient, applies neither momentum nor
weight decay to them) and their parameter group's learning rate is 0.

At the end the network segments each validation case whole (padded to a
multiple of the network's divisor) or by sliding window, and the Dice per
class is printed and written to ``RUN/metrics.json``; ``RUN/log.jsonl`` holds
one line per epoch and ``RUN/model.pt`` the final network (atomic writes).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openmind_curate.atomic import atomic_write_bytes, atomic_write_text
from openmind_curate.preflight import InputError
from openmind_curate.train import models, schedules, segdata

#: Default patch edge per architecture when no pre-trained encoder says otherwise.
DEFAULT_PATCH = {"resenc-l": 160, "tiny": 32}
MOMENTUM = 0.99
WEIGHT_DECAY = 3e-5
GRAD_CLIP = 12.0  # nnU-Net's gradient norm clipping


@dataclass
class FinetuneConfig:
    data: Path
    out: Path
    pretrained: Path | None = None
    schedule: str = "default"
    epochs: int = 150
    arch: str | None = None  # from the encoder; "resenc-l" from scratch when None
    patch: int | tuple[int, int, int] | None = None  # the encoder's patch size when None
    batch: int = 2
    iters_per_epoch: int = 250
    lr: float | None = None  # 1e-3 fine-tuning (the paper), 1e-2 from scratch (nnU-Net)
    stage_len: int | None = None  # schedules.stage_length(epochs) when None
    seed: int = 0
    val_fraction: float = 0.2
    spacing: float | None = None  # mm; the encoder's spacing (1 mm from scratch) when None
    inference: str = "auto"  # "whole", "sliding", or "auto" (whole for tiny)
    device: str | None = None  # cuda when available
    quiet: bool = False


@dataclass
class FinetuneResult:
    out: Path
    dice: dict[str, float | None]  # mean over validation cases, per foreground class
    mean_dice: float | None
    per_case: dict[str, dict[str, float | None]]
    log: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # as in RUN/metrics.json


# ---------------------------------------------------------------- loss and metric


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Cross-entropy plus (1 - soft Dice), nnU-Net style: the soft Dice of each
    foreground class over the whole batch, averaged over the foreground classes.

    `logits` (B, C, ...), `target` (B, ...) class indices.
    """
    target = target.long()
    ce = F.cross_entropy(logits.float(), target)
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)[1:]
    denom = probs.sum(dims)[1:] + onehot.sum(dims)[1:]
    dice = (2 * inter + smooth) / (denom + smooth).clamp_min(1e-8)
    return ce + (1 - dice.mean())


def dice_per_class(pred: np.ndarray, target: np.ndarray, n_classes: int) -> list[float | None]:
    """Hard Dice of classes 1..n-1; None where the class is in neither volume."""
    out: list[float | None] = []
    for c in range(1, n_classes):
        p, g = pred == c, target == c
        total = int(p.sum()) + int(g.sum())
        out.append(None if total == 0 else 2.0 * int((p & g).sum()) / total)
    return out


# ---------------------------------------------------------------- freezing and optimizer


def encoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(models.unwrap(model).encoder.parameters())


def decoder_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter outside the encoder (the decoder module also holds a
    reference to the encoder, so `.decoder.parameters()` would include it)."""
    enc = {id(p) for p in encoder_parameters(model)}
    return [p for p in models.unwrap(model).parameters() if id(p) not in enc]


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.SGD:
    """SGD, Nesterov momentum 0.99, weight decay 3e-5; groups "encoder" and "decoder"."""
    groups = [
        {"params": encoder_parameters(model), "name": "encoder"},
        {"params": decoder_parameters(model), "name": "decoder"},
    ]
    return torch.optim.SGD(
        groups, lr=lr, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
    )


def set_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, lr: float, decoder_only: bool):
    """Learning rate of every group, and the encoder frozen or not."""
    for p in encoder_parameters(model):
        p.requires_grad_(not decoder_only)
        if decoder_only:
            p.grad = None
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if decoder_only and group.get("name") == "encoder" else lr


# ---------------------------------------------------------------- inference


def _pad_to(x: torch.Tensor, multiple: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    shape = x.shape[-3:]
    target = [max(m, -(-n // m) * m) for n, m in zip(shape, multiple, strict=True)]
    pad: list[int] = []
    for n, t in reversed(list(zip(shape, target, strict=True))):
        pad += [0, t - n]
    return F.pad(x, pad), tuple(shape)


@torch.no_grad()
def predict(
    model: nn.Module,
    image: np.ndarray,
    divisor: int,
    patch: Sequence[int],
    mode: str = "whole",
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Class map (X, Y, Z) of `image` (C, X, Y, Z): the whole volume at once
    (padded to a multiple of `divisor`), or sliding windows of `patch` with
    half overlap whose softmax outputs are averaged."""
    model.eval()
    x = torch.from_numpy(image)[None].to(device)
    if mode == "whole":
        padded, shape = _pad_to(x, [divisor] * 3)
        logits = model(padded)[..., : shape[0], : shape[1], : shape[2]]
        return logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
    padded, shape = _pad_to(x, patch)
    size = padded.shape[-3:]
    starts = [
        sorted({*range(0, n - p + 1, max(1, p // 2)), n - p})
        for n, p in zip(size, patch, strict=True)
    ]
    probs = None
    count = torch.zeros(size, device=device)
    for i in starts[0]:
        for j in starts[1]:
            for k in starts[2]:
                sl = (slice(i, i + patch[0]), slice(j, j + patch[1]), slice(k, k + patch[2]))
                out = model(padded[(..., *sl)]).float().softmax(1)[0]
                if probs is None:
                    probs = torch.zeros((out.shape[0], *size), device=device)
                probs[(slice(None), *sl)] += out
                count[sl] += 1
    assert probs is not None
    pred = (probs / count).argmax(0)[: shape[0], : shape[1], : shape[2]]
    return pred.cpu().numpy().astype(np.uint8)


# ---------------------------------------------------------------- setup


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _patch3(patch: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(patch, int):
        return (patch, patch, patch)
    p = tuple(int(v) for v in patch)
    if len(p) != 3:
        raise InputError(f"--patch {patch}: give one edge or three")
    return p  # type: ignore[return-value]


def cpu_resenc_message(what: str = "--arch resenc-l (the default from scratch)") -> str:
    return (
        f"{what} needs a GPU (a 160^3 ResEnc-L patch does not train on a CPU) and this "
        "machine has none; use --arch tiny for a CPU run (from scratch) or a tiny "
        "pre-trained encoder"
    )


@dataclass
class Setup:
    """The network, what it was built from, and the run's resolved settings."""

    model: nn.Module
    arch: str
    in_channels: int
    patch: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    normalization: str
    lr: float
    stage_len: int
    device: torch.device


def _encoder_meta(config: FinetuneConfig, device: torch.device) -> models.EncoderMeta:
    """The metadata of `config.pretrained`; InputError for a missing or foreign
    file, an --arch that differs, or resenc-l on a CPU-only machine."""
    path = Path(config.pretrained)  # type: ignore[arg-type]
    if not path.is_file():
        raise InputError(f"--pretrained {path}: file not found")
    try:
        _, meta = models.load_encoder(path)
    except Exception as exc:  # noqa: BLE001 - a bad file is the user's input error
        raise InputError(f"--pretrained {path}: {exc}") from None
    if meta.arch not in models.ARCHS:
        raise InputError(f"--pretrained {path}: unknown architecture {meta.arch!r}")
    if config.arch and config.arch != meta.arch:
        raise InputError(f"--arch {config.arch} does not match the encoder's {meta.arch}")
    if meta.arch == "resenc-l" and device.type == "cpu":
        raise InputError(cpu_resenc_message(f"the encoder {path.name} (resenc-l)"))
    return meta


def preflight(config: FinetuneConfig) -> segdata.SegSource:
    """Every check before a run writes anything: schedule and stage length,
    architecture, resenc-l on a CPU-only machine, the encoder file, the patch,
    the data folder and its cases (at least 2); InputError when wrong. Returns
    the data source (cases found, not read yet)."""
    if config.schedule not in schedules.SCHEDULES:
        raise InputError(
            f"--schedule {config.schedule}: choose one of {', '.join(schedules.SCHEDULES)}"
        )
    if config.epochs < 1 or config.iters_per_epoch < 1 or config.batch < 1:
        raise InputError("--epochs, --iters-per-epoch and --batch must be at least 1")
    if config.stage_len is not None and config.stage_len < 1:
        raise InputError(f"--stage-len {config.stage_len}: must be at least 1")
    stage_len = config.stage_len or schedules.stage_length(config.epochs)
    schedules.check(config.schedule, config.epochs, stage_len)
    if config.arch is not None and config.arch not in models.ARCHS:
        raise InputError(f"--arch {config.arch}: choose one of {', '.join(sorted(models.ARCHS))}")
    device = _device(config.device)
    if config.pretrained is None:
        arch = config.arch or "resenc-l"
        if arch == "resenc-l" and device.type == "cpu":
            raise InputError(cpu_resenc_message())
        patch = _patch3(config.patch or DEFAULT_PATCH[arch])
    else:
        meta = _encoder_meta(config, device)
        arch, patch = meta.arch, _patch3(config.patch or meta.patch_size)
    div = models.arch_config(arch).divisor
    if any(p < 1 or p % div for p in patch):
        raise InputError(f"--patch {patch}: each edge must be a multiple of {div} for {arch}")
    if not Path(config.data).is_dir():
        raise InputError(f"--data {config.data}: not a folder")
    source = segdata.read_source(Path(config.data))
    segdata.split_cases([c.case_id for c in source.cases], config.val_fraction, config.seed)
    return source


def build_model(config: FinetuneConfig, n_classes: int, in_channels: int) -> Setup:
    """The segmentation network (pre-trained encoder loaded when given) and the
    settings resolved from the encoder's metadata; raises InputError on a
    mismatch, an unusable schedule or resenc-l on a CPU-only machine."""
    device = _device(config.device)
    stage_len = config.stage_len or schedules.stage_length(config.epochs)
    schedules.check(config.schedule, config.epochs, stage_len)
    torch.manual_seed(config.seed)
    if config.pretrained is not None:
        path = Path(config.pretrained)
        meta = _encoder_meta(config, device)
        if meta.in_channels != in_channels:
            raise InputError(
                f"the encoder takes {meta.in_channels} channel(s); the data has {in_channels}"
            )
        model, meta = models.build_from_encoder(path, n_classes)
        arch, patch, normalization = meta.arch, config.patch or meta.patch_size, meta.normalization
        spacing = None if meta.spacing == "native" else tuple(float(s) for s in meta.spacing)
        lr = config.lr if config.lr is not None else 1e-3
    else:
        arch = config.arch or "resenc-l"
        models.arch_config(arch)
        if arch == "resenc-l" and device.type == "cpu":
            raise InputError(cpu_resenc_message())
        model = models.build(arch, in_channels=in_channels, out_channels=n_classes)
        patch, spacing, normalization = config.patch or DEFAULT_PATCH[arch], (1.0,) * 3, "zscore"
        lr = config.lr if config.lr is not None else 1e-2
    if config.spacing is not None:
        spacing = (float(config.spacing),) * 3
    patch3 = _patch3(patch)
    div = models.arch_config(arch).divisor
    if any(p % div for p in patch3):
        raise InputError(f"--patch {patch3}: each edge must be a multiple of {div} for {arch}")
    return Setup(
        model.to(device),
        arch,
        in_channels,
        patch3,
        spacing,  # type: ignore[arg-type]
        normalization,
        lr,
        stage_len,
        device,
    )


def load_data(
    source: segdata.SegSource, spacing, normalization: str, val_fraction: float, seed: int
) -> tuple[dict[str, segdata.SegCase], list[str], list[str]]:
    train_ids, val_ids = segdata.split_cases([c.case_id for c in source.cases], val_fraction, seed)
    cases = {
        f.case_id: segdata.load_case(f, spacing, normalization, source.n_classes)
        for f in source.cases
    }
    return cases, train_ids, val_ids


def _batch(cases, ids, patch, batch, rng) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for _ in range(batch):
        image, label = segdata.random_patch(cases[ids[rng.integers(len(ids))]], patch, rng)
        for ax in range(3):  # mirroring
            if rng.random() < 0.5:
                image, label = np.flip(image, ax + 1), np.flip(label, ax)
        images.append(np.ascontiguousarray(image))
        labels.append(np.ascontiguousarray(label))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)).long()


# ---------------------------------------------------------------- the run


def _silent(_: str) -> None:
    pass


def finetune(
    config: FinetuneConfig,
    *,
    source: segdata.SegSource | None = None,
    data: tuple[dict[str, segdata.SegCase], list[str], list[str]] | None = None,
    echo: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Train, validate, and write RUN/log.jsonl, RUN/metrics.json, RUN/model.pt.

    `source` (from `preflight`) skips the checks; `data` (from `load_data`)
    skips reading the cases again.
    """
    if config.quiet:
        echo = _silent
    echo = echo or print
    if source is None:
        source = preflight(config)
    setup = build_model(config, source.n_classes, source.channels)
    if data is None:
        data = load_data(
            source, setup.spacing, setup.normalization, config.val_fraction, config.seed
        )
    cases, train_ids, val_ids = data
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    start = f"from {config.pretrained}" if config.pretrained else "from scratch"
    echo(
        f"fine-tuning {setup.arch} ({start}), schedule {config.schedule}, "
        f"{config.epochs} epochs x {config.iters_per_epoch} iterations, "
        f"stage length {setup.stage_len}, lr {setup.lr:g}, patch {setup.patch}, "
        f"{len(train_ids)} training / {len(val_ids)} validation case(s)"
    )
    log = _train_epochs(setup, config, cases, train_ids, out / "log.jsonl", echo)
    mode = config.inference
    if mode == "auto":
        mode = "whole" if setup.arch == "tiny" else "sliding"
    per_case, dice, mean_dice = _validate(setup, source, cases, val_ids, mode)
    metrics = {
        "schedule": config.schedule,
        "epochs": config.epochs,
        "stage_len": setup.stage_len,
        "lr": setup.lr,
        "iters_per_epoch": config.iters_per_epoch,
        "batch": config.batch,
        "arch": setup.arch,
        "patch": list(setup.patch),
        "spacing": list(setup.spacing) if setup.spacing else "native",
        "pretrained": str(config.pretrained) if config.pretrained else None,
        "data": str(source.root),
        "data_kind": source.kind,
        "seed": config.seed,
        "labels": {str(k): v for k, v in source.labels.items()},
        "train_cases": train_ids,
        "val_cases": val_ids,
        "inference": mode,
        "dice": dice,
        "mean_dice": mean_dice,
        "per_case": per_case,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    _save_model(out / "model.pt", setup, source, config)
    return FinetuneResult(out, dice, mean_dice, per_case, log, metrics)


def _train_epochs(
    setup: Setup,
    config: FinetuneConfig,
    cases: dict[str, segdata.SegCase],
    train_ids: list[str],
    log_path: Path,
    echo: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Every epoch of the schedule's plan (learning rate, decoder only or not),
    one line each in `log_path` and through `echo`; the log lines. Every
    parameter is trainable again at the end."""
    model = setup.model
    optimizer = make_optimizer(model, setup.lr)
    plan = schedules.plan(config.schedule, config.epochs, setup.stage_len, setup.lr)
    log: list[dict[str, Any]] = []
    with open(log_path, "w") as log_file:
        for epoch, (lr, dec_only) in enumerate(plan):
            set_epoch(model, optimizer, lr, dec_only)
            model.train()
            t0 = time.perf_counter()
            losses = [
                _train_step(setup, optimizer, cases, train_ids, config, epoch, it)
                for it in range(config.iters_per_epoch)
            ]
            line = {
                "epoch": epoch,
                "lr": lr,
                "decoder_only": dec_only,
                "train_loss": float(np.mean(losses)) if losses else None,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            log.append(line)
            log_file.write(json.dumps(line) + "\n")
            log_file.flush()
            stage = "  decoder only" if dec_only else ""
            echo(
                f"epoch {epoch + 1}/{config.epochs}  lr {lr:.3g}{stage}  "
                f"loss {line['train_loss']:.4f}"
            )
    for p in model.parameters():
        p.requires_grad_(True)
    return log


def _train_step(
    setup: Setup,
    optimizer: torch.optim.Optimizer,
    cases: dict[str, segdata.SegCase],
    train_ids: list[str],
    config: FinetuneConfig,
    epoch: int,
    it: int,
) -> float:
    """One SGD step on a batch drawn by (seed, epoch, iteration); its loss."""
    model, device = setup.model, setup.device
    rng = np.random.default_rng([config.seed, epoch, it])
    x, y = _batch(cases, train_ids, setup.patch, config.batch, rng)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(x)
    loss = dice_ce_loss(logits, y)
    loss.backward()
    trainable = [p for p in model.parameters() if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
    optimizer.step()
    return float(loss.detach())


def _validate(
    setup: Setup,
    source: segdata.SegSource,
    cases: dict[str, segdata.SegCase],
    val_ids: list[str],
    mode: str,
) -> tuple[dict[str, dict[str, float | None]], dict[str, float | None], float | None]:
    """Dice per validation case and class, its mean per class, and the mean
    over the classes (None where a class is in no case)."""
    divisor = models.arch_config(setup.arch).divisor
    names = [source.labels[c] for c in range(1, source.n_classes)]
    per_case: dict[str, dict[str, float | None]] = {}
    for case_id in val_ids:
        case = cases[case_id]
        pred = predict(setup.model, case.image, divisor, setup.patch, mode, setup.device)
        per_case[case_id] = dict(
            zip(names, dice_per_class(pred, case.label, source.n_classes), strict=True)
        )
    dice: dict[str, float | None] = {}
    for name in names:
        vals = [d[name] for d in per_case.values() if d[name] is not None]
        dice[name] = float(np.mean(vals)) if vals else None
    known = [v for v in dice.values() if v is not None]
    return per_case, dice, float(np.mean(known)) if known else None


def _save_model(
    path: Path, setup: Setup, source: segdata.SegSource, config: FinetuneConfig
) -> None:
    """The trained network and what it needs to be applied (atomic)."""
    buf = io.BytesIO()
    torch.save(
        {
            "format": "openmind-curate-segmentation/1",
            "arch": setup.arch,
            "in_channels": setup.in_channels,
            "out_channels": source.n_classes,
            "labels": source.labels,
            "patch_size": list(setup.patch),
            "spacing": list(setup.spacing) if setup.spacing else "native",
            "normalization": setup.normalization,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
            "model": {
                k: v.detach().cpu() for k, v in models.unwrap(setup.model).state_dict().items()
            },
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


def _summary(run: FinetuneResult) -> dict[str, Any]:
    keys = ("schedule", "lr", "epochs", "stage_len")
    return {
        "mean_dice": run.mean_dice,
        "dice": run.dice,
        "out": str(run.out),
        **{k: run.metrics[k] for k in keys},
    }


def finetune_demo(
    corpus_dir: Path,
    pretrained: Path | None,
    out: Path,
    epochs: int = 10,
    *,
    iters_per_epoch: int = 16,
    lr: float | None = None,
    schedule: str = "sawtooth",
    spacing: float | None = 2.0,
    patch: int = 32,
    seed: int = 0,
    quiet: bool = True,
) -> dict[str, Any]:
    """Fine-tune the tiny network on the generated corpus's tissue labels from
    scratch (``OUT/scratch``) and, when `pretrained` is given, from that encoder
    (``OUT/pretrained``, with `schedule`); returns both mean Dice scores and
    the Dice per class. `lr` None keeps the recipe's defaults (1e-2 from
    scratch, 1e-3 fine-tuning).

    The cases are read once and shared by both runs. `spacing` (2 mm by
    default) keeps the demo quick on a CPU: at 1 mm a generated head is
    ~13 M voxels to segment.
    """
    source = segdata.read_source(Path(corpus_dir))
    sp = None if spacing is None else (float(spacing),) * 3
    data = load_data(source, sp, "zscore", 0.2, seed)
    out = Path(out)
    scratch = FinetuneConfig(
        corpus_dir,
        out / "scratch",
        arch="tiny",
        schedule="default",
        epochs=epochs,
        patch=patch,
        iters_per_epoch=iters_per_epoch,
        seed=seed,
        lr=lr,
        spacing=spacing,
        quiet=quiet,
        device="cpu",
    )
    result: dict[str, Any] = {"val_cases": data[2], "labels": source.labels}
    result["scratch"] = _summary(finetune(scratch, source=source, data=data))
    if pretrained is not None:
        # the same run but for the encoder, its network and the schedule
        tuned = replace(
            scratch, out=out / "pretrained", arch=None, pretrained=pretrained, schedule=schedule
        )
        result["pretrained"] = _summary(finetune(tuned, source=source, data=data))
    return result
