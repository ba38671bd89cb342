"""Classification fine-tuning (`curate finetune --task classification`): the
schedule against its closed form and the framework's recursion, folds split by
subject, the metrics against hand-computed values, a frozen encoder kept
bit-identical from both checkpoint layouts of both families, bit-exact resume,
and bad input. The demo test (test_cli) checks that a short run beats chance
on the generated corpus's held-out folds."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from openmind_curate.cli import app
from openmind_curate.errors import InputError
from openmind_curate.finetune.classification import folds, metrics
from openmind_curate.finetune.classification.demo import weighting_table
from openmind_curate.finetune.classification.method import Classify, ClassifyParams
from openmind_curate.finetune.classification.run import ClassifyConfig, classify
from openmind_curate.finetune.classification.table import read_table
from openmind_curate.train import models, nnssl
from openmind_curate.train.trainer import EpochLR

runner = CliRunner()
QUIET = {"progress": False, "workers": 1}
TOY = {"resize": (16, 16, 16), "spacing": 3.0, "batch": 2, "accumulate": 1, "lr": 1e-2}


# ----------------------------------------------------------------- the schedule


def _framework_lrs(base: float, epochs: int, warmup: int) -> list[float]:
    """The image classification framework's CosineAnnealingLR_Warmstart
    (eta_min 0) as it runs: a warm-up of base / (W + 1) per epoch, then its
    recursive cosine update from the previous epoch's rate."""
    t_max, lrs, t = epochs - warmup, [], 0
    for epoch in range(epochs):
        if epoch < warmup:
            lrs.append(base / (warmup + 1) * (epoch + 1))
        elif t == 0:
            lrs.append(base)
            t = 1
        else:
            prev = lrs[-1]
            lrs.append(
                (1 + math.cos(math.pi * t / t_max))
                / (1 + math.cos(math.pi * (t - 1) / t_max))
                * prev
            )
            t += 1
    return lrs


def test_cosine_schedule_is_the_frameworks_closed_form():
    # by hand: W = 3, E = 10: 1/4, 2/4, 3/4 of the base, then (1 + cos(pi k / 7)) / 2
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = EpochLR(opt, epochs=10, iters_per_epoch=3, warmup=3, shape="cosine")
    per_epoch = []
    for step in range(30):
        if step % 3 == 0:
            per_epoch.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.25e-4, 0.5e-4, 0.75e-4, 1e-4] + [
        0.5e-4 * (1 + math.cos(math.pi * k / 7)) for k in range(1, 7)
    ]
    assert per_epoch == pytest.approx(expected, rel=1e-12)
    assert per_epoch[-1] == pytest.approx(0.5e-4 * (1 - 0.9009688679), rel=1e-9)
    assert per_epoch == pytest.approx(_framework_lrs(1e-4, 10, 3), rel=1e-12)


# ----------------------------------------------------------------- folds


def test_folds_never_share_a_subject_and_spread_every_class():
    rng = np.random.default_rng(3)
    subjects = [f"ds{d}/sub-{s}" for d in range(3) for s in range(9)]
    rows = [(s, lab) for s in subjects for lab in rng.choice(["a", "b", "c"], rng.integers(1, 4))]
    subject, label = map(np.array, zip(*rows, strict=True))
    fold = folds.assign_folds(label, subject, seed=0)
    assert set(fold) == set(range(5))
    for s in subjects:  # one fold per subject
        assert len(set(fold[subject == s])) == 1
    for c in ("a", "b", "c"):  # >= 5 subjects per class: every fold holds it
        if len(set(subject[label == c])) >= 5:
            assert set(fold[label == c]) == set(range(5)), c
    with pytest.raises(InputError, match="needs 5 or more"):
        folds.assign_folds(["a", "b"] * 2, ["s1", "s1", "s2", "s3"])


# ----------------------------------------------------------------- metrics


