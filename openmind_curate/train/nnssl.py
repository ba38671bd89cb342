"""Pre-trained checkpoints in both layouts: ours (``encoder.pt``) and nnssl's.

nnssl, the paper's pre-training code, saves ``{"network_weights": state_dict,
"nnssl_adaptation_plan": plan, ...}``; the released OpenMind weights are in
that layout, and the authors' nnU-Net fork fine-tunes from it. It loads the
file with ``torch.load(weights_only=True)`` and reads these plan fields
unconditionally (``nnunetv2/experiment_planning/like_nnssl.py`` and
``PretrainedTrainer``):

- ``pretrain_plan.configurations.<first>.{spacing, patch_size}``;
- ``architecture_plans.{arch_class_name, arch_kwargs, arch_kwargs_requiring_import}``;
- ``pretrain_num_input_channels``, ``recommended_downstream_patchsize``,
  ``key_to_encoder``, ``key_to_stem``, ``keys_to_in_proj`` and ``key_to_lpe``.

`save_checkpoint` writes all of them, as plain types only, beside our
metadata (under ``openmind_curate``); `read_pretrained` reads either layout
into one `Pretrained`: the encoder's tensors keyed as in the network's
``encoder`` module, and the architecture as nnU-Net plans spell it.

Architectures: ``ResEncL`` (nnssl's preset, no kwargs) and
``ResidualEncoderUNet`` with explicit kwargs (ours: ``resenc-l`` and
``tiny``) are rebuilt; Primus (a transformer) is refused until this engine
builds it.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from openmind_curate.atomic import atomic_write_bytes
from openmind_curate.errors import InputError
from openmind_curate.train import models

#: dynamic-network-architectures' class, as nnU-Net plans name it.
RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
#: ResidualEncoderUNet's keys (nnssl's BaseMAETrainer writes the same).
KEY_TO_ENCODER = "encoder.stages"
KEY_TO_STEM = "encoder.stem"
KEYS_TO_IN_PROJ = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")
#: nnssl's name of the paper's ResEnc-L preset -> ours.
PRESETS = {"ResEncL": "resenc-l"}


@dataclass(frozen=True)
class Pretrained:
    """A pre-trained encoder, from either layout."""

    path: Path
    layout: str  # "openmind-curate" | "nnssl"
    arch: str  # for messages: "resenc-l", "tiny", "ResEncL", a class name
    architecture: dict[str, Any]  # nnU-Net plans' "architecture" entry
    encoder: dict[str, torch.Tensor]  # keyed as network.encoder.state_dict()
    in_channels: int
    patch_size: tuple[int, int, int]  # the recommended downstream patch
    pretrain_patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None  # None: not resampled
    normalization: str = "ZScoreNormalization"


def architecture(arch: str) -> dict[str, Any]:
    """Our architecture as nnU-Net plans' ``architecture`` entry (plain types)."""
    cfg = models.arch_config(arch)
    n = cfg.n_stages
    return {
        "network_class_name": RESENC_CLASS,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(cfg.features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[cfg.kernel] * 3] * n,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_blocks_per_stage": list(cfg.blocks),
            "n_conv_per_stage_decoder": [cfg.decoder_convs] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def adaptation_plan(meta: models.EncoderMeta) -> dict[str, Any]:
    """The ``nnssl_adaptation_plan`` of an encoder of ours (plain types only)."""
    arch = architecture(meta.arch)
    patch = [int(p) for p in meta.patch_size]
    spacing = None if isinstance(meta.spacing, str) else [float(s) for s in meta.spacing]
    norm = "CTNormalization" if meta.normalization == "ct" else "ZScoreNormalization"
    config = {
        "data_identifier": "openmind_curate",
        "preprocessor_name": "DefaultPreprocessor",
        "spacing_style": "noresample" if spacing is None else "onemmiso",
        "normalization_schemes": [norm] * meta.in_channels,
        "use_mask_for_norm": [False] * meta.in_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0},
        "resampling_fn_mask": "resample_data_or_seg_to_shape",
        "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0},
        "spacing": spacing,
        "patch_size": patch,
    }
    return {
        "architecture_plans": {
            "arch_class_name": arch["network_class_name"],
            "arch_kwargs": arch["arch_kwargs"],
            "arch_kwargs_requiring_import": arch["_kw_requires_import"],
        },
        "pretrain_plan": {
            "dataset_name": "openmind_curate",
            "plans_name": "openmind_curate",
            "original_median_spacing_after_transp": spacing or [1.0, 1.0, 1.0],
            "image_reader_writer": "NibabelReaderWriter",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {"openmind_curate": config},
            "experiment_planner_used": "openmind_curate",
        },
        "pretrain_num_input_channels": int(meta.in_channels),
        "recommended_downstream_patchsize": patch,
        "key_to_encoder": KEY_TO_ENCODER,
        "key_to_stem": KEY_TO_STEM,
        "keys_to_in_proj": list(KEYS_TO_IN_PROJ),
        "key_to_lpe": None,
    }


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], meta: models.EncoderMeta
) -> Path:
    """The whole pre-training network in nnssl's layout, atomically; loads
    under ``torch.load(weights_only=True)``."""
    net = models.unwrap(model)
    blob = {
        "network_weights": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "nnssl_adaptation_plan": adaptation_plan(meta),
        "openmind_curate": _plain(asdict(meta)),
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _plain(value: Any) -> Any:
    """Lists for tuples, recursively: `weights_only` loading takes plain types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _triple(value: Any, what: str, path: Path) -> tuple[int, int, int]:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3:
        raise InputError(f"pre-trained checkpoint {path}: {what} {value!r} is not 3 sizes")
    return out  # type: ignore[return-value]


def read_pretrained(path: str | os.PathLike[str]) -> Pretrained:
    """Either layout, told apart by its keys (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pre-trained checkpoint {path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is "unreadable"
        raise InputError(f"pre-trained checkpoint {path}: cannot read it ({exc})") from None
    if isinstance(blob, dict) and blob.get("format") == "openmind-curate-encoder/1":
        return _ours(path, blob)
    if isinstance(blob, dict) and "nnssl_adaptation_plan" in blob and "network_weights" in blob:
        return _nnssl(path, blob)
    raise InputError(
        f"pre-trained checkpoint {path}: neither an encoder of `curate train` (encoder.pt) "
        "nor an nnssl checkpoint (network_weights with an nnssl_adaptation_plan)"
    )


def _ours(path: Path, blob: dict[str, Any]) -> Pretrained:
    meta = blob["meta"]
    arch = str(meta["arch"])
    if arch not in models.ARCHS:
        raise InputError(f"pre-trained checkpoint {path}: unknown architecture {arch!r}")
    patch = _triple(meta["patch_size"], "patch size", path)
    spacing = meta["spacing"]
    return Pretrained(
        path=path,
        layout="openmind-curate",
        arch=arch,
        architecture=architecture(arch),
        encoder=dict(blob["encoder"]),
        in_channels=int(meta.get("in_channels", 1)),
        patch_size=patch,
        pretrain_patch_size=patch,
        spacing=None if isinstance(spacing, str) else tuple(float(s) for s in spacing),
        normalization="CTNormalization"
        if meta.get("normalization") == "ct"
        else "ZScoreNormalization",
    )


def _nnssl(path: Path, blob: dict[str, Any]) -> Pretrained:
    plan = blob["nnssl_adaptation_plan"]
    try:
        arch_plans = plan["architecture_plans"]
        name = str(arch_plans["arch_class_name"])
        config = next(iter(plan["pretrain_plan"]["configurations"].values()))
        fields = (plan["key_to_encoder"], plan["key_to_stem"], plan["pretrain_num_input_channels"])
        downstream = plan["recommended_downstream_patchsize"]
    except (KeyError, TypeError, StopIteration) as exc:
        raise InputError(
            f"pre-trained checkpoint {path}: its nnssl_adaptation_plan lacks {exc}"
        ) from None
    key_to_encoder, key_to_stem, channels = fields
    arch = _nnssl_architecture(path, name, arch_plans)
    encoder = _encoder_tensors(blob["network_weights"], key_to_encoder, key_to_stem)
    if not encoder:
        raise InputError(
            f"pre-trained checkpoint {path}: no tensor under {key_to_encoder!r} or {key_to_stem!r}"
        )
    spacing = config.get("spacing")
    norms = config.get("normalization_schemes") or ["ZScoreNormalization"]
    ours = blob.get("openmind_curate")  # written by `save_checkpoint`: our name for it
    return Pretrained(
        path=path,
        layout="nnssl",
        arch=str(ours["arch"]) if isinstance(ours, dict) and "arch" in ours else name,
        architecture=arch,
        encoder=encoder,
        in_channels=int(channels),
        patch_size=_triple(downstream, "recommended_downstream_patchsize", path),
        pretrain_patch_size=_triple(config.get("patch_size"), "pre-training patch size", path),
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        normalization=str(norms[0]),
    )


def _nnssl_architecture(path: Path, name: str, arch_plans: dict[str, Any]) -> dict[str, Any]:
    """nnU-Net plans' architecture entry for an nnssl architecture name."""
    if name in PRESETS:
        return architecture(PRESETS[name])
    if name.split(".")[-1] == "ResidualEncoderUNet" and arch_plans.get("arch_kwargs"):
        return {
            "network_class_name": RESENC_CLASS,
            "arch_kwargs": dict(arch_plans["arch_kwargs"]),
            "_kw_requires_import": list(arch_plans.get("arch_kwargs_requiring_import") or []),
        }
    if name.startswith("Primus"):
        raise InputError(
            f"pre-trained checkpoint {path}: architecture {name} (a transformer) is not "
            "supported by this release; ResEnc-L checkpoints are"
        )
    raise InputError(
        f"pre-trained checkpoint {path}: architecture {name!r} is not supported; "
        "ResEncL and ResidualEncoderUNet are"
    )


def _encoder_tensors(
    weights: dict[str, torch.Tensor], key_to_encoder: str, key_to_stem: str
) -> dict[str, torch.Tensor]:
    """The stem's and the stages' tensors, keyed as in ``network.encoder``
    (``stem.*``, ``stages.*``)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, ours in ((key_to_stem, "stem"), (key_to_encoder, "stages")):
        for key, value in weights.items():
            if key.startswith(prefix + "."):
                out[ours + key[len(prefix) :]] = value
    return out
