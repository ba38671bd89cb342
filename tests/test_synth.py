"""The generated corpus checked independently of the generator: pybids reads
it, the files say what the truth table claims, and the degradations are there."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from openmind_curate.errors import ConflictError
from openmind_curate.jobs import JobOptions
from openmind_curate.synth import SynthConfig, generate

IMAGES = "kind == 'image'"


def _load(root: Path, rel: str) -> np.ndarray:
    return np.asanyarray(nib.load(root / rel).get_fdata(dtype=np.float32))


def _nifti_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.glob("ds*/**/*.nii.gz") if not p.name.startswith(".")
    }


def test_truth_lists_every_file_written(corpus):
    root, truth = corpus
    assert set(truth["path"]) == _nifti_files(root)
    assert truth["image_id"].is_unique


def test_size_and_variety(corpus):
    root, truth = corpus
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 300e6, f"default corpus is {total / 1e6:.0f} MB"
    images = truth.query(IMAGES)
    assert images["dataset_id"].nunique() == 4
    assert {
        "T1w",
        "T2w",
        "FLAIR",
        "PDw",
        "DWI",
        "T2starw",
        "inplaneT2",
        "angio",
        "MP2RAGE",
        "UNIT1",
    } <= set(images["modality"])
    assert {"T2star", "defacemask", "dseg"} <= set(truth["suffix"])
    assert images["axcodes"].nunique() >= 4
    assert truth["dtype"].nunique() >= 4
    assert (images["oblique_deg"].map(lambda a: max(abs(np.asarray(a)))) > 5).any()
    assert images["session"].notna().any()
    spacings = {tuple(np.round(s, 2)) for s in images["spacing"]}
    assert len(spacings) >= 5


def test_pybids_indexes_every_dataset_and_agrees_on_metadata(corpus):
    from bids import BIDSLayout

    root, truth = corpus
    for ds, rows in truth.groupby("dataset_id"):
        has_derivatives = bool(rows["is_derivative"].any())
        layout = BIDSLayout(root / ds, validate=True, derivatives=has_derivatives)
        raw = {
            str(Path(f).relative_to(root / ds))
            for f in layout.get(return_type="filename", extension=".nii.gz", scope="raw")
        }
        assert raw == set(rows.loc[~rows["is_derivative"], "rel_path"]), ds
        labels = rows.loc[rows["is_derivative"], "rel_path"]
        derived = {
            str(Path(f).relative_to(root / ds))
            for f in layout.get(return_type="filename", scope="derivatives")
        }
        assert set(labels) <= derived
        for row in rows.query(IMAGES).itertuples():
            got = layout.get_metadata(str(root / row.path))
            assert got == json.loads(row.sidecar), row.path


def test_headers_match_the_truth_table(corpus):
    root, truth = corpus
    for row in truth.query("header_status == 'ok'").itertuples():
        img = nib.load(root / row.path)
        assert list(img.shape) == list(row.shape[: len(img.shape)]), row.path
        assert img.header.get_data_dtype() == np.dtype(row.dtype), row.path
        assert np.allclose(img.header.get_zooms()[:3], row.spacing, atol=1e-3), row.path
        assert "".join(nib.aff2axcodes(img.affine)) == row.axcodes


def _background(root: Path, row) -> np.ndarray:
    """Voxels well away from the head (truth mask dilated by 4 voxels)."""
    head = _load(root, row.anat_mask_truth) > 0
    if isinstance(row.anon_mask_truth, str):
        head |= _load(root, row.anon_mask_truth) > 0
    far = ~ndimage.binary_dilation(head, iterations=4)
    return far


def test_background_noise_matches_the_recorded_sigma(corpus):
    root, truth = corpus
    rows = truth.query(
        "kind == 'image' and datatype == 'anat' and corruption.isna() and flags.isna() "
        "and not skull_stripped and ghost_amplitude == 0 and gibbs_keep == 1"
    )  # ghosts and Gibbs ringing put real signal into the background
    checked = 0
    for row in rows.itertuples():
        data = _load(root, row.path)
        bg = data[_background(root, row)]
        # Rayleigh background: E[x^2] = 2 sigma^2.
        sigma = np.sqrt(np.mean(bg.astype(np.float64) ** 2) / 2)
        assert sigma == pytest.approx(row.noise_sigma, rel=0.1), row.path
        checked += 1
    assert checked >= 20


def test_dwi_background_noise_and_gradients(corpus):
    root, truth = corpus
    dwis = truth.query("modality == 'DWI'")
    assert len(dwis) == 3 and dwis["dwi_shells"].str.contains("2000").any()
    for row in dwis.itertuples():
        ds = root / row.dataset_id
        bvals = np.loadtxt(ds / row.bval_path)
        bvecs = np.loadtxt(ds / row.bvec_path)
        data = nib.load(root / row.path)
        assert data.shape[3] == len(bvals) == bvecs.shape[1] == row.n_volumes
        dw = bvals > 0
        assert np.allclose(np.linalg.norm(bvecs[:, dw], axis=0), 1, atol=1e-4)
        b0 = np.asanyarray(data.dataobj[..., np.flatnonzero(~dw)[0]]).astype(float)
        far = ~ndimage.binary_dilation(_load(root, row.anat_mask_truth) > 0, iterations=3)
        far[:, :, :2] = far[:, :, -2:] = False  # the slab cuts the neck
        sigma = np.sqrt(np.mean(b0[far] ** 2) / 2)
        assert sigma == pytest.approx(row.noise_sigma, rel=0.1)


def test_dwi_ground_truth_is_what_a_tensor_fit_finds(corpus):
    """dipy's WLS fit on the written series recovers the recorded FA and MD."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    root, truth = corpus
    row = truth.query("modality == 'DWI' and dwi_shells.str.contains('2000') == False").iloc[0]
    ds = root / row.dataset_id
    bvals, bvecs = np.loadtxt(ds / row.bval_path), np.loadtxt(ds / row.bvec_path)
    data = _load(root, row.path)
    fa_true, md_true = _load(root, row.fa_truth), _load(root, row.md_truth)
    brain = _load(root, row.brain_mask_truth) > 0
    wm = brain & (fa_true > 0.4)
    fit = TensorModel(gradient_table(bvals, bvecs=bvecs.T), fit_method="WLS").fit(data, mask=wm)
    fa_err = np.abs(fit.fa[wm] - fa_true[wm])
    assert np.median(fa_err) < 0.05
    assert np.median(np.abs(fit.md[wm] / md_true[wm] - 1)) < 0.08
    assert 0.4 < np.median(fa_true[wm]) < 0.9  # white matter looks like white matter


