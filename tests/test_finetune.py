"""Segmentation fine-tuning: loss, freezing, encoder loading, data reading,
a short run that learns, the demo function and the CLI's errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from openmind_curate.cli import finetune as cli_finetune
from openmind_curate.train import finetune as ft
from openmind_curate.train import models, segdata

# ---------------------------------------------------------------- fixtures


def _save(path: Path, data: np.ndarray, zoom: float = 1.0, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(dtype), np.diag([zoom, zoom, zoom, 1.0])), str(path))


def _toy_case(rng: np.random.Generator, n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Label 1: a bright ball, label 2: a dark box; the image shows them plainly."""
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"))
    centre = rng.uniform(7, n - 7, 3)
    label = np.zeros((n, n, n), np.uint8)
    label[((grid - centre[:, None, None, None]) ** 2).sum(0) < rng.uniform(9, 25)] = 1
    lo = rng.integers(2, n - 9, 3)
    box = tuple(slice(a, a + 6) for a in lo)
    label[box] = np.where(label[box] == 0, 2, label[box])
    image = 100.0 + np.select([label == 1, label == 2], [60.0, -60.0], 0.0)
    return image + rng.normal(0, 4, image.shape), label


@pytest.fixture(scope="module")
def nnunet_dir(tmp_path_factory) -> Path:
    """nnU-Net raw layout: 5 cases of 24^3 (1 mm) with labels 0..2."""
    root = tmp_path_factory.mktemp("Dataset001_Toy")
    rng = np.random.default_rng(0)
    for i in range(5):
        image, label = _toy_case(rng)
        _save(root / "imagesTr" / f"toy_{i:03d}_0000.nii.gz", image)
        _save(root / "labelsTr" / f"toy_{i:03d}.nii.gz", label, dtype=np.uint8)
    doc = {
        "channel_names": {"0": "T1"},
        "labels": {"background": 0, "ball": 1, "box": 2},
        "numTraining": 5,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    model = models.build("tiny")
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    models.save_encoder(model, path, models.EncoderMeta("tiny", (16, 16, 16), (1.0, 1.0, 1.0)))
    return path, {k: v.clone() for k, v in model.encoder.state_dict().items()}


def _config(data: Path, out: Path, **kw) -> ft.FinetuneConfig:
    base = dict(epochs=2, iters_per_epoch=2, batch=2, patch=16, device="cpu", quiet=True)
    return ft.FinetuneConfig(data, out, **{**base, **kw})


# ---------------------------------------------------------------- loss and metric


def test_dice_ce_loss_known_values():
    # perfect, confident prediction: CE ~ 0 and soft Dice ~ 1
    target = torch.tensor([[[0, 1, 2, 2, 1, 0]]])
    logits = 30.0 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert float(ft.dice_ce_loss(logits, target)) < 1e-6
    # by hand: two classes, 4 voxels, target [1, 1, 0, 0], foreground probabilities
    # p = [0.8, 0.6, 0.3, 0.1]. CE = -(ln .8 + ln .6 + ln .7 + ln .9) / 4 = 0.2990015;
    # Dice = (2 * 1.4 + 1e-5) / (1.8 + 2 + 1e-5) = 0.7368428; loss = CE + 1 - Dice
    p = torch.tensor([0.8, 0.6, 0.3, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(p / (1 - p))])[None]  # (1, 2, 4)
    target = torch.tensor([[1, 1, 0, 0]])
    assert float(ft.dice_ce_loss(logits, target)) == pytest.approx(0.5621587, abs=1e-6)


def test_dice_per_class():
    target = np.array([0, 1, 1, 2, 2, 2, 0, 0])
    pred = np.array([0, 1, 0, 2, 2, 0, 2, 0])
    # class 1: 2*1/(1+2); class 2: 2*2/(3+3); class 3 absent from both -> None
    assert ft.dice_per_class(pred, target, 4) == [pytest.approx(2 / 3), pytest.approx(2 / 3), None]


# ---------------------------------------------------------------- freezing


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _step(model, optimizer, gen):
    x = torch.randn(2, 1, 16, 16, 16, generator=gen)
    y = torch.randint(0, 3, (2, 16, 16, 16), generator=gen)
    optimizer.zero_grad(set_to_none=True)
    ft.dice_ce_loss(model(x), y).backward()
    optimizer.step()


def test_decoder_only_leaves_encoder_bit_identical():
    torch.manual_seed(0)
    model = models.build("tiny", out_channels=3)
    opt = ft.make_optimizer(model, 1e-2)
    gen = torch.Generator().manual_seed(0)
    # a whole-network step first: the encoder now has momentum buffers, which
    # must not move it in the decoder-only steps that follow (nor weight decay)
    ft.set_epoch(model, opt, 1e-2, decoder_only=False)
    _step(model, opt, gen)
    enc, dec = (
        _state(model.encoder),
        {
            n: p.detach().clone()
            for n, p in model.named_parameters()
            if not n.startswith("encoder.")
        },
    )
    ft.set_epoch(model, opt, 1e-2, decoder_only=True)
    for _ in range(2):
        _step(model, opt, gen)
    after = _state(model.encoder)
    assert all(torch.equal(enc[k], after[k]) for k in enc)
    changed = [n for n, p in model.named_parameters() if n in dec and not torch.equal(dec[n], p)]
    # every decoder parameter moved, but the lower-resolution output head that
    # only deep supervision uses (no gradient without it)
    assert set(dec) - set(changed) == {"decoder.seg_layers.0.weight", "decoder.seg_layers.0.bias"}
    assert [g["lr"] for g in opt.param_groups] == [0.0, 1e-2]
    # the whole network again: the encoder moves
    ft.set_epoch(model, opt, 1e-2, decoder_only=False)
    _step(model, opt, gen)
    assert not torch.equal(
        after["stem.convs.0.conv.weight"], model.encoder.state_dict()["stem.convs.0.conv.weight"]
    )
    # the decoder's parameters are those outside the encoder (it holds a reference)
    assert len(ft.encoder_parameters(model)) + len(ft.decoder_parameters(model)) == len(
        list(model.parameters())
    )


def test_pretrained_encoder_loaded_and_frozen_run(nnunet_dir, encoder_file, tmp_path):
    path, weights = encoder_file
    setup = ft.build_model(_config(nnunet_dir, tmp_path, pretrained=path), 3, 1)
    assert setup.arch == "tiny" and setup.patch == (16, 16, 16) and setup.lr == 1e-3
    loaded = setup.model.encoder.state_dict()
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    # a whole "frozen" run: the saved network's encoder is the pre-trained one, bit for bit
    ft.finetune(_config(nnunet_dir, tmp_path / "frozen", pretrained=path, schedule="frozen"))
    saved = torch.load(tmp_path / "frozen" / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(saved[f"encoder.{k}"], weights[k]) for k in weights)
    # sawtooth, 2 epochs of stage 1: decoder only, then the whole network
    run = ft.finetune(
        _config(nnunet_dir, tmp_path / "saw", pretrained=path, schedule="sawtooth", stage_len=1)
    )
    assert [line["decoder_only"] for line in run.log] == [True, False]
    assert [line["lr"] for line in run.log] == [1e-3, 1e-3]
    saved = torch.load(tmp_path / "saw" / "model.pt", weights_only=False)["model"]
    assert not all(torch.equal(saved[f"encoder.{k}"], weights[k]) for k in weights)


# ---------------------------------------------------------------- data


def test_nnunet_raw_layout(nnunet_dir, tmp_path):
    source = segdata.read_source(nnunet_dir)
    assert source.kind == "nnunet" and source.channels == 1
    assert source.labels == {0: "background", 1: "ball", 2: "box"}
    assert [c.case_id for c in source.cases] == [f"toy_{i:03d}" for i in range(5)]
    case = segdata.load_case(source.cases[0], (1.0, 1.0, 1.0), n_classes=3)
    assert case.image.shape == (1, 24, 24, 24) and case.label.shape == (24, 24, 24)
    raw = np.asarray(nib.load(source.cases[0].label).dataobj)
    assert np.bincount(case.label.ravel()).tolist() == np.bincount(raw.ravel()).tolist()
    assert abs(case.image.mean()) < 1e-4 and abs(case.image.std() - 1) < 1e-3
    # a 2 mm case on 1 mm: twice the edge, labels stay labels (nearest neighbour)
    _save(tmp_path / "img.nii.gz", np.arange(12**3).reshape(12, 12, 12) + 1.0, zoom=2.0)
    lab = np.zeros((12, 12, 12))
    lab[2:6, 3:9, 4:8] = 2
    _save(tmp_path / "lab.nii.gz", lab, zoom=2.0, dtype=np.uint8)
    files = segdata.CaseFiles("c", (tmp_path / "img.nii.gz",), tmp_path / "lab.nii.gz")
    case = segdata.load_case(files, (1.0, 1.0, 1.0), n_classes=3)
    assert case.label.shape == (24, 24, 24) and set(np.unique(case.label)) == {0, 2}
    assert int((case.label == 2).sum()) == 8 * 4 * 6 * 4
    # split: fixed by the seed, at least one validation case
    assert segdata.split_cases(["a", "b", "c", "d", "e"], 0.2, 0) == segdata.split_cases(
        ["e", "d", "c", "b", "a"], 0.2, 0
    )
    train, val = segdata.split_cases(["a", "b"], 0.2, 1)
    assert len(train) == len(val) == 1


def test_nnunet_layout_errors(tmp_path):
    from openmind_curate.preflight import InputError

    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"bg": 0, "x": 2}, "channel_names": {"0": "T1"}})
    )
    with pytest.raises(InputError, match="without gaps"):
        segdata.read_source(tmp_path)
    with pytest.raises(InputError, match="no imagesTr folder"):
        doc = {"labels": {"bg": 0, "x": 1}, "channel_names": {"0": "T1"}}
        (tmp_path / "dataset.json").write_text(json.dumps(doc))
        segdata.read_source(tmp_path)
    (tmp_path / "imagesTr").mkdir()
    with pytest.raises(InputError, match="neither an nnU-Net"):
        segdata.read_source(tmp_path / "imagesTr")


