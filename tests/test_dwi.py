"""The DWI pipeline: fast paths against dipy, known answers on phantoms and on
the generated corpus, real data shipped with dipy, bad input, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dipy.core.gradients import gradient_table
from dipy.data import get_fnames
from dipy.reconst.dti import TensorModel
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

from openmind_curate.cli import app
from openmind_curate.dwi.bias import n4_field
from openmind_curate.dwi.denoise import mppca
from openmind_curate.dwi.gibbs import gibbs_removal
from openmind_curate.dwi.gradients import DwiInputError, check, fsl_to_voxel, read_table
from openmind_curate.dwi.maps import tensor_maps
from openmind_curate.dwi.mask import brain_mask
from openmind_curate.dwi.pipeline import DwiConfig, run_pipeline
from openmind_curate.dwi.run import DwiJob, process, stem_of
from openmind_curate.synth.phantom import dwi_phantom

runner = CliRunner()


def _low_rank(shape=(20, 22, 18), n=30, sigma=5.0, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.random((*shape, 3)) @ rng.random((3, n)) * 100 + 50
    noisy = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)
    return clean, noisy


# ------------------------------------------------------------------ MP-PCA


def test_mppca_stride_one_equals_dipy():
    from dipy.denoise.localpca import mppca as dipy_mppca

    _, noisy = _low_rank()
    ref, ref_sigma = dipy_mppca(noisy, patch_radius=2, return_sigma=True)
    ours, sigma, _ = mppca(noisy, stride=1)
    assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()
    inner = (slice(2, -2),) * 3
    assert np.allclose(sigma[inner], ref_sigma[inner], rtol=1e-3)


def test_mppca_stride_two_stays_close_to_dipy_and_denoises():
    from dipy.denoise.localpca import mppca as dipy_mppca

    clean, noisy = _low_rank(sigma=5.0)
    ref = dipy_mppca(noisy, patch_radius=2)
    ours, sigma, report = mppca(noisy, stride=2)
    assert np.sqrt(np.mean((ours - ref) ** 2)) < 0.25 * 5.0  # stated tolerance: 0.25 sigma
    residual_before = np.sqrt(np.mean((noisy - clean) ** 2))
    residual_after = np.sqrt(np.mean((ours - clean) ** 2))
    assert residual_after < 0.5 * residual_before
    inner = (slice(2, -2),) * 3
    assert np.median(sigma[inner]) == pytest.approx(5.0, rel=0.1)
    assert report.sigma_median == pytest.approx(5.0, rel=0.1)


def test_patch2self_option_runs_and_denoises():
    from openmind_curate.dwi.denoise import patch2self_denoise

    still = dict(
        shape=(32, 38, 32),
        spacing=5.0,
        n_b0=2,
        n_dirs=16,
        max_rotation_deg=0,
        max_translation_mm=0,
        bias_strength=0,
        seed=2,
    )
    noisy, clean = dwi_phantom(snr=10, **still), dwi_phantom(snr=1e9, **still)
    out, report = patch2self_denoise(noisy.data, noisy.bvals)
    assert report.method == "patch2self" and out.shape == noisy.data.shape
    brain = clean.brain
    before = np.sqrt(np.mean((noisy.data - clean.data)[brain] ** 2))
    after = np.sqrt(np.mean((out - clean.data)[brain] ** 2))
    assert after < 0.8 * before


# ------------------------------------------------------------------- Gibbs


def _ringing_phantom(n: int = 64, up: int = 4):
    """A disk and a bar drawn at 4x resolution, then acquired at n x n by keeping
    the central n x n of k-space (no zero-filling): ringing at the voxel scale,
    as in a real acquisition. Returns (the object averaged to n x n, the image)."""
    big = n * up
    yy, xx = np.mgrid[:big, :big] / up
    hi = np.zeros((big, big))
    hi[(xx - 32.3) ** 2 + (yy - 30.1) ** 2 < 18.2**2] = 100
    hi[(yy > 20.2) & (yy < 28.3) & (xx > 24.1) & (xx < 40.4)] = 40
    k = np.fft.fftshift(np.fft.fft2(hi))
    c = big // 2
    low = np.fft.ifft2(np.fft.ifftshift(k[c - n // 2 : c + n // 2, c - n // 2 : c + n // 2]))
    truth = hi.reshape(n, up, n, up).mean(axis=(1, 3))
    image = (low.real / up**2).astype(np.float32)
    return truth, np.repeat(image[..., None], 4, axis=2)


def test_gibbs_exact_path_equals_dipy_and_fast_path_is_close():
    from dipy.denoise.gibbs import gibbs_removal as dipy_gibbs

    _, ringing = _ringing_phantom()
    data = np.stack([ringing, ringing * 0.7], axis=-1)
    ref = dipy_gibbs(data.copy(), slice_axis=2, inplace=False)
    exact, _ = gibbs_removal(data, slice_axis=2, shifts="dipy", exact=True)
    assert np.abs(exact - ref).max() < 1e-4 * ref.max()
    fast, _ = gibbs_removal(data, slice_axis=2, shifts="dipy", threads=2)
    assert np.abs(fast - ref).max() < 0.02 * ref.max()  # stated tolerance: 2% of the max
    assert np.array_equal(data[..., 0], ringing)  # the input is left untouched


def test_gibbs_removal_lowers_ringing():
    from scipy import ndimage

    truth, ringing = _ringing_phantom()
    fixed, _ = gibbs_removal(ringing, slice_axis=2)
    # Ringing = total variation where the object is flat (zero without ringing).
    edges = ndimage.binary_dilation(np.abs(ndimage.laplace(truth)) > 1e-6, iterations=1)
    flat = ~edges[:-1, :-1]

    def ringing_measure(vol):
        a = vol[..., 0]
        tv = np.abs(np.diff(a, axis=0))[:, :-1] + np.abs(np.diff(a, axis=1))[:-1, :]
        return float(tv[flat].mean())

    assert ringing_measure(fixed) < 0.5 * ringing_measure(ringing)


# ---------------------------------------------------------------------- N4


def test_n4_restores_white_matter_cov():
    from openmind_curate.synth.degrade import bias_field
    from openmind_curate.synth.head import head_model
    from openmind_curate.synth.render import Grid, render, resample

    model = head_model()
    affine = np.diag([2.5, 2.5, 2.5, 1.0])
    affine[:3, 3] = [-90, -125, -70]
    grid = Grid((72, 88, 72), affine)
    eye = np.eye(4)
    img = resample(render(model, "T1w"), model.affine, grid, eye) * 1000
    wm = resample(model.wm, model.affine, grid, eye) > 0.9
    brain = resample((model.truth_bits & 2).astype(np.float32), model.affine, grid, eye) > 0.5
    field = bias_field(img.shape, 0.4, np.random.default_rng(3))
    biased = img * field

    def cov(x):
        return float(x[wm].std() / x[wm].mean())

    corrected_field, report = n4_field(biased, affine, brain, shrink=2)
    corrected = biased / corrected_field
    assert cov(biased) > 2 * cov(img)
    assert cov(corrected) < cov(img) + 0.25 * (cov(biased) - cov(img))
    assert corrected[brain].mean() == pytest.approx(biased[brain].mean(), rel=0.02)
    assert report.field_max > report.field_min


# ------------------------------------------------------- full pipeline, phantom


@pytest.fixture(scope="module")
def phantom_run():
    ph = dwi_phantom(shape=(72, 88, 72), spacing=2.5, n_b0=3, n_dirs=30, snr=25, seed=1)
    result = run_pipeline(ph.data, ph.affine, ph.bvals, ph.bvecs_fsl, DwiConfig(threads=2))
    return ph, result


def test_pipeline_fa_and_md_on_the_phantom(phantom_run):
    ph, res = phantom_run
    wm = ph.brain & (ph.fa > 0.4) & (res.mask > 0)
    assert wm.sum() > 5000
    assert np.median(np.abs(res.fa[wm] - ph.fa[wm])) <= 0.03
    assert np.median(np.abs(res.md[wm] / ph.md[wm] - 1)) < 0.05
    for arr in (res.fa, res.md, res.t2w):
        assert np.isfinite(arr).all()
    assert res.fa.min() >= 0 and res.fa.max() <= 1
    assert 3e-4 < np.median(res.md[wm]) < 1.5e-3  # mm^2/s
    dice = 2 * ((res.mask > 0) & ph.brain).sum() / ((res.mask > 0).sum() + ph.brain.sum())
    assert dice > 0.9


def test_motion_estimates_and_bvec_rotation(phantom_run):
    ph, res = phantom_run
    estimated = np.array(res.reports["motion"]["rotations_deg"])
    assert np.abs(ph.rotations_deg).max() > 1.0  # there was motion to find
    assert np.abs(estimated - ph.rotations_deg).max() <= 0.3
    dw = ph.bvals > 50
    cos = np.abs((res.bvecs[dw] * ph.bvecs_head[dw]).sum(axis=1))
    angle = np.degrees(np.arccos(np.clip(cos, 0, 1)))
    assert angle.max() <= 0.3
    # Not rotating would have been visibly wrong.
    stored = fsl_to_voxel(ph.bvecs_fsl, ph.affine)
    cos0 = np.abs((stored[dw] * ph.bvecs_head[dw]).sum(axis=1))
    assert np.degrees(np.arccos(np.clip(cos0, 0, 1))).max() > 1.0


# ----------------------------------------------------- generated corpus + CLI


def _one_series_per_kind(index: Path, truth):
    """Drop from the index every DWI series but the first of each dataset: the
    corpus's DWI datasets differ in kind (single-shell RAS with the dataset's
    inherited bval/bvec; multi-shell LAS with per-file ones), a dataset's
    further subjects only repeat its kind at one more pipeline run each (about
    40 s). Returns the truth rows of the series kept."""
    from openmind_curate import index as store

    dwis = truth[truth["modality"] == "DWI"]
    kept = dwis.drop_duplicates("dataset_id")
    assert kept["dwi_shells"].nunique() == 2 and kept["axcodes"].nunique() == 2
    table = store.read(index)
    dropped = set(dwis["rel_path"]) - set(kept["rel_path"])
    paths = table.column("path").to_pylist()
    keep = [not any(p.endswith(rel) for rel in dropped) for p in paths]
    assert len(keep) - sum(keep) == len(dropped)
    with store.locked(index):
        store.write(index, table.filter(pa.array(keep)))
    return kept


def test_cli_index_mode_on_the_generated_corpus(corpus, tmp_path):
    root, truth = corpus
    index = tmp_path / "index" / "images.parquet"
    assert runner.invoke(app, ["crawl", str(root), "--out", str(index), "-q"]).exit_code == 0
    dwis = _one_series_per_kind(index, truth)
    out = tmp_path / "deriv"
    result = runner.invoke(
        app, ["dwi", "--index", str(index), "--out", str(out), "--json", "-j", "2"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")]
    assert len(lines) == len(dwis) and all(x["status"] == "done" for x in lines)
    for line in lines:
        assert set(line["outputs"]) >= {"FA", "MD", "T2w", "mask"}
        assert set(line["seconds"]) == {"denoise", "gibbs", "motion", "bias", "mask", "maps"}
    multishell = [x for x in lines if "multishell" in x["input"]][0]
    assert any("b <= 1500" in w for w in multishell["warnings"])

    # Known answer: FA against the generator's ground truth.
    for row in dwis.itertuples():
        line = next(x for x in lines if x["input"].endswith(row.rel_path))
        fa = nib.load(line["outputs"]["FA"]).get_fdata()
        fa_true = nib.load(root / row.fa_truth).get_fdata()
        brain = nib.load(root / row.brain_mask_truth).get_fdata() > 0
        mask = nib.load(line["outputs"]["mask"]).get_fdata() > 0
        wm = brain & (fa_true > 0.4) & mask
        assert np.median(np.abs(fa[wm] - fa_true[wm])) <= 0.03, row.rel_path
        assert nib.load(line["outputs"]["FA"]).shape == nib.load(root / row.path).shape[:3]

    # Derivatives dataset, sidecars, QC figure.
    ds = dwis.iloc[0]["dataset_id"]
    desc = json.loads((out / ds / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"]
    sidecar = json.loads(Path(lines[0]["outputs"]["MD"].replace(".nii.gz", ".json")).read_text())
    assert sidecar["Units"] == "mm^2/s" and sidecar["Steps"][0] == "denoise"
    assert "dipy" in sidecar["SoftwareVersions"] and sidecar["Motion"]["rotations_deg"]
    assert Path(lines[0]["outputs"]["qc"]).stat().st_size > 10_000

    # Index rows for the maps.
    table = pq.read_table(index).to_pandas()
    maps = table[table["derived_from"].notna()]
    assert len(maps) == 3 * len(dwis)
    assert set(maps["modality"]) == {"FA", "MD", "T2w"} and maps["is_brain_extracted"].all()
    sources = set(table.loc[table["modality"] == "DWI", "image_id"])
    assert set(maps["derived_from"]) == sources

    # Re-run: everything skipped, no duplicated rows.
    again = runner.invoke(app, ["dwi", "--index", str(index), "--out", str(out), "--json"])
    assert again.exit_code == 0
    assert all(json.loads(x)["status"] == "skipped" for x in again.output.splitlines())
    assert len(pq.read_table(index)) == len(table)


# ------------------------------------------------------------ b-vector frames


def test_fsl_bvecs_do_not_depend_on_the_storage_handedness():
    """The FSL convention's x flip makes one .bvec file valid for an array stored
    either way: flipping the first array axis (and the affine with it) leaves the
    world directions the file describes unchanged. Radiological storage (negative
    determinant) takes the file as it is."""
    rng = np.random.default_rng(0)
    fsl = rng.normal(size=(3, 20))
    fsl /= np.linalg.norm(fsl, axis=0)
    assert np.array_equal(fsl_to_voxel(fsl, np.diag([-2.0, 2.0, 2.0, 1.0])), fsl.T)
    flip_x = np.diag([-1.0, 1.0, 1.0])
    for rot in Rotation.random(8, random_state=1).as_matrix():
        for hand in (np.eye(3), flip_x):
            axes = rot @ hand  # unit array axes in world space, either handedness
            affine = np.eye(4)
            affine[:3, :3] = axes @ np.diag([1.8, 2.2, 3.0])
            flipped = affine.copy()
            flipped[:3, :3] = affine[:3, :3] @ flip_x
            world = fsl_to_voxel(fsl, affine) @ axes.T
            world_flipped = fsl_to_voxel(fsl, flipped) @ (axes @ flip_x).T
            np.testing.assert_allclose(world_flipped, world, atol=1e-12)


# ------------------------------------------------------ real data shipped with dipy

# small_64D: 10x10x10 voxels, one b0 and 64 directions at b = 1000, b-vectors one per line.
# small_101D: 6x10x10 voxels, 101 directions on shells up to b = 4100.
REAL = ("small_64D", "small_101D")


def _real_series(name: str):
    fimg, fbval, fbvec = get_fnames(name=name)
    img = nib.load(fimg)
    bvals, bvecs_fsl = read_table(str(fbval), str(fbvec))
    return img.get_fdata(dtype=np.float32), img.affine, bvals, bvecs_fsl, fimg


def _dipy_tensor(data, bvals, bvecs_fsl, mask):
    """dipy's own fit on the table as stored, over the volumes our maps use (b <= 1500)."""
    use = bvals <= 1500
    gtab = gradient_table(bvals[use], bvecs=bvecs_fsl.T[use], b0_threshold=50)
    fit = TensorModel(gtab).fit(data[..., use], mask=mask)
    return np.clip(np.nan_to_num(fit.fa), 0, 1), fit.md