def test_defaced_region_equals_the_recorded_anonymization_mask(corpus):
    root, truth = corpus
    zero = truth.query("deface == 'zero' and kind == 'image'")
    assert len(zero) >= 6
    for row in zero.itertuples():
        data = _load(root, row.path)
        anon = _load(root, row.anon_mask_truth) > 0
        head = anon | (_load(root, row.anat_mask_truth) > 0)
        assert anon.sum() > 1000, row.path
        assert np.all(data[anon] == 0), row.path
        zeros_in_head = head & (data == 0)
        dice = 2 * (zeros_in_head & anon).sum() / (zeros_in_head.sum() + anon.sum())
        assert dice > 0.99, row.path
    for row in truth.query("deface == 'blur'").itertuples():
        data = _load(root, row.path)
        anon = _load(root, row.anon_mask_truth) > 0
        rest = (_load(root, row.anat_mask_truth) > 0) & ~anon
        hf = np.abs(ndimage.laplace(data))
        assert hf[anon].mean() < 0.3 * hf[rest].mean(), row.path


def test_defacemask_file_marks_the_removed_face(corpus):
    root, truth = corpus
    for mask_row in truth.query("suffix == 'defacemask'").itertuples():
        image = truth.query(
            "dataset_id == @mask_row.dataset_id and subject == @mask_row.subject "
            "and suffix == 'PDw'"
        ).iloc[0]
        mask = _load(root, mask_row.path)
        assert set(np.unique(mask)) == {0, 1}
        assert np.array_equal(mask > 0, _load(root, image.anon_mask_truth) > 0)


def test_skull_stripped_image_has_signal_only_in_the_brain(corpus):
    root, truth = corpus
    rows = truth.query("skull_stripped")
    assert len(rows) == 1 and rows.iloc[0]["is_brain_extracted"]
    row = rows.iloc[0]
    data = _load(root, row.path)
    anon = _load(root, row.anon_mask_truth) > 0
    anat = _load(root, row.anat_mask_truth) > 0
    assert np.all(data[anon] == 0) and np.all(data[~anat] == 0)
    assert (data[anat] > 0).mean() > 0.99


def test_each_corrupted_file_really_fails(corpus):
    root, truth = corpus
    bad = truth.set_index("corruption").loc[["truncated", "empty", "nan", "zeros"]]
    assert list(bad["header_status"]) == ["corrupt", "empty", "ok", "ok"]
    with pytest.raises(Exception):  # noqa: B017 - any read error is the point
        nib.load(root / bad.loc["truncated", "path"]).get_fdata()
    assert (root / bad.loc["empty", "path"]).stat().st_size == 0
    with pytest.raises(Exception):  # noqa: B017
        nib.load(root / bad.loc["empty", "path"])
    assert np.isnan(_load(root, bad.loc["nan", "path"])).any()
    zeros = _load(root, bad.loc["zeros", "path"])
    assert zeros.size > 0 and not zeros.any()
    for row in truth.query("corruption.isna() and kind == 'image'").itertuples():
        data = _load(root, row.path)
        assert np.isfinite(data).all() and data.std() > 0, row.path


