"""Quality metrics: known answers on phantoms, rank agreement with the corpus'
degradation ladders, corruption checks against the truth table, and the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import ndimage
from scipy.stats import spearmanr
from typer.testing import CliRunner

from openmind_curate.cli import app
from openmind_curate.quality.metrics import MetricsConfig, corruption_checks, fwhm_mm, image_metrics
from openmind_curate.quality.run import parts_dir
from openmind_curate.schema import METRICS, validate

runner = CliRunner()


@pytest.fixture(scope="session")
def measured(masked, tmp_path_factory):
    """`curate metrics` on the masked corpus index, joined to the truth."""
    root, rows, index, _, _ = masked
    out = tmp_path_factory.mktemp("metrics") / "metrics.parquet"
    result = runner.invoke(
        app,
        ["metrics", "--index", str(index), "--out", str(out), "-j", "2", "-q"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    validate(table, METRICS)
    from openmind_curate.synth.corpus import load_truth

    truth = load_truth(root).to_pandas()
    joined = truth[truth["kind"] == "image"].merge(
        table.to_pandas(), on="image_id", suffixes=("_truth", "")
    )
    return joined, out, index, result.output


# ------------------------------------------------------------ known answers


def _sphere(shape=(64, 64, 64), radius=22):
    idx = np.indices(shape) - np.array(shape)[:, None, None, None] / 2
    return np.sqrt((idx**2).sum(0)) < radius


def test_snr_on_a_phantom_with_known_noise():
    rng = np.random.default_rng(0)
    head = _sphere()
    sigma, level = 5.0, 200.0
    clean = np.where(head, level, 0.0)
    vol = np.hypot(clean + rng.normal(0, sigma, head.shape), rng.normal(0, sigma, head.shape))
    m = image_metrics(vol.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), head)
    assert m["noise_sigma"] == pytest.approx(sigma, rel=0.05)
    assert m["snr_dietrich"] == pytest.approx(level / sigma, rel=0.05)
    assert m["problems"] == []


def test_fwhm_of_smoothed_noise():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, (60, 60, 60))
    for fwhm in (3.0, 6.0):  # mm, on 1.5 mm voxels
        sigma_vox = fwhm / 2.3548 / 1.5
        vol = ndimage.gaussian_filter(noise, sigma_vox)
        est = fwhm_mm(vol, np.ones(vol.shape, bool), (1.5, 1.5, 1.5))
        assert est == pytest.approx(fwhm, rel=0.12), (fwhm, est)


def test_corruption_checks_on_made_up_volumes():
    cfg = MetricsConfig()
    eye = np.eye(4)
    vol = np.random.default_rng(2).random((20, 20, 20)).astype(np.float32)
    assert corruption_checks(vol, eye, None, cfg)[0] == []
    dropout = vol.copy()
    dropout[:, :, 10] = 0
    assert corruption_checks(dropout, eye, None, cfg)[0] == ["constant_slices"]
    edge = vol.copy()
    edge[:, :, 0] = 0  # an empty first slice is padding, not a dropout
    assert corruption_checks(edge, eye, None, cfg)[0] == []
    nan = vol.copy()
    nan[3, 3, 3] = np.nan
    assert corruption_checks(nan, eye, None, cfg)[0] == ["nonfinite"]
    assert corruption_checks(np.full_like(vol, 3.0), eye, None, cfg)[0] == ["constant"]
    assert corruption_checks(np.zeros_like(vol), eye, None, cfg)[0] == ["all_zero"]
    assert corruption_checks(vol, np.diag([1.0, 1.0, 12.0, 1.0]), None, cfg)[0] == ["spacing"]
    head = np.zeros(vol.shape, bool)
    head[5:15, 5:15, 5:] = True  # through the top face (axis 2 high = superior)
    assert corruption_checks(vol, eye, head, cfg)[0] == ["fov_cut"]
    head[:] = False
    head[5:15, 5:15, :15] = True  # through the bottom face only: the neck
    assert corruption_checks(vol, eye, head, cfg)[0] == []


# ------------------------------------------------- ladders of the generated corpus


@pytest.mark.parametrize(
    "ladder, metric",
    [
        ("noise", "snr_dietrich"),
        ("noise", "cnr_otsu"),
        ("blur", "fwhm_mm"),
        ("ghost", "artifact_fraction"),
        ("ghost", "ghost_ratio"),
    ],
)
def test_metric_ranks_its_degradation(measured, ladder, metric):
    df, *_ = measured
    rung = df[df["ladder"] == ladder].sort_values("ladder_level")
    assert len(rung) == 5
    rho = spearmanr(rung["ladder_level"], rung[metric]).statistic
    # More noise lowers SNR and CNR; more blur and ghosting raise FWHM and the artifact measures.
    expected_sign = -1 if ladder == "noise" else 1
    assert expected_sign * rho >= 0.9, (ladder, metric, rho, rung[metric].tolist())


def test_every_corrupted_file_is_caught_and_clean_ones_are_not(measured):
    df, *_ = measured
    expected = {
        "truncated": "unreadable",
        "empty": "unreadable",
        "nan": "nonfinite",
        "zeros": "all_zero",
    }
    for row in df.itertuples():
        problems = list(row.problems)
        if isinstance(row.corruption, str):
            assert expected[row.corruption] in problems, (row.rel_path, problems)
        elif row.fov_crop > 0:
            assert problems == ["fov_cut"], (row.rel_path, problems)
        else:
            assert problems == [], (row.rel_path, problems)
    assert df["corruption"].notna().sum() == 4


def test_metrics_use_the_index_masks_and_resume(measured, tmp_path):
    df, session_out, index, output = measured
    readable = df[~df["problems"].map(lambda p: "unreadable" in list(p))]
    assert (readable["mask_source"] == "index").all()
    # Resume on a copy of the session's table and rows: other tests read those.
    out = tmp_path / session_out.name
    shutil.copy2(session_out, out)
    shutil.copytree(parts_dir(session_out), parts_dir(out))
    victim = sorted(parts_dir(out).glob("*.json"))[0]
    before = json.loads(victim.read_text())
    victim.unlink()
    result = runner.invoke(
        app,
        ["metrics", "--index", str(index), "--out", str(out), "-j", "2", "-q"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(victim.read_text())["image_id"] == before["image_id"]
    assert "1 done" in result.output
    resumed, original = pq.read_table(out).to_pandas(), pq.read_table(session_out).to_pandas()
    assert list(resumed["image_id"]) == list(original["image_id"])
    assert (parts_dir(session_out) / victim.name).is_file()  # the session's rows untouched