def _fa_gap(fa, ref, mask) -> tuple[float, float]:
    """(median |FA - reference|, Pearson r) inside the mask."""
    median = np.median(np.abs(fa[mask] - ref[mask]))
    return float(median), float(np.corrcoef(fa[mask], ref[mask])[0, 1])


@pytest.mark.parametrize("name", REAL)
def test_tensor_maps_match_dipy_on_real_data(name):
    """`tensor_maps` on the raw series equals dipy's TensorModel on the same voxels.

    Same estimator, so the tolerance is tight: the residual difference is our
    zeroing of b0 vectors (small_101D's b0 has b = 15; ~0.001 FA). Fitting all
    shells of small_101D (0.018) or pairing volumes with the wrong vectors
    (0.03-0.11) lies far outside it. A global change of b-vector frame (an
    axis flip or swap) leaves FA unchanged; the phantom's motion test covers it.
    """
    data, affine, bvals, bvecs_fsl, _ = _real_series(name)
    g = check(bvals, bvecs_fsl, data.shape[3], affine)
    mask = brain_mask(data[..., g.b0].mean(axis=3))
    assert mask.sum() > 50
    ref_fa, ref_md = _dipy_tensor(data, bvals, bvecs_fsl, mask)
    fa, md, _ = tensor_maps(data, g.bvals, g.bvecs, mask, g.b0)
    median, r = _fa_gap(fa, ref_fa, mask)
    assert median < 0.005 and r > 0.999, (median, r)
    assert np.median(np.abs(md[mask] / ref_md[mask] - 1)) < 0.02
    # The comparison can fail: each weighted volume fit with its neighbour's vector.
    dw = np.flatnonzero(~g.b0)
    wrong = g.bvecs.copy()
    wrong[dw] = g.bvecs[np.roll(dw, 1)]
    median, r = _fa_gap(tensor_maps(data, g.bvals, wrong, mask, g.b0)[0], ref_fa, mask)
    assert median > 0.02 and r < 0.95, (median, r)