def test_cropped_field_of_view_cuts_the_head(corpus):
    root, truth = corpus

    def border_mean_over_sigma(row) -> float:
        data = _load(root, row.path)
        faces = [np.take(data, i, axis=a) for a in range(3) for i in (0, -1)]
        return max(float(f.mean()) for f in faces) / row.noise_sigma

    cropped = truth.query("fov_crop > 0")
    assert len(cropped) == 1
    assert border_mean_over_sigma(cropped.iloc[0]) > 5
    clean = truth.query(
        "fov_crop == 0 and corruption.isna() and datatype == 'anat' and "
        "kind == 'image' and flags.isna() and not skull_stripped and "
        "ghost_amplitude == 0"
    )
    for row in clean.itertuples():
        assert border_mean_over_sigma(row) < 2.5, row.path


def test_labels_derivative_matches_the_t1w(corpus):
    root, truth = corpus
    labels = truth.query("suffix == 'dseg'")
    assert len(labels) == 2
    tsv = pd.read_csv(
        root / labels.iloc[0]["dataset_id"] / "derivatives/labels/desc-tissue_dseg.tsv", sep="\t"
    )
    assert list(tsv["index"]) == [0, 1, 2, 3]
    for row in labels.itertuples():
        t1_row = truth.query(
            "dataset_id == @row.dataset_id and subject == @row.subject and suffix == 'T1w'"
        ).iloc[0]
        lab_img, t1_img = nib.load(root / row.path), nib.load(root / t1_row.path)
        assert lab_img.shape == t1_img.shape and np.allclose(lab_img.affine, t1_img.affine)
        lab = np.asanyarray(lab_img.dataobj)
        t1 = t1_img.get_fdata()
        assert set(np.unique(lab)) == {0, 1, 2, 3}
        csf, gm, wm = (np.median(t1[lab == k]) for k in (1, 2, 3))
        assert wm > gm > csf  # the labels sit on the T1w's anatomy


def test_degradation_ladders_are_recorded(corpus):
    _, truth = corpus
    ladders = truth.dropna(subset=["ladder"])
    for name, attr in [
        ("noise", "noise_level"),
        ("blur", "blur_fwhm_mm"),
        ("ghost", "ghost_amplitude"),
    ]:
        steps = ladders[ladders["ladder"] == name].sort_values("ladder_level")
        assert len(steps) == 5 and steps[attr].is_monotonic_increasing, name
        assert steps["subject"].nunique() == 1  # one head, one variable
    gibbs = ladders[ladders["ladder"] == "gibbs"].sort_values("ladder_level")
    assert gibbs["gibbs_keep"].is_monotonic_decreasing


def test_ghosting_puts_signal_half_a_field_of_view_away(corpus):
    root, truth = corpus
    steps = truth[truth["ladder"] == "ghost"].sort_values("ladder_level")
    ratios = []
    for row in steps.itertuples():
        data = _load(root, row.path)
        bg = _background(root, row)
        ratios.append(float(data[bg].mean()))
    assert ratios == sorted(ratios) and ratios[-1] > 3 * ratios[0]


def test_participants_files_vary_like_openneuro(corpus):
    root, truth = corpus
    columns, has_json, bom = set(), 0, 0
    for ds in sorted(truth["dataset_id"].unique()):
        raw = (root / ds / "participants.tsv").read_bytes()
        bom += raw.startswith(b"\xef\xbb\xbf")
        table = pd.read_csv(
            root / ds / "participants.tsv",
            sep="\t",
            dtype=str,
            encoding="utf-8-sig",
            keep_default_na=False,
        )
        subjects = sorted(truth.loc[truth["dataset_id"] == ds, "subject"].unique())
        assert list(table["participant_id"]) == [f"sub-{s}" for s in subjects]
        columns.add(tuple(table.columns))
        has_json += (root / ds / "participants.json").exists()
        assert (table == "n/a").any().any(), ds
    assert len(columns) == 4 and has_json >= 2 and bom == 1
    coded = truth[truth["participants_style"] == "coded"]
    assert "89+" in set(coded["age_raw"]) and coded["age_raw"].str.contains("-").any()
    ses_ages = truth.dropna(subset=["session"]).groupby("subject")["age"].nunique()
    assert (ses_ages == 2).all()  # sessions.tsv ages differ per session


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "rows" not in p.parts
    }


