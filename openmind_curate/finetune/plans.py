"""The planning step stock nnU-Net lacks: plans for a pre-trained network.

nnU-Net plans a network for the data; fine-tuning needs the reverse, the
data prepared for a network that already exists. As the authors' fork does
(``nnUNetv2_preprocess_like_nnssl``), we let nnU-Net extract the dataset
fingerprint and make its default plans, then rewrite the ``3d_fullres``
configuration (appendix C.1):

- **spacing**: the pre-training's (1 mm isotropic for the paper's and the
  released weights; 1 mm from scratch), a size in mm, or ``planned``:
  nnU-Net's own (the paper's choice for TPC's thin structures);
- **normalization**: z-score per channel, except nnU-Net's CT normalization
  (clipping to the foreground's 0.5-99.5 percentiles, then z-score) for a
  channel ``dataset.json`` names ``CT`` (the paper's choice for KIT);
- **architecture and patch size**: the checkpoint's, rebuilt from its
  metadata; deep supervision off. A Primus's patch is a multiple of its 8^3
  tokens (the checkpoint's recommended patch is rounded to one) and is its
  ``input_shape``.

nnU-Net then preprocesses with these plans (``preprocess_dataset``). The
plans also carry ``pretrain_info`` in the fork's format, so the authors'
``PretrainedTrainer`` reads them too for a ResEnc. A Primus's architecture
entry names dna's ``Primus`` class with kwargs, which the fork's trainer does
not build (it builds Primus only by preset name, e.g. ``PrimusM``); the fork
fine-tunes our Primus-M from its nnssl checkpoint (``nnssl_checkpoint.pth``
names it ``PrimusM``) through its own ``like_nnssl`` planning.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmind_curate.errors import InputError
from openmind_curate.train.nnssl import PRIMUS_KEYS, RESENC_KEYS, Pretrained, is_primus

PLANS_NAME = "openmindPlans"
CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class Network:
    """The network to fine-tune: its architecture entry and patch size."""

    architecture: dict[str, Any]
    patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None  # the pre-training's; None: not resampled
    divisor: int  # a patch edge must be a multiple of this


def network_of(
    pretrained: Pretrained | None, architecture: dict[str, Any], patch: Sequence[int] | None
) -> Network:
    """The checkpoint's network (or, from scratch, `architecture`) at `patch`
    (default: the checkpoint's recommended downstream patch, rounded to the
    network's divisor). A Primus's ``input_shape`` becomes the patch."""
    arch = pretrained.architecture if pretrained else architecture
    divisor = divisor_of(arch)
    if patch:
        size = tuple(int(p) for p in patch)
        bad = [p for p in size if p % divisor or p < divisor]
        if bad:
            near = tuple(nearest_multiple(p, divisor) for p in size)
            raise InputError(
                f"patch size {size}: every edge must be a multiple of {divisor}; "
                f"the nearest is {near}"
            )
    elif pretrained:
        size = tuple(nearest_multiple(p, divisor) for p in pretrained.patch_size)
    else:
        raise InputError("--patch is needed when training from scratch without --pretrained")
    if is_primus(arch):
        kwargs = {**arch["arch_kwargs"], "input_shape": list(size)}
        arch = {**arch, "arch_kwargs": kwargs}
    spacing = pretrained.spacing if pretrained else (1.0, 1.0, 1.0)
    return Network(arch, size, spacing, divisor)  # type: ignore[arg-type]


def nearest_multiple(edge: int, divisor: int) -> int:
    """The multiple of `divisor` nearest `edge` (halves up), at least `divisor`."""
    return max(divisor, (2 * int(edge) + divisor) // (2 * divisor) * divisor)


def divisor_of(arch: dict[str, Any]) -> int:
    """A patch edge must be a multiple of this: the total stride of a U-Net,
    the token edge of a Primus."""
    kwargs = arch["arch_kwargs"]
    if is_primus(arch):
        return int(max(kwargs["patch_embed_size"]))
    divisor = 1
    for s in kwargs["strides"]:
        divisor *= int(max(s))
    return divisor


def target_spacing(mode: str | float, network: Network, planned: Sequence[float]) -> list[float]:
    """``pretrained`` (the network's pre-training spacing), ``planned``, or mm."""
    if mode == "planned":
        return [float(s) for s in planned]
    if mode == "pretrained":
        if network.spacing is None:
            return [float(s) for s in planned]  # pre-trained without resampling
        return [float(s) for s in network.spacing]
    return [float(mode)] * 3


def normalization_schemes(channel_names: dict[str, str]) -> list[str]:
    """z-score per channel; nnU-Net's CT normalization where the channel is CT."""
    keys = sorted(channel_names, key=int)
    return [
        "CTNormalization"
        if str(channel_names[k]).strip().lower() == "ct"
        else "ZScoreNormalization"
        for k in keys
    ]


def adapt_plans(
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    network: Network,
    spacing: list[float],
    batch_size: int,
    pretrained: Pretrained | None,
) -> dict[str, Any]:
    """nnU-Net's default plans rewritten for `network` (see the module doc)."""
    base = plans["configurations"].get(CONFIGURATION)
    if base is None:
        raise InputError(
            f"nnU-Net made no {CONFIGURATION} configuration for {plans.get('dataset_name')}; "
            "fine-tuning needs 3D data"
        )
    norms = normalization_schemes(dataset_json["channel_names"])
    tag = "_".join(f"{s:g}" for s in spacing) + "__" + "_".join(n[:2] for n in norms)
    config = {
        **base,
        "data_identifier": f"{PLANS_NAME}_{tag}",
        "preprocessor_name": "DefaultPreprocessor",
        "spacing": spacing,
        "normalization_schemes": norms,
        "patch_size": list(network.patch_size),
        "batch_size": int(batch_size),
        "architecture": network.architecture,
    }
    for key in ("previous_stage", "next_stage"):
        config.pop(key, None)
    out = {**plans, "plans_name": PLANS_NAME, "configurations": {CONFIGURATION: config}}
    if pretrained is not None:
        out["pretrain_info"] = pretrain_info(pretrained)
    return out


def pretrain_info(pretrained: Pretrained) -> dict[str, Any]:
    """The fork's ``pretrain_info`` plans entry (``PretrainedTrainer`` reads it)."""
    return {
        "checkpoint_path": str(pretrained.path.resolve()),
        "checkpoint_name": pretrained.path.stem,
        **copy.deepcopy(PRIMUS_KEYS if pretrained.family == "primus" else RESENC_KEYS),
        "pt_num_in_channels": pretrained.in_channels,
        "pt_used_patchsize": list(pretrained.pretrain_patch_size),
        "pt_recommended_downstream_patchsize": list(pretrained.patch_size),
        "citations": [],
    }


def plan_and_preprocess(
    dataset_id: int,
    preprocessed: Path,
    network: Network,
    spacing_mode: str | float,
    batch_size: int,
    pretrained: Pretrained | None,
    dataset_json: dict[str, Any],
    processes: int,
    check_integrity: bool = True,
) -> dict[str, Any]:
    """Fingerprint, nnU-Net's plans, our plans (saved as ``openmindPlans.json``)
    and nnU-Net's preprocessing; returns our plans. Needs the nnU-Net
    environment variables set (`finetune.run.nnunet_env`). `check_integrity`:
    nnU-Net's dataset check (geometry of every image against its labels; 5 s
    for two cases on a CPU), which a corpus our generator wrote can skip."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import (
        ExperimentPlanner,
    )
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprint_dataset,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    extract_fingerprint_dataset(
        dataset_id,
        num_processes=processes,
        check_dataset_integrity=True,
        verbose=False,
        show_progress_bar=False,
    )
    default, _ = plan_experiment_dataset(dataset_id, ExperimentPlanner)
    folder = preprocessed / default["dataset_name"]
    planned = default["configurations"][CONFIGURATION]["spacing"]
    spacing = target_spacing(spacing_mode, network, planned)
    plans = adapt_plans(default, dataset_json, network, spacing, batch_size, pretrained)
    (folder / f"{PLANS_NAME}.json").write_text(json.dumps(plans, indent=2))
    preprocess_dataset(
        dataset_id,
        PLANS_NAME,
        (CONFIGURATION,),
        (processes,),
        verbose=False,
        show_progress_bar=False,
    )
    return plans