def test_metrics_match_hand_computed_values(tmp_path):
    # two classes: predictions 0,1,0,1 -> recall 1/2 each; AP of class 1 ranked
    # 0.9(+) 0.6(-) 0.4(+) 0.1(-): precision 1 at recall 1/2, 2/3 at recall 1
    two = metrics.scores(
        [0, 0, 1, 1], np.array([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.1, 0.9]]), ["n", "p"]
    )
    assert two["balanced_accuracy"] == pytest.approx(0.5)
    assert two["average_precision"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert two["confusion"] == [[1, 1], [1, 1]]
    # three classes: predictions 0, 2, 2, 0 -> recalls 1, 0, 1/2; AP 1, 1, 5/6
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.35, 0.45], [0.1, 0.3, 0.6], [0.5, 0.1, 0.4]])
    three = metrics.scores([0, 1, 2, 2], probs, ["a", "b", "c"])
    assert three["balanced_accuracy"] == pytest.approx(0.5)
    assert three["average_precision_per_class"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 5 / 6})
    assert three["average_precision"] == pytest.approx((1 + 1 + 5 / 6) / 3)
    assert three["confusion"] == [[1, 0, 0], [0, 0, 1], [1, 0, 1]]
    # a class absent from the held-out fold: no AP for it, the mean over the others
    absent = metrics.scores([0, 0, 1], probs[:3], ["a", "b", "c"])
    assert absent["absent_classes"] == ["c"] and absent["average_precision_per_class"]["c"] is None
    png = metrics.plot_confusion(three["confusion"], ["a", "b", "c"], tmp_path / "cm.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def contrast(corpus_index, tmp_path_factory):
    """The generated corpus's T1- or T2-weighted table and its volumes, made once."""
    root = tmp_path_factory.mktemp("classify")
    table = weighting_table(corpus_index, root / "weighting.parquet")
    config = ClassifyConfig(
        data=table,
        label="weighting",
        out=root / "first",
        index=corpus_index,
        volumes=root / "volumes",
        arch="tiny",
        epochs=1,
        folds=(0,),
        **TOY,
        **QUIET,
    )
    first = classify(config, echo=lambda _: None)
    assert first.complete  # the corpus's T1w with NaN voxels is left out
    assert all("non-finite" in reason for _, reason in first.rejected)
    return config


def _encoder(tmp_path: Path, arch: str, layout: str) -> Path:
    torch.manual_seed(11)
    net = models.build(arch, patch=32)
    meta = models.EncoderMeta(arch, (32, 32, 32), (3.0, 3.0, 3.0))
    if layout == "ours":
        return models.save_encoder(net, tmp_path / "encoder.pt", meta)
    return nnssl.save_checkpoint(net, tmp_path / "nnssl_checkpoint.pth", meta)


@pytest.mark.parametrize("arch", ["tiny", "tiny-primus"])
@pytest.mark.parametrize("layout", ["ours", "nnssl"])
def test_frozen_encoder_stays_bit_identical(contrast, tmp_path, arch, layout):
    ckpt = _encoder(tmp_path, arch, layout)
    config = replace(contrast, out=tmp_path / "run", pretrained=ckpt, frozen=True, epochs=2)
    result = classify(config, echo=lambda _: None)
    assert result.complete and len(result.folds) == 1
    saved = torch.load(tmp_path / "run" / "fold_0" / "classifier.pt", weights_only=False)
    before = nnssl.read_pretrained(ckpt).encoder
    backbone = {
        k.removeprefix("backbone."): v
        for k, v in saved["model"].items()
        if k.startswith("backbone.")
    }
    if arch == "tiny":
        backbone = {k.removeprefix("encoder."): v for k, v in backbone.items()}
    else:  # the positional embedding was resized to the 16^3 volumes' token grid
        backbone.pop("eva.pos_embed")
        before = {k: v for k, v in before.items() if k != "eva.pos_embed"}
    assert set(before) <= set(backbone) and set(backbone) - set(before) <= {
        "mask_token"
    }  # a buffer
    for key, value in before.items():
        assert torch.equal(backbone[key], value), key
    # the head did train: it moved from the initial weights the run's seed gives
    params = ClassifyParams(
        2, (16, 16, 16), True, str(ckpt), nnssl.read_pretrained(ckpt).architecture
    )
    torch.manual_seed(config.seed)
    initial = Classify(params, arch, 160).build()
    assert not torch.equal(initial.head.weight, saved["model"]["head.weight"])
    log = [
        json.loads(line)
        for line in (tmp_path / "run" / "fold_0" / "log.jsonl").read_text().splitlines()
    ]
    assert log and all(math.isfinite(r["loss"]) for r in log)


def test_interrupted_run_resumes_bit_exactly(contrast, tmp_path):
    straight = replace(contrast, out=tmp_path / "straight", epochs=3, warmup_epochs=1, folds=(0, 1))
    whole = classify(straight, echo=lambda _: None)
    cut = replace(straight, out=tmp_path / "cut", stop_after=5)  # mid-epoch, in fold 0
    stopped = classify(cut, echo=lambda _: None)
    assert not stopped.complete and stopped.summary is None
    assert not (tmp_path / "cut" / "fold_0" / "classifier.pt").exists()
    assert not (tmp_path / "cut" / "fold_1").exists()
    with pytest.raises(InputError, match="--continue"):
        classify(replace(cut, stop_after=None), echo=lambda _: None)
    # --continue: fold 0 from its checkpoint, fold 1 (none yet) from the start
    resumed = classify(replace(cut, stop_after=None, resume=True), echo=lambda _: None)
    assert resumed.complete and [f.fold for f in resumed.folds] == [0, 1]
    for fold in ("fold_0", "fold_1"):
        a = torch.load(tmp_path / "straight" / fold / "classifier.pt", weights_only=False)["model"]
        b = torch.load(tmp_path / "cut" / fold / "classifier.pt", weights_only=False)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), fold
    assert [f.scores for f in resumed.folds] == [f.scores for f in whole.folds]
    # the learning rate of every logged step is the cosine's closed form
    log = [
        json.loads(line)
        for line in (tmp_path / "cut" / "fold_0" / "log.jsonl").read_text().splitlines()
    ]
    steps = json.loads((tmp_path / "cut" / "fold_0" / "config.json").read_text())["iters_per_epoch"]
    assert [r["step"] for r in log] == list(range(len(log))) and len(log) == 3 * steps
    for r in log:
        e = r["epoch"]
        want = 1e-2 * (e + 1) / 2 if e < 1 else 0.5e-2 * (1 + math.cos(math.pi * (e - 1) / 2))
        assert r["lr"] == pytest.approx(want, rel=1e-12), r


