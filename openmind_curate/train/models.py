"""The networks: ResEnc-L (nnssl's configuration) and a tiny one of the same class.

Both are dynamic-network-architectures' `ResidualEncoderUNet`, so a
pre-trained encoder and a fine-tuning network are one class and share
parameter names. An exported encoder carries the metadata a fine-tuning run
needs to rebuild the network that fits it (architecture, patch size, spacing,
normalization): `save_encoder` / `load_encoder`.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openmind_curate.atomic import atomic_write_bytes
from openmind_curate.errors import InputError


@dataclass(frozen=True)
class ArchConfig:
    """One ResidualEncoderUNet configuration (no class per variant)."""

    features: tuple[int, ...]
    blocks: tuple[int, ...]
    decoder_convs: int = 1
    kernel: int = 3

    @property
    def n_stages(self) -> int:
        return len(self.features)

    @property
    def divisor(self) -> int:
        """A patch edge must be a multiple of this (the total downsampling)."""
        return 2 ** (self.n_stages - 1)


ARCHS: dict[str, ArchConfig] = {
    # nnssl's ResEnc-L: 6 stages, features 32-64-128-256-320-320, blocks 1-3-4-6-6-6
    "resenc-l": ArchConfig(features=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6)),
    # the same class, small enough for CPU tests on 32^3 patches
    "tiny": ArchConfig(features=(8, 16, 32), blocks=(1, 1, 1)),
}


def arch_config(name: str) -> ArchConfig:
    try:
        return ARCHS[name]
    except KeyError:
        raise InputError(f"unknown architecture {name!r}; choose one of {sorted(ARCHS)}") from None


def build(arch: str, *, in_channels: int = 1, out_channels: int = 1) -> nn.Module:
    """A ResidualEncoderUNet: InstanceNorm, LeakyReLU, stride-2 stages, decoder
    output at the input resolution (no deep supervision)."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    cfg = arch_config(arch)
    n = cfg.n_stages
    return ResidualEncoderUNet(
        input_channels=in_channels,
        n_stages=n,
        features_per_stage=list(cfg.features),
        conv_op=nn.Conv3d,
        kernel_sizes=[[cfg.kernel] * 3] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_blocks_per_stage=list(cfg.blocks),
        num_classes=out_channels,
        n_conv_per_stage_decoder=[cfg.decoder_convs] * (n - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


@dataclass
class EncoderMeta:
    """What a fine-tuning run needs to rebuild the network an encoder fits."""

    arch: str
    patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | str  # mm, or "native"
    normalization: str = "zscore"  # per image, over the nonzero region
    in_channels: int = 1
    method: str = "mae"
    extra: dict[str, Any] = field(default_factory=dict)


def save_encoder(model: nn.Module, path: str | os.PathLike[str], meta: EncoderMeta) -> Path:
    """Write the encoder's weights with their metadata, atomically."""
    buf = io.BytesIO()
    encoder = unwrap(model).encoder.state_dict()
    torch.save(
        {
            "format": "openmind-curate-encoder/1",
            "meta": asdict(meta),
            "encoder": {k: v.detach().cpu() for k, v in encoder.items()},
        },
        buf,
    )
    return atomic_write_bytes(path, buf.getvalue())


def load_encoder(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], EncoderMeta]:
    """The encoder weights and metadata written by `save_encoder`."""
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(blob, dict) or blob.get("format") != "openmind-curate-encoder/1":
        raise ValueError(f"{path}: not an encoder exported by openmind-curate")
    meta = blob["meta"]
    meta["patch_size"] = tuple(meta["patch_size"])
    if isinstance(meta["spacing"], list):
        meta["spacing"] = tuple(meta["spacing"])
    return blob["encoder"], EncoderMeta(**meta)


def build_from_encoder(
    path: str | os.PathLike[str], out_channels: int
) -> tuple[nn.Module, EncoderMeta]:
    """A segmentation network of the encoder's architecture, encoder weights loaded."""
    weights, meta = load_encoder(path)
    model = build(meta.arch, in_channels=meta.in_channels, out_channels=out_channels)
    model.encoder.load_state_dict(weights)
    return model, meta