def test_synth_corpus_pairs_labels_with_images(tmp_path):
    """A corpus shaped like `curate synth`'s: each label map is paired with the
    image of its subject and contrast (not the T2w, not a corrupted file)."""
    rng = np.random.default_rng(1)
    rows = []
    for sub in ("01", "02"):
        image, label = _toy_case(rng)
        files = {
            ("image", "T1w", "T1w", None): (f"ds9/sub-{sub}/anat/sub-{sub}_T1w.nii.gz", image),
            ("label", "dseg", "T1w", None): (
                f"ds9/derivatives/labels/sub-{sub}/anat/sub-{sub}_desc-tissue_dseg.nii.gz",
                label,
            ),
            ("image", "T2w", "T2w", None): (f"ds9/sub-{sub}/anat/sub-{sub}_T2w.nii.gz", image),
            ("image", "T1w", "T1w", "zeros"): (
                f"ds9/sub-{sub}/anat/sub-{sub}_run-2_T1w.nii.gz",
                0 * image,
            ),
        }
        for (kind, suffix, contrast, corruption), (rel, data) in files.items():
            _save(tmp_path / rel, data, dtype=np.uint8 if kind == "label" else np.float32)
            rows.append(
                dict(
                    dataset_id="ds9",
                    subject=sub,
                    session=None,
                    datatype="anat",
                    kind=kind,
                    suffix=suffix,
                    contrast=contrast,
                    path=rel,
                    shape=[24, 24, 24],
                    spacing=[1.0, 1.0, 1.0],
                    corruption=corruption,
                )
            )
    (tmp_path / "truth").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "truth" / "images.parquet")
    source = segdata.read_source(tmp_path)
    assert source.kind == "synth" and source.labels == segdata.SYNTH_TISSUE_LABELS
    assert [(c.case_id, c.images[0].name) for c in source.cases] == [
        ("ds9_sub-01", "sub-01_T1w.nii.gz"),
        ("ds9_sub-02", "sub-02_T1w.nii.gz"),
    ]
    # the demo: from scratch and from an encoder, both Dice scores back
    enc = tmp_path / "enc.pt"
    models.save_encoder(
        models.build("tiny"), enc, models.EncoderMeta("tiny", (32,) * 3, (1.0,) * 3)
    )
    out = ft.finetune_demo(
        tmp_path, enc, tmp_path / "demo", epochs=2, iters_per_epoch=1, spacing=None, patch=16
    )
    assert len(out["val_cases"]) == 1 and out["val_cases"][0] in ("ds9_sub-01", "ds9_sub-02")
    for run in ("scratch", "pretrained"):
        assert set(out[run]["dice"]) == {"CSF", "GM", "WM"}
        assert (tmp_path / "demo" / run / "model.pt").exists()
    assert out["pretrained"]["schedule"] == "sawtooth" and out["scratch"]["lr"] == 1e-2