# ----------------------------------------------------------------- bad input


def test_bad_tables_are_named_and_bad_images_left_out(contrast, corpus_index, tmp_path):
    table = pd.read_parquet(contrast.data)
    with pytest.raises(InputError, match="--label grade: .* has no such column"):
        read_table(contrast.data, "grade", corpus_index)
    with pytest.raises(InputError, match="without a path column, and the index .* does not"):
        read_table(contrast.data, "weighting", tmp_path / "nowhere.parquet")
    with pytest.raises(InputError, match="without a path column, and no index was given"):
        read_table(contrast.data, "weighting")
    one = tmp_path / "one.csv"
    table.assign(weighting="T1").to_csv(one, index=False)
    with pytest.raises(InputError, match="1 class"):
        read_table(one, "weighting", corpus_index)
    # a row without a path is dropped and named; a column named "label" gives way to --label
    paths = read_table(contrast.data, "weighting", corpus_index).cases
    odd = tmp_path / "odd.csv"
    paths.assign(weighting=paths["label"], label="other").assign(
        path=lambda f: f["path"].where(f.index != 0, "")
    ).drop(columns=["case_id"]).to_csv(odd, index=False)
    read = read_table(odd, "weighting")
    assert len(read.cases) == len(paths) - 1 and set(read.cases["label"]) == {"T1", "T2"}
    assert any("without a path: row 0" in note for note in read.notes)
    # a size the network cannot take is refused before any volume is made
    with pytest.raises(InputError, match="multiple of 4"):
        classify(replace(contrast, resize=(18, 16, 16), out=tmp_path / "r", volumes=tmp_path / "v"))
    assert not (tmp_path / "v").exists()
    # a truncated image (the corpus's corrupt T1w) is left out, named, and the run goes on
    from openmind_curate import index as store

    idx = store.read(corpus_index).to_pandas()
    broken = idx[(idx["header_status"] == "corrupt") & (idx["modality"] == "T1w")].head(1)
    assert len(broken), "the generated corpus has a corrupt T1w"
    with_broken = tmp_path / "with_broken.parquet"
    pd.concat([table, broken.assign(weighting="T1")[["image_id", "weighting"]]]).to_parquet(
        with_broken
    )
    config = replace(contrast, data=with_broken, out=tmp_path / "run", epochs=1)
    said: list[str] = []
    result = classify(config, echo=said.append)
    assert result.complete
    (path, reason), *_ = [r for r in result.rejected if r[0].endswith(broken["path"].iloc[0])]
    assert "unreadable image" in reason
    assert any(line.startswith("left out") and path in line for line in said)


def test_other_ranks_take_the_volumes_rank_zero_published(contrast, tmp_path):
    from openmind_curate.finetune.classification import volumes

    cases = read_table(contrast.data, "weighting", contrast.index).cases
    config = volumes.VolumeConfig(3.0, (16, 16, 16))
    key = volumes.batch_key(cases, config)
    assert key != volumes.batch_key(cases, replace(config, resize=(8, 8, 8)))
    status = cases.assign(status="ok", reason=None)
    status.loc[0, ["status", "reason"]] = ["rejected", "empty volume"]
    volumes.publish(tmp_path, key, status)
    seen = volumes.wait_published(cases, tmp_path, key, poll_s=0.01)
    assert list(seen["status"]) == list(status["status"]) and seen["reason"][0] == "empty volume"


def test_cli_refuses_options_of_the_other_task(tmp_path):
    base = ["finetune", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "t.csv")]
    cases = [
        (["--task", "classification"], "needs --label"),
        (
            ["--task", "classification", "--label", "y", "--stage-len", "3"],
            "--stage-len is a segmentation option",
        ),
        (["--label", "y"], "--label is a classification option"),
        (
            ["--task", "classification", "--label", "y", "--schedule", "sawtooth"],
            "classification has default",
        ),
        (["--task", "classification", "--label", "y", "--resize", "16,16"], "three sizes"),
        (["--task", "classification", "--label", "y", "--accumulate", "0"], "whole number"),
        (["--task", "classification", "--label", "y"], "no such file"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra], env={"COLUMNS": "200"})
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
