"""`curate preprocess`: resampling, crop, normalization, rejection, resume, the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from openmind_curate.cli import preprocess as cli_preprocess
from openmind_curate.jobs import JobOptions
from openmind_curate.manifest.writers import write_parquet
from openmind_curate.nifti_io import save_nifti
from openmind_curate.schema import MANIFEST, rows_to_table
from openmind_curate.train import preprocess as P
from openmind_curate.train.store import open_store

OPTS = JobOptions(workers=1, progress=False)


def write(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> str:
    save_nifti(np.asarray(data, np.float32), np.diag([*zooms, 1.0]), path)
    return str(path)


def smooth(shape, seed=0) -> np.ndarray:
    """Positive, everywhere nonzero, varying intensities."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return (100 + 20 * sum(grids) + rng.normal(0, 1, shape)).astype(np.float32)


def manifest_table(tmp: Path, cases: dict[str, dict]):
    """A manifest (schema-valid Arrow table) of images already written under `tmp`."""
    rows = []
    for i, (name, c) in enumerate(cases.items()):
        rows.append(
            {
                "image_id": name,
                "dataset_id": "ds000001",
                "subject": f"{i:02d}",
                "suffix": "T1w",
                "extension": ".nii.gz",
                "modality": "T1w",
                "is_derivative": False,
                "root": str(tmp),
                "path": Path(c["image"]).name,
                "size_bytes": 1,
                "header_status": "ok",
                "group_n_rated": 0,
                "split": c.get("split", "train"),
                "anat_mask_path": c.get("anat"),
                "anon_mask_path": c.get("anon"),
            }
        )
    return rows_to_table(rows, MANIFEST)


def manifest_rows(tmp: Path, cases: dict[str, dict]) -> pd.DataFrame:
    return manifest_table(tmp, cases).to_pandas()


def test_resample_known_spacing_and_nearest_masks(tmp_path):
    # NIfTI (i, j, k) = (10, 20, 30) at 2 x 1 x 1 mm: 20 x 20 x 30 mm; stored (D, H, W) = (z, y, x)
    img = write(tmp_path / "a.nii.gz", smooth((10, 20, 30)), (2.0, 1.0, 1.0))
    mask = np.zeros((10, 20, 30))
    mask[2:8, 5:15, 10:25] = 1
    anat = write(tmp_path / "a_anat.nii.gz", mask, (2.0, 1.0, 1.0))
    anon = write(tmp_path / "a_anon.nii.gz", 1 - mask, (2.0, 1.0, 1.0))
    df = manifest_rows(tmp_path, {"a": {"image": img, "anat": anat, "anon": anon}})
    res = P.preprocess(df, tmp_path / "store", options=OPTS)
    assert res.batch.ok, res.batch.summary()
    row = res.table.iloc[0]
    assert row["status"] == "ok" and list(row["shape"]) == [30, 20, 20]
    assert list(row["spacing"]) == [1.0, 1.0, 1.0]
    case = open_store(tmp_path / "store").load("a")
    assert case.image.shape == (30, 20, 20) and case.image.dtype == np.float32
    assert set(np.unique(case.anat)) == {0, 1} and set(np.unique(case.anon)) == {0, 1}
    assert case.anat.dtype == np.uint8
    # 6 x 10 x 15 voxels at 2 x 1 x 1 mm = 12 x 10 x 15 mm of anatomy at 1 mm
    assert case.anat.sum() == 12 * 10 * 15
    assert np.array_equal(case.anon, 1 - case.anat)
    meta = json.loads((tmp_path / "store" / "store.json").read_text())
    assert meta["spacing"] == [1.0, 1.0, 1.0] and meta["orientation"]["code"] == "LPS"


def test_native_spacing_keeps_grid(tmp_path):
    img = write(tmp_path / "a.nii.gz", smooth((10, 12, 14)), (2.0, 1.5, 1.0))
    res = P.preprocess(
        manifest_rows(tmp_path, {"a": {"image": img}}),
        tmp_path / "s",
        P.PreprocessConfig(spacing=None),
        OPTS,
    )
    row = res.table.iloc[0]
    assert list(row["shape"]) == [14, 12, 10] and list(row["spacing"]) == [1.0, 1.5, 2.0]


