"""The nnU-Net trainers: what each stage trains, its learning rate, where the
optimizer is rebuilt, a continued run, a frozen encoder, and a short run that
learns - on a toy nnU-Net raw dataset (5 cases of 24^3, a ball and a box)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openmind_curate.finetune import dataset, run, schedules
from openmind_curate.train import models, nnssl
from openmind_curate.train.models import unwrap

E, W = 9, 3  # stages: decoder 0-2 (H = 1), whole-network warm-up 3-5, poly 6-8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The toy dataset planned and preprocessed for the tiny network (16^3)."""
    base = tmp_path_factory.mktemp("ft")
    data = dataset.write_toy_dataset(base / "Dataset007_Toy")
    torch.manual_seed(11)
    encoder = base / "encoder.pt"
    models.save_encoder(
        models.build("tiny"), encoder, models.EncoderMeta("tiny", (16, 16, 16), (1.0, 1.0, 1.0))
    )
    config = run.FinetuneConfig(data=data, out=base / "run", pretrained=encoder, patch=None)
    run.set_processes()
    return run.prepare(config, run.check(config), lambda _: None), config


def _trainer(prepared, tmp_path, **settings):
    prep, config = prepared
    base = run.settings_for(config, prep.pretrained)
    fields = {**base.__dict__, "epochs": E, "stage_len": W, **settings}
    with run.nnunet_env(prep.run, 0):
        import os

        os.environ["nnUNet_results"] = str(tmp_path / "results")
        trainer = run.make_trainer(prep, type(base)(**fields), 0, "cpu")
        trainer.initialize()
    return trainer


def _ids(params) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize("schedule", ["sawtooth", "valley", "frozen", "warmup"])
def test_each_stage_trains_what_it_says(prepared, tmp_path, schedule):
    trainer = _trainer(prepared, tmp_path, schedule=schedule)
    net = unwrap(trainer.network)
    encoder = _ids(net.encoder.parameters())
    everything = _ids(net.parameters())
    decoder_own = _ids(net.decoder.parameters()) - encoder
    optimizers = []
    for epoch in range(E):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        stage = schedules.stage_at(schedule, epoch, E, W)
        in_optimizer = _ids(p for g in trainer.optimizer.param_groups for p in g["params"])
        with_grad = {id(p) for p in net.parameters() if p.requires_grad}
        expected = decoder_own if stage.decoder_only else everything
        assert in_optimizer == expected, (schedule, epoch)
        assert with_grad == expected, (schedule, epoch)
        lr = trainer.optimizer.param_groups[0]["lr"]
        assert lr == pytest.approx(schedules.lr_at(schedule, epoch, E, W, 1e-3))
        optimizers.append(trainer.optimizer)
    # a fresh optimizer exactly where a stage says so, the same one elsewhere
    for epoch in range(1, E):
        stage = schedules.stage_at(schedule, epoch, E, W)
        fresh = stage.start == epoch and stage.fresh_optimizer
        assert (optimizers[epoch] is not optimizers[epoch - 1]) == fresh, (schedule, epoch)


def test_reference_param_groups_train_the_encoder(prepared, tmp_path):
    """The authors' optimizer over `network.decoder.parameters()` holds the encoder too."""
    trainer = _trainer(prepared, tmp_path, schedule="sawtooth", reference_param_groups=True)
    net = unwrap(trainer.network)
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    in_optimizer = _ids(p for g in trainer.optimizer.param_groups for p in g["params"])
    assert _ids(net.encoder.parameters()) <= in_optimizer
    assert in_optimizer == _ids(net.decoder.parameters())


def test_continued_run_keeps_the_warm_up(prepared, tmp_path):
    """Continued at epoch 4 (inside W..2W), the rate is the straight run's ramp,
    2/3 of the peak - not the peak the authors' get_stage() would give."""
    straight = _trainer(prepared, tmp_path / "a", schedule="sawtooth")
    for epoch in range(4):
        straight.current_epoch = epoch
        straight.on_train_epoch_start()
    straight.save_checkpoint(str(tmp_path / "ckpt.pth"))  # as after epoch 3
    straight.current_epoch = 4
    straight.on_train_epoch_start()
    continued = _trainer(prepared, tmp_path / "b", schedule="sawtooth")
    continued.load_checkpoint(str(tmp_path / "ckpt.pth"))
    assert continued.current_epoch == 4
    continued.on_train_epoch_start()
    lr = continued.optimizer.param_groups[0]["lr"]
    assert lr == straight.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 2 / 3)
    assert continued.stage.name == "warmup_all"
    net = unwrap(continued.network)
    assert _ids(p for g in continued.optimizer.param_groups for p in g["params"]) == _ids(
        net.parameters()
    )


def test_frozen_encoder_stays_bit_identical_and_run_learns(prepared, tmp_path):
    """Two epochs of Frozen: the loaded encoder is the checkpoint's, bit for bit,
    before and after; the decoder moved; nnU-Net wrote its summary.json."""
    prep, _ = prepared
    loaded = nnssl.read_pretrained(prep.pretrained.path).encoder
    trainer = _trainer(
        prepared, tmp_path, schedule="frozen", epochs=2, stage_len=1, iters_per_epoch=3
    )
    net = unwrap(trainer.network)
    for key, value in loaded.items():
        assert torch.equal(net.encoder.state_dict()[key], value), key
    decoder_before = {k: v.clone() for k, v in net.decoder.seg_layers.state_dict().items()}
    trainer.run_training()
    for key, value in loaded.items():
        assert torch.equal(net.encoder.state_dict()[key], value), key
    changed = [
        not torch.equal(v, net.decoder.seg_layers.state_dict()[k])
        for k, v in decoder_before.items()
    ]
    assert any(changed)
    assert (Path(trainer.output_folder) / "checkpoint_final.pth").exists()


def test_trainer_names_match_the_classes():
    """nnU-Net names a run's folder after the trainer class; DDP runs find it by name."""
    from openmind_curate.finetune.trainers import SCHEDULE_TRAINERS

    assert {k: v.__name__ for k, v in SCHEDULE_TRAINERS.items()} == run.SCHEDULE_TRAINER_NAMES
