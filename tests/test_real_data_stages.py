"""The new stages on data the generator did not make.

- `curate preprocess` on nilearn's MNI152 template (a real head, shipped
  inside nilearn): the stored array is compared with an independent
  reorientation (nibabel's) plus crop and z-score written out here;
- the rating plan, the IQS groups and the report on the crawled
  bids-examples (real datasets' layouts and participants tables; CI has them).
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy.ndimage import center_of_mass
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.jobs import JobOptions
from openmind_curate.quality import plan as planning
from openmind_curate.quality.iqs import units_of
from openmind_curate.schema import MANIFEST, rows_to_table
from openmind_curate.train import preprocess as P
from openmind_curate.train.store import open_store


def _template(tmp_path):
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=2)
    path = tmp_path / "mni152_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine), path)
    return path


def _manifest(path):
    return rows_to_table(
        [
            dict(
                image_id="mni",
                dataset_id="nilearn",
                subject="mni152",
                suffix="T1w",
                extension=".nii.gz",
                modality="T1w",
                is_derivative=False,
                root=str(path.parent),
                path=path.name,
                size_bytes=path.stat().st_size,
                header_status="ok",
                split="train",
            )
        ],
        MANIFEST,
    ).to_pandas()


def _expected_lps(path) -> np.ndarray:
    """nibabel's reorientation to LPS, in ITK's (z, y, x) order, cropped to the
    nonzero box and z-scored over the nonzero voxels (zeros stay zero)."""
    img = nib.load(path)
    data = np.asarray(img.dataobj, np.float64)
    lps = apply_orientation(
        data, ornt_transform(io_orientation(img.affine), axcodes2ornt(("L", "P", "S")))
    )
    zyx = lps.transpose(2, 1, 0)
    nz = np.nonzero(zyx)
    box = tuple(slice(a.min(), a.max() + 1) for a in nz)
    crop = zyx[box]
    values = crop[crop != 0]
    return np.where(crop != 0, (crop - values.mean()) / values.std(), 0.0)


def test_preprocess_on_the_mni152_template_matches_nibabel(tmp_path):
    path = _template(tmp_path)
    opts = JobOptions(workers=1, progress=False)
    native = P.preprocess(
        _manifest(path), tmp_path / "native", P.PreprocessConfig(spacing=None), opts
    )
    assert native.batch.ok, native.batch.summary()
    got = open_store(tmp_path / "native").load("mni").image
    want = _expected_lps(path)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-3  # orientation, crop and z-score all agree

    one_mm = P.preprocess(_manifest(path), tmp_path / "1mm", P.PreprocessConfig(spacing=1.0), opts)
    assert one_mm.batch.ok, one_mm.batch.summary()
    case = open_store(tmp_path / "1mm").load("mni")
    assert all(abs(a - 2 * b) <= 3 for a, b in zip(case.image.shape, want.shape, strict=True))
    # the brain's centre of mass, in mm from the crop corner, is the same at 1 and 2 mm
    com = np.array(center_of_mass(np.abs(case.image)))
    com2 = 2 * np.array(center_of_mass(np.abs(want)))
    assert np.allclose(com, com2, atol=2.0), (com, com2)


@pytest.fixture(scope="module")
def examples_index(bids_examples, tmp_path_factory):
    root = tmp_path_factory.mktemp("examples") / "bids-examples"
    shutil.copytree(bids_examples, root, symlinks=True)
    index = root.parent / "index" / "images.parquet"
    result = CliRunner().invoke(app, ["crawl", str(root), "--out", str(index), "-j", "2", "-q"])
    assert result.exit_code == 0, result.output
    return index


def test_plan_and_iqs_groups_on_bids_examples(examples_index):
    frame = store.read_frame(examples_index)
    units, not_rated = planning.units(frame)
    ok = frame["header_status"] == "ok"
    # bids-examples hold mostly empty placeholder files: each is listed with its reason
    assert set(not_rated["image_id"]) == set(frame.loc[~ok, "image_id"]) and len(not_rated) > 50
    assert set(units["image_id"]) == set(frame.loc[ok, "image_id"]) and len(units) >= 1
    assert not_rated["reason"].str.startswith("header_status is ").all()
    picked = planning.pick_units(units, planning.PlanConfig(per_group=2, seed=1))
    assert picked.groupby(["dataset_id", "group_name"]).size().max() <= 2
    assert picked["image_id"].isin(frame.loc[ok, "image_id"]).all()
    plan = planning.assign(picked, ["a", "b", "c"], planning.PlanConfig(raters=2, seed=1))
    assert (plan.groupby("image_id")["rater_id"].nunique() == 2).all()
    groups = units_of(frame)
    assert (groups["group_key"] == frame["dataset_id"] + "/" + frame["modality"]).all()


def test_report_on_bids_examples(examples_index, tmp_path):
    frame = store.read_frame(examples_index)
    result = CliRunner().invoke(
        app, ["report", "--index", str(examples_index), "--out", str(tmp_path / "report")]
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    for png in ("modalities.png", "cumulative.png", "metadata.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000 and png in page
    known_age = frame["age"].notna().mean()
    assert known_age > 0  # real participants.tsv files carry ages
    assert f"{frame['dataset_id'].nunique()} datasets" in page