def test_crop_known_box_and_zscore(tmp_path):
    vol = np.zeros((40, 40, 40), np.float32)
    vol[5:25, 8:30, 10:20] = smooth((20, 22, 10))
    mask = np.zeros_like(vol)
    mask[10:20, 10:25, 12:18] = 1
    img = write(tmp_path / "c.nii.gz", vol)
    anat = write(tmp_path / "c_anat.nii.gz", mask)
    res = P.preprocess(
        manifest_rows(tmp_path, {"c": {"image": img, "anat": anat}}), tmp_path / "s", options=OPTS
    )
    row = res.table.iloc[0]
    # (z, y, x) = (k, flipped j, flipped i): LPS flips the RAS i and j axes
    assert list(row["shape"]) == [10, 22, 20]
    record = json.loads((tmp_path / "s" / "cases" / "c" / "case.json").read_text())
    assert record["crop_start"] == [10, 40 - 30, 40 - 25]
    case = open_store(tmp_path / "s").load("c")
    region = case.image[case.anat > 0]
    assert case.anat.sum() == 10 * 15 * 6
    assert abs(region.mean()) < 1e-4 and abs(region.std() - 1) < 1e-4
    assert row["anatomy"] == "mask"


def test_no_anatomy_mask_uses_nonzero_region_and_zeros_stay(tmp_path):
    vol = np.zeros((20, 20, 20), np.float32)
    vol[2:18, 2:18, 2:18] = smooth((16, 16, 16))
    vol[5:8, 5:8, 5:8] = 0  # a hole: stays 0, not anatomy
    img = write(tmp_path / "n.nii.gz", vol)
    res = P.preprocess(manifest_rows(tmp_path, {"n": {"image": img}}), tmp_path / "s", options=OPTS)
    assert res.table.iloc[0]["anatomy"] == "nonzero"
    assert res.meta["counts"]["anatomy_from_nonzero"] == 1
    case = open_store(tmp_path / "s").load("n")
    assert case.anat.sum() == 16**3 - 27
    assert np.all(case.image[case.anat == 0] == 0)
    vals = case.image[case.anat > 0]
    assert abs(vals.mean()) < 1e-4 and abs(vals.std() - 1) < 1e-4


def test_clip(tmp_path):
    assert P.parse_clip("-1000,1000") == P.Clip(-1000, 1000, False)
    assert P.parse_clip("p0.5,p99.5") == P.Clip(0.5, 99.5, True)
    for bad in ("1", "5,1", "p1,2", "p-1,p50", "a,b"):
        with pytest.raises(ValueError):
            P.parse_clip(bad)
    assert P.parse_spacing("native") is None and P.parse_spacing("1") == 1.0
    with pytest.raises(ValueError):
        P.parse_spacing("-1")
    vol = np.arange(1, 1001, dtype=np.float32).reshape(10, 10, 10)
    image, stats = P.normalize(vol, vol > 0, P.Clip(100, 900))
    clipped = np.clip(vol, 100, 900)
    expected = (clipped - clipped.mean()) / clipped.std()
    assert np.allclose(image, expected, atol=1e-5)
    _, stats = P.normalize(vol, vol > 0, P.Clip(10, 90, percentiles=True))
    assert stats["clip_low"] == pytest.approx(np.percentile(vol, 10))


def test_rejections_recorded_batch_goes_on_and_anon_counted(tmp_path):
    good = write(tmp_path / "good.nii.gz", smooth((12, 12, 12)))
    nan = smooth((12, 12, 12))
    nan[3, 3, 3] = np.nan
    bad = write(tmp_path / "nan.nii.gz", nan)
    empty = write(tmp_path / "empty.nii.gz", np.zeros((12, 12, 12)))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti at all")
    anon = write(tmp_path / "good_anon.nii.gz", np.ones((12, 12, 12)))
    good2 = write(tmp_path / "good2.nii.gz", smooth((12, 12, 12), 1))
    df = manifest_rows(
        tmp_path,
        {
            "good": {"image": good, "anon": anon},
            "nan": {"image": bad},
            "empty": {"image": empty},
            "broken": {"image": str(broken)},
            "good2": {"image": good2},
        },
    )
    res = P.preprocess(df, tmp_path / "s", options=OPTS)
    t = res.table.set_index("case_id")
    assert list(t["status"]) == ["ok", "rejected", "rejected", "rejected", "ok"]
    assert t.loc["nan", "reason"].startswith("non-finite values: 1 NaN")
    assert t.loc["empty", "reason"].startswith("empty volume")
    assert t.loc["broken", "reason"].startswith("unreadable image")
    assert t.loc["good", "has_anon"] and not t.loc["good2", "has_anon"]
    assert res.meta["counts"] == {
        "cases": 5,
        "ok": 2,
        "rejected": 3,
        "without_anon": 1,
        "anatomy_from_nonzero": 2,
    }
    store = open_store(tmp_path / "s")
    assert list(store.cases["case_id"]) == ["good", "good2"]
    assert store.load("good2").anon is None
    assert not (tmp_path / "s" / "cases" / "good2" / "anon.b2nd").exists()


