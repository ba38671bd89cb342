"""The planning step: nnU-Net's default plans rewritten for a pre-trained network
(appendix C.1: 1 mm and z-score by default, CT normalization for CT, nnU-Net's
spacing on request), and the leave-one-out split for small datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from openmind_curate.errors import InputError
from openmind_curate.finetune import plans, run
from openmind_curate.train.nnssl import Pretrained, architecture

#: The parts of nnU-Net's default plans that the rewrite reads or keeps.
DEFAULT = {
    "dataset_name": "Dataset009_X",
    "plans_name": "nnUNetPlans",
    "configurations": {
        "3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres",
            "spacing": [0.7, 0.7, 3.0],
            "patch_size": [128, 128, 40],
            "batch_size": 2,
            "normalization_schemes": ["ZScoreNormalization", "CTNormalization"],
            "use_mask_for_norm": [False, False],
            "next_stage": "3d_cascade_fullres",
            "architecture": {"network_class_name": "PlainConvUNet"},
        }
    },
}


def _pretrained(spacing=(1.0, 1.0, 1.0)) -> Pretrained:
    return Pretrained(
        path=Path("/ckpt/enc.pth"),
        layout="nnssl",
        arch="ResEncL",
        architecture=architecture("resenc-l"),
        encoder={},
        in_channels=1,
        patch_size=(160, 160, 160),
        pretrain_patch_size=(160, 160, 160),
        spacing=spacing,
    )


def test_plans_for_the_checkpoints_network():
    pretrained = _pretrained()
    network = plans.network_of(pretrained, architecture("tiny"), None)
    assert network.patch_size == (160, 160, 160) and network.divisor == 32
    channels = {"0": "T1w", "1": "CT"}
    out = plans.adapt_plans(DEFAULT, {"channel_names": channels}, network, [1.0] * 3, 2, pretrained)
    config = out["configurations"]["3d_fullres"]
    assert list(out["configurations"]) == ["3d_fullres"] and out["plans_name"] == "openmindPlans"
    assert config["spacing"] == [1.0, 1.0, 1.0]
    assert config["normalization_schemes"] == ["ZScoreNormalization", "CTNormalization"]
    assert config["patch_size"] == [160, 160, 160] and config["batch_size"] == 2
    assert config["architecture"]["arch_kwargs"]["features_per_stage"] == [
        32,
        64,
        128,
        256,
        320,
        320,
    ]
    assert config["architecture"]["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6]
    assert "next_stage" not in config
    assert config["data_identifier"] != DEFAULT["configurations"]["3d_fullres"]["data_identifier"]
    info = out["pretrain_info"]  # what the fork's PretrainedTrainer reads
    assert info["pt_recommended_downstream_patchsize"] == [160, 160, 160]
    assert info["key_to_encoder"] == "encoder.stages" and info["pt_num_in_channels"] == 1
    assert DEFAULT["configurations"]["3d_fullres"]["spacing"] == [0.7, 0.7, 3.0]  # not mutated


def test_spacing_modes():
    network = plans.network_of(_pretrained((2.0, 2.0, 2.0)), architecture("tiny"), (64,) * 3)
    planned = [0.7, 0.7, 3.0]
    assert plans.target_spacing("pretrained", network, planned) == [2.0, 2.0, 2.0]
    assert plans.target_spacing("planned", network, planned) == planned
    assert plans.target_spacing(1.5, network, planned) == [1.5, 1.5, 1.5]
    scratch = plans.network_of(None, architecture("tiny"), (32,) * 3)
    assert plans.target_spacing("pretrained", scratch, planned) == [1.0, 1.0, 1.0]
    assert plans.normalization_schemes({"1": "ct", "0": "T2"}) == [
        "ZScoreNormalization",
        "CTNormalization",
    ]
    with pytest.raises(InputError, match="multiple of 4"):
        plans.network_of(None, architecture("tiny"), (30, 32, 32))
    with pytest.raises(InputError, match="--patch"):
        plans.network_of(None, architecture("tiny"), None)


def test_small_datasets_get_one_fold_per_case():
    assert run.splits(["a", "b", "c", "d", "e"], (0,)) is None  # nnU-Net's own 5 folds
    assert run.splits(["a", "b"], ("all",)) is None
    assert run.splits(["a", "b", "c"], (0, 2)) == [
        {"train": ["b", "c"], "val": ["a"]},
        {"train": ["a", "c"], "val": ["b"]},
        {"train": ["a", "b"], "val": ["c"]},
    ]
    with pytest.raises(InputError, match="3 labelled cases make 3 folds"):
        run.splits(["a", "b", "c"], (3,))
    with pytest.raises(InputError, match="--fold all"):
        run.splits(["a"], (0,))
