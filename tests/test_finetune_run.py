"""`curate finetune` end to end on the generated corpus's tissue labels, and its
refusals. The known answer: a short nnU-Net run must beat the untrained
network's validation Dice on the same held-out case by at least 0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from openmind_curate.cli import app
from openmind_curate.finetune import run
from openmind_curate.train import models

runner = CliRunner()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    models.save_encoder(
        models.build("tiny"), path, models.EncoderMeta("tiny", (32, 32, 32), (2.0, 2.0, 2.0))
    )
    return path


def _mean_dice(summary: Path) -> float:
    return float(json.loads(summary.read_text())["foreground_mean"]["Dice"])


def test_short_run_beats_the_untrained_network(corpus, encoder, tmp_path):
    root, _ = corpus
    out = tmp_path / "run"
    args = ["finetune", "--data", str(root), "--pretrained", str(encoder), "--scratch"]
    args += ["--epochs", "2", "--iters-per-epoch", "5", "--patch", "64", "--spacing", "3"]
    args += ["--no-tta"]
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "Validation Dice" in r.output and "CSF" in r.output and "WM" in r.output
    doc = json.loads((out / "finetune.json").read_text())
    fold = doc["folds"]["0"]
    summary = Path(fold["folder"]) / "validation" / "summary.json"
    assert fold["mean"] == pytest.approx(_mean_dice(summary))
    assert "DefaultTrainer" in fold["folder"]  # --scratch: nnU-Net's PolyLR at 1e-2
    assert (Path(fold["folder"]) / "checkpoint_final.pth").exists()

    # the untrained network of the same plans, validated on the same case
    config = run.FinetuneConfig(
        data=root,
        out=out,
        pretrained=encoder,
        scratch=True,
        patch=(64,) * 3,
        resume=True,
        test_time_mirroring=False,
    )
    prepared = run.prepare(config, run.check(config), lambda _: None)
    settings = run.settings_for(config, prepared.pretrained)
    with run.nnunet_env(out, 0):
        os.environ["nnUNet_results"] = str(tmp_path / "untrained")
        trainer = run.make_trainer(prepared, settings, 0, "cpu")
        trainer.initialize()
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        trainer.perform_actual_validation(False)
    baseline = _mean_dice(Path(trainer.output_folder) / "validation" / "summary.json")
    print(f"trained {doc['mean']:.3f}, untrained {baseline:.3f}")
    assert doc["mean"] >= baseline + 0.1, (doc["mean"], baseline)


def test_refusals_name_the_problem(corpus, encoder, tmp_path):
    root, _ = corpus
    out = tmp_path / "run"
    cases = [
        (["--data", str(tmp_path / "nope")], "not a folder"),
        (["--data", str(root), "--schedule", "zigzag"], "zigzag"),
        (["--data", str(root), "--scratch"], "--scratch needs --pretrained"),
        (["--data", str(root), "--pretrained", str(encoder), "--fold", "7"], "folds are 0..4"),
        (["--data", str(root), "--pretrained", str(encoder), "--fold", "3"], "2 labelled cases"),
        (["--data", str(root), "--pretrained", str(encoder), "--spacing", "x"], "--spacing x"),
        (["--data", str(root), "--pretrained", str(encoder), "--patch", "18"], "multiple of 4"),
        (["--data", str(root), "--pretrained", str(tmp_path / "no.pt")], "no such file"),
        (
            [
                "--data",
                str(root),
                "--pretrained",
                str(encoder),
                "--epochs",
                "3",
                "--stage-len",
                "2",
            ],
            "lower --stage-len",
        ),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["finetune", *args, "--out", str(out)])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert "Traceback" not in r.output
    assert not out.exists()  # nothing written before the checks pass


def test_interrupt_exits_130_and_says_how_to_continue(corpus, encoder, tmp_path, monkeypatch):
    """Ctrl-C inside nnU-Net's run: exit 130, no traceback, the --continue hint."""
    from openmind_curate.finetune import run as run_module

    def interrupted(config, echo):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "finetune", interrupted)
    root, _ = corpus
    args = ["finetune", "--data", str(root), "--pretrained", str(encoder)]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert r.exit_code == 130, r.output
    assert "--continue" in r.output and "Traceback" not in r.output