# ---------------------------------------------------------------- a run that learns


def test_short_finetune_learns(nnunet_dir, tmp_path):
    config = _config(
        nnunet_dir,
        tmp_path / "run",
        arch="tiny",
        epochs=6,
        iters_per_epoch=12,
        lr=1e-2,
        schedule="warmup",
        stage_len=1,
    )
    # the network as it starts (same seed, same initialization) on the same validation cases
    source = segdata.read_source(nnunet_dir)
    data = ft.load_data(source, (1.0,) * 3, "zscore", config.val_fraction, config.seed)
    start = ft.build_model(config, 3, 1).model
    cases = [data[0][c] for c in data[2]]
    preds = [ft.predict(start, c.image, 4, (16,) * 3) for c in cases]
    before = np.mean([ft.dice_per_class(p, c.label, 3) for p, c in zip(preds, cases, strict=True)])
    result = ft.finetune(config)
    print(f"validation Dice before {before:.3f}, after {result.mean_dice:.3f}")
    assert result.mean_dice is not None and result.mean_dice > max(0.5, before + 0.3)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_cases"] == data[2] and metrics["mean_dice"] == result.mean_dice
    assert set(metrics["dice"]) == {"ball", "box"}
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == list(range(6))
    assert log[0]["lr"] == pytest.approx(1e-2) and log[-1]["lr"] == pytest.approx(
        1e-2 * (1 - 4 / 5) ** 0.9
    )
    assert math.isfinite(log[-1]["train_loss"]) and log[-1]["train_loss"] < log[0]["train_loss"]
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert saved["arch"] == "tiny" and saved["out_channels"] == 3
    # sliding-window inference agrees in kind with whole-volume inference
    model = models.build("tiny", out_channels=3)
    model.load_state_dict(saved["model"])
    case = data[0][data[2][0]]
    whole = ft.predict(model, case.image, 4, (16,) * 3, "whole")
    sliding = ft.predict(model, case.image, 4, (16,) * 3, "sliding")
    assert whole.shape == sliding.shape == case.label.shape
    assert (whole == sliding).mean() > 0.9


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    cli_finetune.register(app)

    @app.command()
    def other() -> None:  # a second command keeps `finetune` a subcommand
        pass

    return app


