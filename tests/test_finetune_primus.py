"""Primus checkpoints: both layouts read back, nnU-Net builds the network from
the plans, the encoder loads tensor by tensor (the positional embedding
interpolated to a new patch), and a Primus fine-tunes with Warm-Up at 3e-5 and
AdamW by default."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dynamic_network_architectures.architectures.primus import Primus

from openmind_curate.errors import InputError
from openmind_curate.finetune import plans, run, weights
from openmind_curate.train import models, nnssl

PATCH = (32, 32, 32)


def _meta(arch: str = "tiny-primus", patch=PATCH) -> models.EncoderMeta:
    return models.EncoderMeta(arch, patch, (1.0, 1.0, 1.0))


def _build(pretrained: nnssl.Pretrained, patch=None, out_channels: int = 3, in_channels=1):
    """The fine-tuning network as our nnU-Net trainer builds it from the plans."""
    from openmind_curate.finetune.trainers import ScheduledTrainer

    network = plans.network_of(pretrained, {}, patch)
    config = SimpleNamespace(
        network_arch_class_name=network.architecture["network_class_name"],
        network_arch_init_kwargs=network.architecture["arch_kwargs"],
        network_arch_init_kwargs_req_import=network.architecture["_kw_requires_import"],
    )
    # deep supervision asked for, as nnU-Net does: a Primus must not get it
    return ScheduledTrainer.build_network_architecture(
        None, config, in_channels, out_channels, True
    )


@pytest.fixture
def tiny(tmp_path):
    """A tiny Primus saved in both layouts."""
    torch.manual_seed(5)
    net = models.build("tiny-primus", out_channels=1, patch=32)
    ours = models.save_encoder(net, tmp_path / "encoder.pt", _meta())
    theirs = nnssl.save_checkpoint(net, tmp_path / "nnssl_checkpoint.pth", _meta())
    return net, ours, theirs


# ----------------------------------------------------------- pos-embed interpolation


def _ramp(grid, axis: int) -> torch.Tensor:
    """(1, N, 2): channel 0 the token's index along `axis`, channel 1 constant 5."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"))
    values = idx[axis].float().reshape(1, -1, 1)
    return torch.cat([values, torch.full_like(values, 5.0)], dim=2)


def test_pos_embed_interpolation_known_answers():
    same = _ramp((4, 4, 4), 2)
    assert torch.equal(weights.interpolate_pos_embed(same, (4, 4, 4), (4, 4, 4)), same)
    # 4 -> 8 along the last axis (align_corners=False): source x = j/2 - 1/4, clamped
    up = weights.interpolate_pos_embed(_ramp((4, 4, 4), 2), (4, 4, 4), (4, 4, 8))
    grid = up[0, :, 0].reshape(4, 4, 8)
    expected = torch.tensor([0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])
    for i in range(4):
        for j in range(4):
            assert torch.allclose(grid[i, j], expected), (i, j)
    assert torch.allclose(up[0, :, 1], torch.full((128,), 5.0))  # a constant stays
    # the first axis, on a non-cubic grid: 2 -> 4 gives 0, 1/4, 3/4, 1; 4 -> 2 gives 1/2, 5/2
    first = weights.interpolate_pos_embed(_ramp((2, 3, 1), 0), (2, 3, 1), (4, 3, 1))
    assert torch.allclose(first[0, :, 0].reshape(4, 3)[:, 1], torch.tensor([0, 0.25, 0.75, 1]))
    down = weights.interpolate_pos_embed(_ramp((4, 1, 1), 0), (4, 1, 1), (2, 1, 1))
    assert torch.allclose(down[0, :, 0], torch.tensor([0.5, 2.5]))
    with pytest.raises(InputError, match="not a"):
        weights.interpolate_pos_embed(same, (4, 4, 3), (4, 4, 4))


# ----------------------------------------------------------- both layouts


def test_both_layouts_read_back_and_load_every_tensor(tiny):
    net, ours, theirs = tiny
    plan = torch.load(theirs, weights_only=True)["nnssl_adaptation_plan"]
    for key, value in nnssl.PRIMUS_KEYS.items():
        assert plan[key] == value, key
    source = models.encoder_state(net)
    for path in (ours, theirs):
        pretrained = nnssl.read_pretrained(path)
        assert pretrained.family == "primus" and pretrained.arch == "tiny-primus"
        arch = pretrained.architecture
        assert arch["network_class_name"] == nnssl.PRIMUS_CLASS
        kw = arch["arch_kwargs"]
        assert (kw["embed_dim"], kw["eva_depth"], kw["eva_numheads"]) == (48, 2, 2)
        assert kw["patch_embed_size"] == [8, 8, 8]
        # nnssl's Primus: layer scale and the inner attention norm, read off the tensors
        assert (kw["init_values"], kw["scale_attn_inner"]) == (0.1, True)
        fine = _build(pretrained)
        assert isinstance(fine, Primus)
        loaded = weights.load_encoder(fine, pretrained, 1, patch=PATCH)
        target = weights.encoder_state(fine)
        assert loaded.tensors == len(source) == len(target) and loaded.resized_pos_embed is None
        for key, value in source.items():
            assert torch.equal(target[key], value), (path.name, key)
        # the decoder keeps its fresh initialisation
        fresh = fine.up_projection.decode[0][0].weight
        assert not torch.equal(fresh, net.up_projection.decode[0][0].weight)


