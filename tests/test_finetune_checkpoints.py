"""Checkpoints that travel: ours in nnssl's layout, nnssl's into our loader."""

from __future__ import annotations

import json

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.finetune import weights
from openmind_curate.train import models, nnssl

#: What the authors' fork reads from ``nnssl_adaptation_plan`` (like_nnssl.py and
#: PretrainedTrainer), as paths into the plan.
FORK_READS = [
    ("architecture_plans", "arch_class_name"),
    ("architecture_plans", "arch_kwargs"),
    ("architecture_plans", "arch_kwargs_requiring_import"),
    ("pretrain_num_input_channels",),
    ("recommended_downstream_patchsize",),
    ("key_to_encoder",),
    ("key_to_stem",),
    ("keys_to_in_proj",),
    ("key_to_lpe",),
]


def _tiny_dna(features=(8, 16, 32), in_channels=1) -> nn.Module:
    """A ResidualEncoderUNet made directly with dynamic-network-architectures,
    as nnssl would make it (not through our `models.build`)."""
    n = len(features)
    return ResidualEncoderUNet(
        input_channels=in_channels,
        n_stages=n,
        features_per_stage=list(features),
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * n,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        n_blocks_per_stage=[1] * n,
        num_classes=1,
        n_conv_per_stage_decoder=[1] * (n - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


@pytest.fixture
def nnssl_file(tmp_path):
    """A checkpoint written the way nnssl writes one, from the plan keys the
    fork reads (arch kwargs as strings, as nnssl serialises them)."""
    torch.manual_seed(7)
    net = _tiny_dna()
    kwargs = {
        "n_stages": 3,
        "features_per_stage": [8, 16, 32],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3,
        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        "n_blocks_per_stage": [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1],
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.modules.activation.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    plan = {
        "architecture_plans": {
            "arch_class_name": "ResidualEncoderUNet",
            "arch_kwargs": kwargs,
            "arch_kwargs_requiring_import": ["conv_op", "norm_op", "nonlin"],
        },
        "pretrain_plan": {
            "configurations": {"onemmiso": {"spacing": [1, 1, 1], "patch_size": [32, 32, 32]}}
        },
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": [32, 32, 32],
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        "key_to_lpe": None,
    }
    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": net.state_dict(), "nnssl_adaptation_plan": plan}, path)
    return path, net


def _network_for(pretrained: nnssl.Pretrained, in_channels: int = 1) -> nn.Module:
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = pretrained.architecture
    return get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        in_channels,
        4,
        deep_supervision=False,
    )


def test_nnssl_checkpoint_loads(nnssl_file):
    path, source = nnssl_file
    pretrained = nnssl.read_pretrained(path)
    assert (pretrained.layout, pretrained.patch_size, pretrained.spacing) == (
        "nnssl",
        (32, 32, 32),
        (1.0, 1.0, 1.0),
    )
    net = _network_for(pretrained)
    loaded = weights.load_encoder(net, pretrained, 1)
    expected = source.encoder.state_dict()
    assert loaded.tensors == len(expected) == len(net.encoder.state_dict())
    for key, value in expected.items():
        assert torch.equal(net.encoder.state_dict()[key], value), key
    # the decoder is not the pre-training's
    assert not torch.equal(
        net.decoder.stages[0].convs[0].conv.weight, source.decoder.stages[0].convs[0].conv.weight
    )


def test_ours_travel_both_ways_bit_identically(tmp_path):
    torch.manual_seed(3)
    model = models.build("tiny")
    meta = models.EncoderMeta("tiny", (32, 32, 32), (2.0, 2.0, 2.0))
    ours = models.save_encoder(model, tmp_path / "encoder.pt", meta)
    theirs = nnssl.save_checkpoint(model, tmp_path / "nnssl_checkpoint.pth", meta)
    blob = torch.load(theirs, map_location="cpu", weights_only=True)  # what the fork does
    plan = blob["nnssl_adaptation_plan"]
    for path in FORK_READS:
        node = plan
        for key in path:
            assert key in node, path
            node = node[key]
    config = next(iter(plan["pretrain_plan"]["configurations"].values()))
    assert config["spacing"] == [2.0, 2.0, 2.0] and config["patch_size"] == [32, 32, 32]
    json.dumps(plan)  # plain types only
    for path in (ours, theirs):
        pretrained = nnssl.read_pretrained(path)
        net = _network_for(pretrained)
        assert weights.load_encoder(net, pretrained, 1).tensors == len(net.encoder.state_dict())
        for key, value in model.encoder.state_dict().items():
            assert torch.equal(net.encoder.state_dict()[key], value), (path.name, key)


def test_wrong_architecture_is_refused(nnssl_file, tmp_path):
    path, _ = nnssl_file
    pretrained = nnssl.read_pretrained(path)
    other = _tiny_dna(features=(8, 16, 24))
    with pytest.raises(InputError, match="does not fit the network.*of another shape"):
        weights.load_encoder(other, pretrained, 1)
    deeper = _tiny_dna(features=(8, 16, 32, 32))
    with pytest.raises(InputError, match="missing from the checkpoint"):
        weights.load_encoder(deeper, pretrained, 1)
    blob = torch.load(path, weights_only=True)
    blob["nnssl_adaptation_plan"]["architecture_plans"]["arch_class_name"] = "UxLSTM"
    torch.save(blob, tmp_path / "other.pth")
    with pytest.raises(InputError, match="UxLSTM"):
        nnssl.read_pretrained(tmp_path / "other.pth")
    # a Primus plan over ResEnc weights reads, but fits no Primus: the tensors are named
    blob["nnssl_adaptation_plan"]["architecture_plans"]["arch_class_name"] = "PrimusM"
    torch.save(blob, tmp_path / "primus.pth")
    primus = nnssl.read_pretrained(tmp_path / "primus.pth")
    assert primus.family == "primus"
    with pytest.raises(InputError, match="not in the network"):
        weights.load_encoder(models.build("tiny-primus", patch=32), primus, 1, patch=(32,) * 3)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        nnssl.read_pretrained(tmp_path / "junk.pt")


def test_stem_repeated_over_channels(nnssl_file):
    path, source = nnssl_file
    pretrained = nnssl.read_pretrained(path)
    net = _network_for(pretrained, in_channels=3)
    loaded = weights.load_encoder(net, pretrained, 3)
    assert loaded.repeated_stem
    w1 = source.encoder.stem.convs[0].conv.weight  # (8, 1, 3, 3, 3)
    w3 = net.encoder.stem.convs[0].conv.weight
    assert w3.shape == (8, 3, 3, 3, 3)
    for c in range(3):
        assert torch.allclose(w3[:, c : c + 1], w1 / 3)
    # the same image in every channel gives the pre-trained stem's output
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(
            net.encoder.stem.convs[0].conv(x.repeat(1, 3, 1, 1, 1)),
            source.encoder.stem.convs[0].conv(x),
            atol=1e-5,
        )
