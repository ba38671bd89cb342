"""The networks: ResEnc-L and Primus-M (nnssl's configurations) and a tiny one of each class.

All come from dynamic-network-architectures (`ResidualEncoderUNet`,
`Primus`), so a pre-trained encoder and a fine-tuning network are one class
and share parameter names. An architecture belongs to a family ("resenc" or
"primus", `family`), which decides the method's defaults and what its encoder
is (`encoder_state`). An exported encoder carries the metadata a fine-tuning run
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


@dataclass(frozen=True)
class PrimusConfig:
    """One Primus configuration: an EVA transformer on cubic tokens."""

    embed_dim: int
    depth: int
    heads: int
    token: int = 8  # token edge in voxels
    #: nnssl's Primus trainers build the EVA blocks with layer scale (0.1) and
    #: a norm inside attention; the released checkpoints carry those tensors.
    init_values: float | None = 0.1
    scale_attn_inner: bool = True

    @property
    def divisor(self) -> int:
        """A patch edge must be a multiple of the token edge."""
        return self.token


ARCHS: dict[str, ArchConfig | PrimusConfig] = {
    # nnssl's ResEnc-L: 6 stages, features 32-64-128-256-320-320, blocks 1-3-4-6-6-6
    "resenc-l": ArchConfig(features=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6)),
    # the same class, small enough for CPU tests on 32^3 patches
    "tiny": ArchConfig(features=(8, 16, 32), blocks=(1, 1, 1)),
    # Primus-M (dynamic-network-architectures' "M": 864 wide, 16 blocks, 12 heads, 8^3 tokens)
    "primus-m": PrimusConfig(embed_dim=864, depth=16, heads=12),
    # the same class for CPU tests: 64 tokens on a 32^3 patch
    "tiny-primus": PrimusConfig(embed_dim=48, depth=2, heads=2),
}


def arch_config(name: str) -> ArchConfig | PrimusConfig:
    try:
        return ARCHS[name]
    except KeyError:
        raise InputError(f"unknown architecture {name!r}; choose one of {sorted(ARCHS)}") from None


def family(arch: str) -> str:
    """The family of `arch`: "resenc" (ResidualEncoderUNet) or "primus" (the transformer)."""
    return "primus" if isinstance(arch_config(arch), PrimusConfig) else "resenc"


def build(
    arch: str,
    *,
    in_channels: int = 1,
    out_channels: int = 1,
    patch: int | tuple[int, int, int] = 160,
    drop_path: float = 0.0,
) -> nn.Module:
    """The network of `arch` with `out_channels` outputs at the input
    resolution. ResidualEncoderUNet: InstanceNorm, LeakyReLU, stride-2 stages,
    no deep supervision. Primus: its positional embedding is sized for
    `patch`, with stochastic depth `drop_path`."""
    cfg = arch_config(arch)
    if isinstance(cfg, PrimusConfig):
        return _build_primus(cfg, in_channels, out_channels, patch, drop_path)
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

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


def _build_primus(
    cfg: PrimusConfig, in_channels: int, out_channels: int, patch, drop_path: float
) -> nn.Module:
    from dynamic_network_architectures.architectures.primus import Primus

    shape = (patch,) * 3 if isinstance(patch, int) else tuple(int(p) for p in patch)
    return Primus(
        input_channels=in_channels,
        embed_dim=cfg.embed_dim,
        patch_embed_size=(cfg.token,) * 3,
        num_classes=out_channels,
        eva_depth=cfg.depth,
        eva_numheads=cfg.heads,
        input_shape=shape,
        drop_path_rate=drop_path,
        init_values=cfg.init_values,
        scale_attn_inner=cfg.scale_attn_inner,
    )


#: Where a Primus network keeps its encoder (nnssl's `key_to_stem`, `key_to_encoder`).
PRIMUS_ENCODER = ("down_projection", "eva")


def encoder_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's tensors: a ResidualEncoderUNet's ``encoder`` (keys
    ``stem.*``, ``stages.*``), or a Primus's patch embedding and transformer
    (keys ``down_projection.*``, ``eva.*``)."""
    net = unwrap(net)
    if hasattr(net, "encoder"):
        return dict(net.encoder.state_dict())
    state = net.state_dict()
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in PRIMUS_ENCODER}


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
    encoder = encoder_state(model)
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