def test_pos_embed_interpolated_to_the_fine_tuning_patch(tiny):
    net, ours, _ = tiny
    pretrained = nnssl.read_pretrained(ours)
    fine = _build(pretrained, patch=(48, 32, 40))
    assert fine.eva.pos_embed.shape == (1, 6 * 4 * 5, 48)
    loaded = weights.load_encoder(fine, pretrained, 1, patch=(48, 32, 40))
    assert loaded.resized_pos_embed == ((4, 4, 4), (6, 4, 5))
    expected = weights.interpolate_pos_embed(net.eva.pos_embed.detach(), (4, 4, 4), (6, 4, 5))
    assert torch.equal(fine.eva.pos_embed.detach(), expected)
    assert torch.equal(fine.eva.blocks[1].mlp.fc2.weight, net.eva.blocks[1].mlp.fc2.weight)
    with pytest.raises(InputError, match="patch size is needed"):
        weights.load_encoder(_build(pretrained, patch=(48, 32, 40)), pretrained, 1)


def test_pos_embed_resized_when_only_the_grid_differs(tiny):
    """A 4x4x4 grid and an 8x4x2 grid have the same 64 tokens, so the tensor
    shapes agree; the embedding must still be interpolated to the new grid."""
    net, ours, _ = tiny
    pretrained = nnssl.read_pretrained(ours)
    fine = _build(pretrained, patch=(64, 32, 16))
    assert fine.eva.pos_embed.shape == net.eva.pos_embed.shape
    loaded = weights.load_encoder(fine, pretrained, 1, patch=(64, 32, 16))
    assert loaded.resized_pos_embed == ((4, 4, 4), (8, 4, 2))
    expected = weights.interpolate_pos_embed(net.eva.pos_embed.detach(), (4, 4, 4), (8, 4, 2))
    assert torch.equal(fine.eva.pos_embed.detach(), expected)


def test_stem_repeated_over_channels(tiny):
    net, ours, _ = tiny
    pretrained = nnssl.read_pretrained(ours)
    fine = _build(pretrained, in_channels=2)
    assert weights.load_encoder(fine, pretrained, 2, patch=PATCH).repeated_stem
    w1 = net.down_projection.proj.weight.detach()
    assert torch.allclose(fine.down_projection.proj.weight[:, 1:2], w1 / 2)


def test_contrastive_encoder_only_exports_load(tmp_path):
    torch.manual_seed(9)
    primus = models.build("tiny-primus", patch=32)
    del primus.up_projection  # what a contrastive method exports
    resenc = models.build("tiny")
    only = torch.nn.Module()
    only.encoder = resenc.encoder
    for name, export, arch in (("p", primus, "tiny-primus"), ("r", only, "tiny")):
        files = (
            models.save_encoder(export, tmp_path / f"{name}.pt", _meta(arch)),
            nnssl.save_checkpoint(export, tmp_path / f"{name}.pth", _meta(arch)),
        )
        source = models.encoder_state(export)
        for path in files:
            pretrained = nnssl.read_pretrained(path)
            fine = _build(pretrained) if arch == "tiny-primus" else models.build("tiny")
            loaded = weights.load_encoder(fine, pretrained, 1, patch=PATCH)
            assert loaded.tensors == len(source) == len(weights.encoder_state(fine))
            for key, value in source.items():
                assert torch.equal(weights.encoder_state(fine)[key], value), (path.name, key)


def test_mismatching_architectures_are_refused_naming_tensors(tiny, tmp_path):
    _, ours, _ = tiny
    pretrained = nnssl.read_pretrained(ours)
    with pytest.raises(InputError, match=r"missing from the checkpoint \(first: stages"):
        weights.load_encoder(models.build("tiny"), pretrained, 1, patch=PATCH)
    deeper = Primus(1, 48, (8, 8, 8), 3, eva_depth=3, eva_numheads=2, input_shape=PATCH)
    with pytest.raises(InputError, match=r"missing from the checkpoint \(first: eva.blocks.2"):
        weights.load_encoder(deeper, pretrained, 1, patch=PATCH)
    wider = Primus(1, 96, (8, 8, 8), 3, eva_depth=2, eva_numheads=2, input_shape=PATCH)
    with pytest.raises(InputError, match=r"of another shape \(first: down_projection.proj.bias"):
        weights.load_encoder(wider, pretrained, 1, patch=PATCH)
    models.save_encoder(models.build("tiny"), tmp_path / "cnn.pt", _meta("tiny"))
    cnn = nnssl.read_pretrained(tmp_path / "cnn.pt")
    with pytest.raises(InputError, match=r"not in the network \(first: stages"):
        weights.load_encoder(_build(pretrained), cnn, 1, patch=PATCH)