def test_real_data_through_the_cli(tmp_path):
    """The full pipeline on real data. Denoising, Gibbs removal and N4 change the
    input, so its FA is compared with dipy's fit on the raw series only loosely
    (measured: median 0.02-0.03, r 0.94-0.99)."""
    series = {Path(s[-1]).name: s for s in map(_real_series, REAL)}
    files = [str(s[-1]) for s in series.values()]
    result = runner.invoke(app, ["dwi", *files, "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines()]
    assert len(lines) == len(series)
    for line in lines:
        data, _, bvals, bvecs_fsl, _ = series[Path(line["input"]).name]
        fa = nib.load(line["outputs"]["FA"]).get_fdata()
        md = nib.load(line["outputs"]["MD"]).get_fdata()
        mask = nib.load(line["outputs"]["mask"]).get_fdata() > 0
        assert mask.sum() > 50
        assert np.isfinite(fa).all() and fa.min() >= 0 and fa.max() <= 1
        assert np.isfinite(md).all() and 1e-4 < np.median(md[mask]) < 3e-3
        median, r = _fa_gap(fa, _dipy_tensor(data, bvals, bvecs_fsl, mask)[0], mask)
        assert median < 0.05 and r > 0.9, (line["input"], median, r)
    multishell = next(x for x in lines if "small_101D" in x["input"])
    assert any("fit on b <= 1500" in w for w in multishell["warnings"])


# -------------------------------------------------------------------- bad input


def _series(
    tmp_path, name="sub-01_dwi", n=12, n_b0=2, shape=(16, 16, 12), bvals=None, bvecs=None, data=None
):
    rng = np.random.default_rng(0)
    if data is None:
        data = rng.random((*shape, n)).astype(np.float32) * 100 + 100
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    if bvals is None:
        bvals = np.r_[np.zeros(n_b0), np.full(n - n_b0, 1000.0)]
    if bvecs is None:
        v = rng.normal(size=(3, n))
        bvecs = v / np.linalg.norm(v, axis=0)
        bvecs[:, :n_b0] = 0
    np.savetxt(tmp_path / f"{name}.bval", np.atleast_2d(bvals))
    np.savetxt(tmp_path / f"{name}.bvec", bvecs)
    return path


def _run_one(path: Path, tmp_path: Path, config=DwiConfig(gibbs=False, motion=False)):
    job = DwiJob(
        str(path),
        str(path).replace(".nii.gz", ".bval"),
        str(path).replace(".nii.gz", ".bvec"),
        str(tmp_path / "out"),
        "",
        stem_of(path.name),
        "x",
        config=config,
    )
    return process(job)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bvals=np.r_[0, np.full(10, 1000.0)]), "11 b-values and 12 b-vectors for 12"),
        (dict(bvals=np.full(12, 1000.0)), "no b0 volume"),
        (dict(data=np.ones((16, 16, 12), np.float32)), "must be 4D"),
        (dict(bvecs=np.vstack([np.full(12, 0.9), np.zeros(12), np.zeros(12)])), "not 1"),
        (dict(n=6, n_b0=1), "needs at least 6"),
    ],
)
def test_bad_series_get_a_clear_error_naming_the_file(tmp_path, kwargs, message):
    path = _series(tmp_path, **kwargs)
    with pytest.raises(DwiInputError, match=message) as err:
        _run_one(path, tmp_path)
    assert str(path) in str(err.value)


