"""Method names to classes, imported only when asked for (help stays light).

The summaries say when to use each method, from the paper's findings
(reconstruction wins for segmentation; contrastive methods for
classification and frozen encoders).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from openmind_curate.errors import InputError

if TYPE_CHECKING:
    from openmind_curate.train.methods.base import Method

#: name -> (module:class, one line for --help)
METHODS: dict[str, tuple[str, str]] = {
    "mae": (
        "mae:MAE",
        "masked auto-encoding; the best for segmentation on ResEnc-L and Primus-M (the default)",
    ),
    "s3d": (
        "s3d:S3D",
        "sparse masking for CNNs (SparK); close to MAE for segmentation, better for classification",
    ),
    "simmim": (
        "simmim:SimMIM",
        "Primus only: mask tokens at the input, no decoder; second to MAE on Primus-M",
    ),
    "models-genesis": (
        "genesis:ModelsGenesis",
        "restore distorted images; moderate for segmentation and classification",
    ),
    "volume-fusion": (
        "volume_fusion:VolumeFusion",
        "segment how two volumes were fused; third for segmentation on Primus-M (Table 8)",
    ),
    "swinunetr": (
        "swinunetr:SwinUNETR",
        "in-painting, rotation and contrastive coding; little gain for segmentation",
    ),
    "simclr": (
        "simclr:SimCLR",
        "contrastive; the best for classification and for a frozen CNN encoder",
    ),
    "voco": (
        "voco:VoCo",
        "volume contrast; for classification, weak for segmentation fine-tuning",
    ),
}


def names() -> list[str]:
    return list(METHODS)


def summary(name: str) -> str:
    return METHODS[name][1]


#: Methods defined outside `train` that train through its loop (fine-tuning
#: tasks, `register`): not pre-training methods, so not in `METHODS`.
REGISTERED: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Make `cls` (a `Method` of a higher layer: classification fine-tuning)
    known to the loop by its ``name``; a class decorator."""
    REGISTERED[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The class of method `name` (InputError for an unknown name)."""
    if name in REGISTERED:
        return REGISTERED[name]
    try:
        target = METHODS[name][0]
    except KeyError:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(f"openmind_curate.train.methods.{module}"), cls)


#: Parameters that shrink a method's crops and heads to CPU size at --patch 32
#: on the tiny networks (the tests' and the GPU benchmark's smoke run; the
#: paper's defaults are untouched).
TINY_PARAMS: dict[str, dict] = {
    "mae": {"mask_block": 8, "decoder_width": 48, "decoder_heads": 2},
    "s3d": {"block": 8},
    "simclr": {"crop": (48, 48, 32), "proj_hidden": 64, "proj_out": 32},
    "voco": {"grid": (2, 2, 1), "proj_hidden": 64, "proj_out": 32},
    "swinunetr": {"contrast_dim": 32},
    "models-genesis": {"local_blocks": 100, "curve_points": 1000},
}