# ----------------------------------------------------------- nnssl's own Primus


def test_nnssl_primus_checkpoint(tmp_path):
    """nnssl's Primus: layer scale (init_values 0.1) and the inner attention norm,
    an MAE decoder beside the encoder, PrimusX-style kwargs; and its PrimusM name."""
    torch.manual_seed(2)
    net = Primus(
        1,
        48,
        (8, 8, 8),
        1,
        eva_depth=2,
        eva_numheads=2,
        input_shape=PATCH,
        init_values=0.1,
        scale_attn_inner=True,
    )
    state = {**net.state_dict(), "decoder.eva.blocks.0.norm1.weight": torch.ones(48)}
    plan = {
        "architecture_plans": {
            "arch_class_name": "PrimusX",
            "arch_kwargs": {
                "embed_dim": 48,
                "patch_embed_size": [8, 8, 8],
                "encoder_eva_depth": 2,
                "encoder_eva_numheads": 2,
            },
            "arch_kwargs_requiring_import": [],
        },
        "pretrain_plan": {"configurations": {"x": {"spacing": None, "patch_size": [16] * 3}}},
        "pretrain_patch_size": [32, 32, 32],  # the fork lets this win
        "pretrain_num_input_channels": 1,
        "recommended_downstream_patchsize": [32, 32, 32],
        **nnssl.PRIMUS_KEYS,
    }
    torch.save({"network_weights": state, "nnssl_adaptation_plan": plan}, tmp_path / "x.pth")
    pretrained = nnssl.read_pretrained(tmp_path / "x.pth")
    kw = pretrained.architecture["arch_kwargs"]
    assert (kw["init_values"], kw["scale_attn_inner"]) == (0.1, True)
    assert pretrained.pretrain_patch_size == PATCH and pretrained.family == "primus"
    fine = _build(pretrained)
    assert weights.load_encoder(fine, pretrained, 1, patch=PATCH).tensors == len(
        models.encoder_state(net)
    )
    assert torch.equal(fine.eva.blocks[0].gamma_1, net.eva.blocks[0].gamma_1)
    # nnssl's name for Primus-M: its preset's sizes, flags from the tensors
    plan["architecture_plans"] = {"arch_class_name": "PrimusM", "arch_kwargs": {}}
    torch.save({"network_weights": state, "nnssl_adaptation_plan": plan}, tmp_path / "m.pth")
    kw = nnssl.read_pretrained(tmp_path / "m.pth").architecture["arch_kwargs"]
    assert (kw["embed_dim"], kw["eva_depth"], kw["eva_numheads"], kw["init_values"]) == (
        864,
        16,
        12,
        0.1,
    )


def test_primus_m_is_written_under_nnssls_name():
    meta = _meta("primus-m", (160, 160, 160))
    layer_scale = {"eva.blocks.0.gamma_1": torch.ones(1), "eva.blocks.0.attn.norm.weight": 0}
    written = nnssl.adaptation_plan(meta, layer_scale)["architecture_plans"]
    assert written["arch_class_name"] == "PrimusM"
    assert written["arch_kwargs"] is None  # as nnssl writes its presets
    # our primus-m is nnssl's Primus-M (models.PrimusConfig), so the fork can rebuild it
    assert nnssl.adaptation_plan(meta)["architecture_plans"]["arch_class_name"] == "PrimusM"
    plain = nnssl.adaptation_plan(meta, {"eva.blocks.0.norm1.weight": 0})["architecture_plans"]
    assert plain["arch_class_name"] == nnssl.PRIMUS_CLASS


# ----------------------------------------------------------- plans and defaults


def test_plans_patch_is_a_multiple_of_the_tokens(tiny):
    _, ours, _ = tiny
    pretrained = nnssl.read_pretrained(ours)
    odd = nnssl.Pretrained(**{**pretrained.__dict__, "patch_size": (42, 32, 30)})
    network = plans.network_of(odd, {}, None)
    assert network.patch_size == (40, 32, 32) and network.divisor == 8
    assert network.architecture["arch_kwargs"]["input_shape"] == [40, 32, 32]
    with pytest.raises(InputError, match="multiple of 8; the nearest is \\(40, 32, 32\\)"):
        plans.network_of(pretrained, {}, (36, 32, 32))
    info = plans.pretrain_info(pretrained)
    assert info["key_to_lpe"] == "eva.pos_embed" and info["key_to_encoder"] == "eva"


