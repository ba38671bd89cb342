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
``tiny``); Primus, the transformer: nnssl's presets ``PrimusS``/``B``/``M``/``L``
(no kwargs; 8^3 tokens), ``Primus``/``PrimusX`` with kwargs, and ours
(``primus-m``, ``tiny-primus``). A Primus plan carries nnssl's keys
(``key_to_encoder`` "eva", ``key_to_stem`` "down_projection", ``keys_to_in_proj``
("down_projection.proj",), ``key_to_lpe`` "eva.pos_embed"). Its architecture
entry names dynamic-network-architectures' ``Primus`` class with explicit
kwargs; whether the blocks carry layer scale (``init_values``, nnssl's 0.1)
and the attention's inner norm (``scale_attn_inner``) is read off the
tensors, so the rebuilt network always has the checkpoint's parameters. Its
``input_shape`` is the fine-tuning patch (`finetune.plans` sets it). We write
``PrimusM`` as the class name when the network is nnssl's Primus-M, so the
authors' fork rebuilds it; any other Primus as the full class name with
kwargs.
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
#: dynamic-network-architectures' transformer, as nnU-Net plans name it.
PRIMUS_CLASS = "dynamic_network_architectures.architectures.primus.Primus"
#: A Primus's keys (nnssl's BaseEvaMAETrainer and dna's Primus write the same).
PRIMUS_KEYS = {
    "key_to_encoder": "eva",
    "key_to_stem": "down_projection",
    "keys_to_in_proj": ["down_projection.proj"],
    "key_to_lpe": "eva.pos_embed",
}
RESENC_KEYS = {
    "key_to_encoder": KEY_TO_ENCODER,
    "key_to_stem": KEY_TO_STEM,
    "keys_to_in_proj": list(KEYS_TO_IN_PROJ),
    "key_to_lpe": None,
}
#: nnssl's Primus presets (dna's PrimusS/B/M/L): (embed dim, depth, heads), 8^3 tokens.
PRIMUS_PRESETS = {
    "PrimusS": (396, 12, 6),
    "PrimusB": (792, 12, 12),
    "PrimusM": (864, 16, 12),
    "PrimusL": (1056, 24, 16),
}
#: dna's presets' layer-scale init (their default; the value is overwritten by loading).
LAYER_SCALE = 0.1


@dataclass(frozen=True)
class Pretrained:
    """A pre-trained encoder, from either layout."""

    path: Path
    layout: str  # "openmind-curate" | "nnssl"
    arch: str  # for messages: "resenc-l", "tiny", "ResEncL", a class name
    architecture: dict[str, Any]  # nnU-Net plans' "architecture" entry
    # ResEnc: keyed as network.encoder.state_dict() (stem.*, stages.*);
    # Primus: as the network's own state dict (down_projection.*, eva.*)
    encoder: dict[str, torch.Tensor]
    in_channels: int
    patch_size: tuple[int, int, int]  # the recommended downstream patch
    pretrain_patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None  # None: not resampled
    normalization: str = "ZScoreNormalization"
    family: str = "resenc"  # "resenc" | "primus" (models.family)


def architecture(
    arch: str, weights: dict[str, torch.Tensor] | None = None, patch: Any = None
) -> dict[str, Any]:
    """Our architecture as nnU-Net plans' ``architecture`` entry (plain types).
    Primus: `weights` (its tensors) decide layer scale and the inner attention
    norm, else `models.build`'s choice; `patch` is its ``input_shape``."""
    cfg = models.arch_config(arch)
    if isinstance(cfg, models.PrimusConfig):
        flags = (
            primus_flags(weights)
            if weights is not None
            else (getattr(cfg, "init_values", None), bool(getattr(cfg, "scale_attn_inner", False)))
        )
        return primus_architecture(cfg.embed_dim, cfg.depth, cfg.heads, cfg.token, *flags, patch)
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


def primus_architecture(
    embed_dim: int,
    depth: int,
    heads: int,
    token: int,
    init_values: float | None,
    scale_attn_inner: bool,
    patch: Any = None,
) -> dict[str, Any]:
    """dna's ``Primus`` as a plans ``architecture`` entry. Drop-path 0 in
    fine-tuning: the fork builds its Primus presets with dna's default."""
    return {
        "network_class_name": PRIMUS_CLASS,
        "arch_kwargs": {
            "embed_dim": int(embed_dim),
            "patch_embed_size": [int(token)] * 3,
            "eva_depth": int(depth),
            "eva_numheads": int(heads),
            "input_shape": None if patch is None else [int(p) for p in patch],
            "drop_path_rate": 0.0,
            "init_values": None if init_values is None else float(init_values),
            "scale_attn_inner": bool(scale_attn_inner),
        },
        "_kw_requires_import": [],
    }


def is_primus(architecture_entry: dict[str, Any]) -> bool:
    """Whether a plans ``architecture`` entry is dna's Primus."""
    return str(architecture_entry.get("network_class_name", "")).split(".")[-1] == "Primus"


def primus_flags(weights: dict[str, torch.Tensor]) -> tuple[float | None, bool]:
    """(init_values, scale_attn_inner) of the Primus whose tensors these are:
    layer scale leaves ``gamma_1``/``gamma_2`` in every block, the inner
    attention norm ``attn.norm.*``."""
    keys = list(weights)
    layer_scale = any(k.endswith(".gamma_1") for k in keys)
    inner = any(k.endswith(".attn.norm.weight") for k in keys)
    return (LAYER_SCALE if layer_scale else None), inner


def _arch_plans(arch: dict[str, Any]) -> dict[str, Any]:
    """nnssl's ``architecture_plans``. Our Primus-M is nnssl's preset, written
    as nnssl writes its presets: the name ``PrimusM`` and no kwargs (nnssl's
    own plan reader builds CNN kwargs from any kwargs it finds)."""
    kw = arch["arch_kwargs"]
    name = arch["network_class_name"]
    if is_primus(arch):
        preset = (kw["embed_dim"], kw["eva_depth"], kw["eva_numheads"])
        nnssl_m = kw["init_values"] is not None and kw["scale_attn_inner"]
        if preset == PRIMUS_PRESETS["PrimusM"] and kw["patch_embed_size"] == [8] * 3 and nnssl_m:
            return {
                "arch_class_name": "PrimusM",
                "arch_kwargs": None,
                "arch_kwargs_requiring_import": None,
            }
    return {
        "arch_class_name": name,
        "arch_kwargs": kw,
        "arch_kwargs_requiring_import": arch["_kw_requires_import"],
    }


def adaptation_plan(
    meta: models.EncoderMeta, weights: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """The ``nnssl_adaptation_plan`` of an encoder of ours (plain types only);
    `weights`: the network's tensors (a Primus's decide its flags)."""
    patch = [int(p) for p in meta.patch_size]
    arch = architecture(meta.arch, weights, patch)
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
    keys = PRIMUS_KEYS if models.family(meta.arch) == "primus" else RESENC_KEYS
    return {
        "architecture_plans": _arch_plans(arch),
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
        **{k: list(v) if isinstance(v, list) else v for k, v in keys.items()},
    }


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], meta: models.EncoderMeta
) -> Path:
    """The whole exported network in nnssl's layout, atomically; loads under
    ``torch.load(weights_only=True)``. An encoder-only export (contrastive
    methods) is written as it is: a reader takes the encoder's keys only."""
    net = models.unwrap(model)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    blob = {
        "network_weights": state,
        "nnssl_adaptation_plan": adaptation_plan(meta, state),
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
    encoder = dict(blob["encoder"])
    return Pretrained(
        path=path,
        layout="openmind-curate",
        arch=arch,
        architecture=architecture(arch, encoder, patch),
        encoder=encoder,
        in_channels=int(meta.get("in_channels", 1)),
        patch_size=patch,
        pretrain_patch_size=patch,
        spacing=None if isinstance(spacing, str) else tuple(float(s) for s in spacing),
        normalization="CTNormalization"
        if meta.get("normalization") == "ct"
        else "ZScoreNormalization",
        family=models.family(arch),
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
    primus = _is_primus_name(name)
    weights = blob["network_weights"]
    encoder = (_primus_tensors if primus else _encoder_tensors)(
        weights, key_to_encoder, key_to_stem
    )
    if not encoder:
        raise InputError(
            f"pre-trained checkpoint {path}: no tensor under {key_to_encoder!r} or {key_to_stem!r}"
        )
    # the fork lets ``pretrain_patch_size`` in the plan override the configuration's
    pretrain_patch = plan.get("pretrain_patch_size") or config.get("patch_size")
    arch = _nnssl_architecture(path, name, arch_plans, encoder)
    if primus:
        arch["arch_kwargs"]["input_shape"] = list(_triple(downstream, "patch", path))
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
        pretrain_patch_size=_triple(pretrain_patch, "pre-training patch size", path),
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        normalization=str(norms[0]),
        family="primus" if primus else "resenc",
    )


def _is_primus_name(name: str) -> bool:
    short = name.split(".")[-1]
    return short in PRIMUS_PRESETS or short in ("Primus", "PrimusX")


def _nnssl_architecture(
    path: Path, name: str, arch_plans: dict[str, Any], encoder: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """nnU-Net plans' architecture entry for an nnssl architecture name."""
    if name in PRESETS:
        return architecture(PRESETS[name])
    short = name.split(".")[-1]
    kwargs = dict(arch_plans.get("arch_kwargs") or {})
    if short == "ResidualEncoderUNet" and kwargs:
        return {
            "network_class_name": RESENC_CLASS,
            "arch_kwargs": kwargs,
            "_kw_requires_import": list(arch_plans.get("arch_kwargs_requiring_import") or []),
        }
    if short in PRIMUS_PRESETS:
        dims = PRIMUS_PRESETS[short]
        token = 8
    elif short in ("Primus", "PrimusX") and kwargs:
        dims, token = _primus_dims(path, name, kwargs)
    else:
        raise InputError(
            f"pre-trained checkpoint {path}: architecture {name!r} is not supported; "
            f"ResEncL, ResidualEncoderUNet, {', '.join(PRIMUS_PRESETS)} and Primus are"
        )
    return primus_architecture(*dims, token, *primus_flags(encoder))


def _primus_dims(path: Path, name: str, kwargs: dict[str, Any]) -> tuple[tuple[int, int, int], int]:
    """(embed dim, depth, heads) and the token edge from a Primus's kwargs
    (dna's names, or nnssl's PrimusX ``encoder_eva_*``)."""
    try:
        dims = (
            int(kwargs["embed_dim"]),
            int(kwargs.get("eva_depth", kwargs.get("encoder_eva_depth"))),
            int(kwargs.get("eva_numheads", kwargs.get("encoder_eva_numheads"))),
        )
        tokens = {int(t) for t in kwargs["patch_embed_size"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"pre-trained checkpoint {path}: {name} kwargs lack {exc}") from None
    if len(tokens) != 1:
        raise InputError(f"pre-trained checkpoint {path}: {name} has non-cubic tokens")
    return dims, tokens.pop()


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


def _primus_tensors(
    weights: dict[str, torch.Tensor], key_to_encoder: str, key_to_stem: str
) -> dict[str, torch.Tensor]:
    """A Primus's patch embedding and transformer, keyed as in dna's Primus
    (``down_projection.*``, ``eva.*``); the decoder (``up_projection``) and
    anything else (an MAE's decoder, mask tokens) is left out."""
    out: dict[str, torch.Tensor] = {}
    for prefix, ours in ((key_to_stem, "down_projection"), (key_to_encoder, "eva")):
        for key, value in weights.items():
            if key.startswith(prefix + "."):
                out[ours + key[len(prefix) :]] = value
    return out