def test_cli_errors(cli, nnunet_dir, tmp_path, monkeypatch):
    runner = CliRunner()
    out = str(tmp_path / "run")
    r = runner.invoke(
        cli, ["finetune", "--data", str(tmp_path / "nope"), "--out", out, "--arch", "tiny"]
    )
    assert r.exit_code == 2 and "not a folder" in r.output
    r = runner.invoke(
        cli,
        [
            "finetune",
            "--data",
            str(nnunet_dir),
            "--out",
            out,
            "--arch",
            "tiny",
            "--schedule",
            "zigzag",
        ],
    )
    assert r.exit_code == 2 and "zigzag" in r.output and "sawtooth" in r.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = runner.invoke(cli, ["finetune", "--data", str(nnunet_dir), "--out", out])
    assert r.exit_code == 2 and "resenc-l" in r.output and "--arch tiny" in r.output
    r = runner.invoke(
        cli,
        [
            "finetune",
            "--data",
            str(nnunet_dir),
            "--out",
            out,
            "--arch",
            "tiny",
            "--schedule",
            "valley",
            "--epochs",
            "3",
            "--stage-len",
            "2",
        ],
    )
    assert r.exit_code == 2 and "lower --stage-len" in r.output
    r = runner.invoke(
        cli,
        [
            "finetune",
            "--data",
            str(nnunet_dir),
            "--out",
            out,
            "--pretrained",
            str(tmp_path / "missing.pt"),
        ],
    )
    assert r.exit_code == 2 and "file not found" in r.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = runner.invoke(
        cli, ["finetune", "--data", str(nnunet_dir), "--out", out, "--pretrained", str(bad)]
    )
    assert r.exit_code == 2 and "bad.pt" in r.output
    r = runner.invoke(
        cli,
        ["finetune", "--data", str(nnunet_dir), "--out", out, "--arch", "tiny", "--patch", "18"],
    )
    assert r.exit_code == 2 and "multiple of 4" in r.output
    one = tmp_path / "one"
    for sub in ("imagesTr", "labelsTr"):
        (one / sub).mkdir(parents=True)
    (one / "dataset.json").write_text((nnunet_dir / "dataset.json").read_text())
    for name in ("imagesTr/toy_000_0000.nii.gz", "labelsTr/toy_000.nii.gz"):
        (one / name).write_bytes((nnunet_dir / name).read_bytes())
    r = runner.invoke(cli, ["finetune", "--data", str(one), "--out", out, "--arch", "tiny"])
    assert r.exit_code == 2 and "at least 2 labelled cases" in r.output
    assert not (tmp_path / "run").exists()  # nothing written before the checks pass


def test_cli_run(cli, nnunet_dir, encoder_file, tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--data",
            str(nnunet_dir),
            "--out",
            str(out),
            "--pretrained",
            str(encoder_file[0]),
            "--schedule",
            "sawtooth",
            "--epochs",
            "2",
            "--iters-per-epoch",
            "1",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "Validation Dice" in r.output and "ball" in r.output and "box" in r.output
    for name in ("metrics.json", "log.jsonl", "model.pt"):
        assert (out / name).exists()
    assert json.loads((out / "metrics.json").read_text())["stage_len"] == 1