def test_too_short_for_mppca_and_non_finite_voxels(tmp_path):
    short = _series(tmp_path, name="sub-01_acq-short_dwi", n=7, n_b0=1)
    with pytest.raises(DwiInputError, match="too short for MP-PCA: 7 volumes"):
        _run_one(short, tmp_path, DwiConfig(gibbs=False, motion=False))
    data = np.random.default_rng(0).random((16, 16, 12, 12)).astype(np.float32) + 1
    data[0, 0, 0, 3] = np.nan
    few = _series(tmp_path, name="sub-01_acq-nan_dwi", data=data)
    record = _run_one(few, tmp_path)
    assert any("1 non-finite voxels set to 0" in w for w in record["warnings"])
    data[:, :, :6] = np.inf
    many = _series(tmp_path, name="sub-01_acq-inf_dwi", data=data)
    with pytest.raises(DwiInputError, match="NaN or infinite"):
        _run_one(many, tmp_path)


def test_batch_isolates_a_bad_series(tmp_path):
    good = _series(tmp_path, name="sub-01_dwi")
    bad = _series(tmp_path, name="sub-02_dwi", bvals=np.full(12, 1000.0))
    result = runner.invoke(
        app,
        [
            "dwi",
            str(good),
            str(bad),
            "--out",
            str(tmp_path / "o"),
            "--no-gibbs",
            "--no-motion",
            "--json",
            "-j",
            "2",
        ],
    )
    assert result.exit_code == 1
    lines = {Path(x["input"]).name: x for x in map(json.loads, result.output.splitlines())}
    assert lines["sub-01_dwi.nii.gz"]["status"] == "done"
    assert lines["sub-02_dwi.nii.gz"]["status"] == "failed"
    assert "no b0 volume" in lines["sub-02_dwi.nii.gz"]["error"]
    assert str(bad) in lines["sub-02_dwi.nii.gz"]["error"]