def test_primus_defaults_warmup_at_3e5_with_adamw(tiny):
    _, ours, _ = tiny
    pretrained = nnssl.read_pretrained(ours)
    config = run.with_checkpoint(
        run.FinetuneConfig(data=Path("d"), out=Path("o"), pretrained=ours), pretrained
    )
    assert (config.schedule_name, config.learning_rate) == ("warmup", 3e-5)
    s = run.settings_for(
        run.FinetuneConfig(data=Path("d"), out=Path("o"), pretrained=ours), pretrained
    )
    assert (s.schedule, s.lr, s.optimizer, s.weight_decay, s.grad_clip) == (
        "warmup",
        3e-5,
        "adamw",
        5e-2,
        1.0,
    )
    mine = run.FinetuneConfig(
        data=Path("d"), out=Path("o"), pretrained=ours, schedule="sawtooth", lr=1e-4
    )
    s = run.settings_for(mine, pretrained)
    assert (s.schedule, s.lr, s.optimizer) == ("sawtooth", 1e-4, "adamw")  # the user wins
    scratch = run.FinetuneConfig(data=Path("d"), out=Path("o"), arch="tiny-primus")
    assert (scratch.schedule_name, scratch.learning_rate) == ("default", 3e-4)
    cnn = run.FinetuneConfig(data=Path("d"), out=Path("o"), pretrained=ours, family="resenc")
    assert (cnn.schedule_name, cnn.learning_rate) == ("sawtooth", 1e-3)


#: nnU-Net's default plans, as much of them as a trainer's initialisation reads.
NNUNET_PLANS = {
    "dataset_name": "Dataset007_Toy",
    "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
    "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1, 2],
    "transpose_backward": [0, 1, 2],
    "experiment_planner_used": "ExperimentPlanner",
    "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {},
    "configurations": {
        "3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "spacing": [1.0, 1.0, 1.0],
            "patch_size": [16, 16, 16],
            "batch_size": 2,
            "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "median_image_size_in_voxels": [24, 24, 24],
            "batch_dice": False,
        }
    },
}
DATASET_JSON = {
    "channel_names": {"0": "T1w"},
    "labels": {"background": 0, "ball": 1, "box": 2},
    "numTraining": 2,
    "file_ending": ".nii.gz",
}


def test_nnunet_trainer_fine_tunes_a_primus(tmp_path):
    """One nnU-Net trainer initialisation (24^3 patches, the encoder pre-trained
    at 16^3) from our plans, and one step; nnU-Net's planning and
    preprocessing are left out (an empty preprocessed folder)."""
    torch.manual_seed(4)
    net = models.build("tiny-primus", patch=16)
    encoder = models.save_encoder(net, tmp_path / "encoder.pt", _meta(patch=(16, 16, 16)))
    pretrained = nnssl.read_pretrained(encoder)
    network = plans.network_of(pretrained, {}, (24, 24, 24))
    planned = plans.adapt_plans(NNUNET_PLANS, DATASET_JSON, network, [1.0] * 3, 2, pretrained)
    identifier = planned["configurations"]["3d_fullres"]["data_identifier"]
    folder = tmp_path / "run" / "nnUNet_preprocessed" / "Dataset007_Toy" / identifier
    folder.mkdir(parents=True)
    (folder / "case.b2nd").write_bytes(b"")  # nnU-Net infers its dataset class from it
    config = run.FinetuneConfig(data=tmp_path, out=tmp_path / "run", pretrained=encoder, epochs=10)
    settings = run.settings_for(config, pretrained)
    prep = run.Prepared(tmp_path / "run", "Dataset007_Toy", planned, DATASET_JSON, [], pretrained)
    with run.nnunet_env(prep.run, 0):
        trainer = run.make_trainer(prep, settings, 0, "cpu")
        trainer.initialize()
    assert type(trainer).__name__ == "WarmUpTrainer" and isinstance(trainer.network, Primus)
    assert trainer.loaded.resized_pos_embed == ((2, 2, 2), (3, 3, 3))
    assert trainer.loaded.tensors == len(models.encoder_state(net))
    optimizer = trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["weight_decay"] == 5e-2
    trainer.on_train_epoch_start()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-5)  # W = 1 at 10 epochs
    before = trainer.network.up_projection.decode[2].weight.detach().clone()
    batch = {
        "data": torch.randn(2, 1, 24, 24, 24),
        "target": torch.randint(0, 3, (2, 1, 24, 24, 24)).float(),
    }
    out = trainer.train_step(batch)
    assert torch.isfinite(torch.as_tensor(out["loss"]))
    assert not torch.equal(before, trainer.network.up_projection.decode[2].weight)