def test_resume_skips_finished_cases(tmp_path):
    cases = {
        f"r{i}": {"image": write(tmp_path / f"r{i}.nii.gz", smooth((10, 10, 10), i))}
        for i in range(3)
    }
    bad = smooth((10, 10, 10))
    bad[0, 0, 0] = np.inf
    cases["inf"] = {"image": write(tmp_path / "inf.nii.gz", bad)}
    cases["late"] = {"image": str(tmp_path / "late.nii.gz")}  # not there yet
    df = manifest_rows(tmp_path, cases)
    out = tmp_path / "s"
    first = P.preprocess(df, out, options=OPTS)
    assert len(first.batch.done) == 5
    assert first.table.iloc[-1]["reason"].startswith("unreadable image")
    again = P.preprocess(df, out, options=OPTS)
    assert len(again.batch.skipped) == 5 and not again.batch.done  # rejected ones too
    assert again.table.equals(first.table)
    write(tmp_path / "late.nii.gz", smooth((10, 10, 10), 9))  # the missing file arrives
    late = P.preprocess(df, out, options=OPTS)
    assert [r.label for r in late.batch.done] == [cases["late"]["image"]]
    assert late.table.iloc[-1]["status"] == "ok"
    # a run killed mid-case: its case folder is missing, a temporary one left behind
    import shutil

    shutil.rmtree(out / "cases" / "r1")
    (out / "cases" / ".tmp-r1-123-abcd").mkdir()
    third = P.preprocess(df, out, options=OPTS)
    assert [r.label for r in third.batch.done] == [cases["r1"]["image"]]
    assert len(third.batch.skipped) == 4
    assert not (out / "cases" / ".tmp-r1-123-abcd").exists()
    # other options: every case is redone
    fourth = P.preprocess(df, out, P.PreprocessConfig(clip=P.Clip(0, 1000)), OPTS)
    assert len(fourth.batch.done) == 5 and sorted(fourth.batch.recomputed) == sorted(
        c["image"] for c in cases.values()
    )


def test_read_patch_pads_with_zero(tmp_path):
    img = write(tmp_path / "p.nii.gz", smooth((8, 9, 10)))
    anat = write(tmp_path / "p_anat.nii.gz", np.ones((8, 9, 10)))
    P.preprocess(
        manifest_rows(tmp_path, {"p": {"image": img, "anat": anat}}), tmp_path / "s", options=OPTS
    )
    store = open_store(tmp_path / "s")
    whole = store.load("p")
    assert whole.image.shape == (10, 9, 8)
    patch = store.read_patch("p", (-3, 2, 5), (16, 4, 6))
    assert patch.image.shape == (16, 4, 6) and patch.anon is None
    assert np.array_equal(patch.image[3:13, :, :3], whole.image[:, 2:6, 5:8])
    assert np.all(patch.image[:3] == 0) and np.all(patch.image[13:] == 0)
    assert np.all(patch.image[:, :, 3:] == 0) and np.all(patch.anat[:, :, 3:] == 0)
    assert np.all(patch.anat[3:13, :, :3] == 1)
    outside = store.read_patch("p", (50, 50, 50), (4, 4, 4))
    assert not outside.image.any() and not outside.anat.any()


def test_cli(tmp_path):
    img = write(tmp_path / "sub-01_T1w.nii.gz", smooth((12, 12, 12)))
    nan = smooth((12, 12, 12))
    nan[0, 0, 0] = np.nan
    bad = write(tmp_path / "sub-02_T1w.nii.gz", nan)
    manifest = tmp_path / "m.parquet"
    write_parquet(
        manifest_table(tmp_path, {"one": {"image": img}, "two": {"image": bad}}), manifest
    )
    app = typer.Typer()
    cli_preprocess.register(app)
    app.command("other")(lambda: None)  # more than one command: subcommand names are used
    runner = CliRunner()
    out = tmp_path / "store"
    args = [
        "preprocess",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "-j",
        "1",
        "-q",
        "--clip",
        "p0.5,p99.5",
    ]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "1 ok" in result.output and "1 rejected" in result.output
    assert "non-finite" in result.output and "1 without an anonymization mask" in result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    assert json.loads((out / "store.json").read_text())["clipping"]["percentiles"] is True
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and "2 skipped" in again.output
    bad_args = runner.invoke(
        app, ["preprocess", "--manifest", str(manifest), "--out", str(out), "--spacing", "zero"]
    )
    assert bad_args.exit_code == 2 and "--spacing" in bad_args.output
    missing = runner.invoke(
        app, ["preprocess", "--manifest", str(tmp_path / "no.parquet"), "--out", str(out)]
    )
    assert missing.exit_code == 2 and "no manifest" in missing.output