def test_generation_is_deterministic_for_a_seed(tmp_path):
    cfg = SynthConfig(n_datasets=2, n_subjects=1, seed=5, voxel_scale=3.0)
    one = JobOptions(workers=1, progress=False)
    two = JobOptions(workers=2, progress=False)
    generate(tmp_path / "a", cfg, one)
    generate(tmp_path / "b", cfg, two)
    generate(tmp_path / "c", SynthConfig(n_datasets=2, n_subjects=1, seed=6, voxel_scale=3.0), one)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    images = [k for k in a if k.endswith("_T1w.nii.gz")]
    assert images and all(a[k] != c[k] for k in images)


def test_resume_refuses_a_different_configuration(tmp_path):
    cfg = SynthConfig(n_datasets=1, n_subjects=1, voxel_scale=3.0)
    generate(tmp_path, cfg, JobOptions(workers=1, progress=False))
    with pytest.raises(ConflictError, match="another configuration"):
        generate(tmp_path, SynthConfig(n_datasets=1, n_subjects=1, seed=9, voxel_scale=3.0))
    # A corpus made before a config field existed resumes: the field counts as its default.
    made = tmp_path / "truth" / "config.json"
    older = json.loads(made.read_text())
    del older["n_poor_datasets"]
    made.write_text(json.dumps(older))
    _, again = generate(tmp_path, cfg, JobOptions(workers=1, progress=False))
    assert len(again.skipped) == len(again.results) > 0
    with pytest.raises(ConflictError, match="another configuration"):
        generate(tmp_path, replace(cfg, n_poor_datasets=1))


def test_a_file_that_fails_is_named_and_synth_exits_1(tmp_path):
    """A file that cannot be written fails its item, not the run: `generate`
    returns the batch result without a truth table, and `curate synth` prints
    the batch summary naming the file and exits 1 (no internal error)."""
    from typer.testing import CliRunner

    from openmind_curate.cli.app import app
    from openmind_curate.synth.corpus import TRUTH_TABLE

    cfg = SynthConfig(n_datasets=1, n_subjects=1, voxel_scale=3.0)
    blocked = tmp_path / "ds900001" / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    blocked.mkdir(parents=True)  # a folder where the T2w must go
    truth, batch = generate(tmp_path, cfg, JobOptions(workers=1, progress=False))
    assert truth is None and not (tmp_path / TRUTH_TABLE).exists()
    assert [r.label for r in batch.failed] == ["ds900001/sub-01/anat/sub-01_T2w.nii.gz"]
    assert len(batch.done) == len(batch.results) - 1 > 0

    args = ["synth", "--out", str(tmp_path), "--n-datasets", "1", "--n-subjects", "1"]
    result = CliRunner().invoke(app, [*args, "--voxel-scale", "3", "-j", "1", "-q"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "1 failed" in result.output
    assert "FAILED ds900001/sub-01/anat/sub-01_T2w.nii.gz" in result.output
    assert not (tmp_path / TRUTH_TABLE).exists()


def test_poor_datasets_are_added_after_the_cycle_and_degraded_throughout():
    """`n_poor_datasets` appends datasets and leaves the rest of the corpus as
    it was; each of their images is noisy, blurred and ghosted enough that an
    unbiased rater's IQS (the mean of the three axes) is above 2.5."""
    from openmind_curate.quality.simulate import latent_scores
    from openmind_curate.synth.plan import POOR, plan_corpus

    base = plan_corpus(SynthConfig(n_subjects=2))
    plans = plan_corpus(SynthConfig(n_subjects=2, n_poor_datasets=1))
    assert [p.dataset_id for p in plans] == [p.dataset_id for p in base] + ["ds900005"]
    assert all(
        a.images == b.images and a.files == b.files for a, b in zip(base, plans[:-1], strict=True)
    )
    poor = plans[-1]
    assert poor.profile == POOR and len(poor.subjects) == 2
    assert sorted(i.modality for i in poor.images) == ["T1w", "T1w", "T2w", "T2w"]
    for spec in poor.images:
        assert spec.noise_level >= 0.06 and spec.blur_fwhm_mm >= 4 and spec.ghost_amplitude >= 0.1
        axes = latent_scores(pd.Series({**asdict(spec), "dwi_snr": None}))
        assert np.mean(list(axes.values())) > 2.5, spec.rel_path


def test_summary_counts_defaced_images_not_their_mask_files(corpus):
    from openmind_curate.synth.summary import summarize

    _, truth = corpus
    masks = truth[(truth["kind"] == "mask") & truth["deface"].notna()]
    assert len(masks) >= 1  # the corpus has a defacemask beside a defaced image
    defaced_images = truth[(truth["kind"] == "image") & truth["deface"].notna()]
    assert summarize(truth).degradations["defaced"] == len(defaced_images)
