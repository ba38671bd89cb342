"""The crawler on externally written BIDS data (bids-examples), on the generated
corpus (against its truth table), and on hostile inputs."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from openmind_curate.bids.crawl import CrawlOptions, crawl
from openmind_curate.bids.nifti import read_header
from openmind_curate.jobs import JobOptions

JOBS = JobOptions(workers=2, progress=False)

# Counted independently with `find DS -path '*/anat/*' -o -path '*/dwi/*' -o
# -path '*/pet/*'` (derivatives pruned), suffix by suffix, then grouped by hand.
EXPECTED = {
    "7t_trt": {"T1map": 22, "T1w": 22},
    "ds000117": {"FLASH": 224, "T1w": 16, "DWI": 11},
    "ds000248": {"FLASH": 1, "T1w": 1},
    "ds004332": {"FLAIR": 6, "T1w": 32, "T2starw": 8, "T2w": 12},
    "ds114": {"T1w": 20, "DWI": 20},
    "dwi_deriv": {"ADC": 1, "FA": 1, "TRACE": 1, "DWI": 1, "other": 3},
    "pet005": {"T1w": 2, "PET": 2},
    "qmri_mp2rage": {"MP2RAGE": 4, "T1map": 1, "UNIT1": 1},
    "synthetic": {"T1w": 10},
}


@pytest.fixture(scope="module")
def examples(bids_examples, tmp_path_factory):
    """A writable copy of bids-examples and its crawl."""
    root = tmp_path_factory.mktemp("bx") / "bids-examples"
    shutil.copytree(bids_examples, root, symlinks=True)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(p.stat().st_mode | 0o200)
    out = root.parent / "index" / "images.parquet"
    result = crawl([root], out, CrawlOptions(), JOBS)
    return root, out, result


def test_counts_per_dataset_and_modality(examples):
    _, _, result = examples
    index = result.index.to_pandas()
    got = {ds: dict(group["modality"].value_counts()) for ds, group in index.groupby("dataset_id")}
    assert got == EXPECTED
    assert not result.failures


def test_counts_agree_with_a_pybids_listing(examples):
    from bids import BIDSLayout

    root, _, result = examples
    index = result.index.to_pandas()
    for ds in EXPECTED:
        layout = BIDSLayout(root / ds, validate=False, derivatives=False)
        files = layout.get(datatype=["anat", "dwi", "pet"], extension=[".nii", ".nii.gz"])
        theirs = {os.path.relpath(f.path, root / ds) for f in files}
        theirs = {p for p in theirs if "_defacemask" not in p and "_mask" not in p}
        ours = set(index.loc[index["dataset_id"] == ds, "path"])
        assert ours == theirs, ds


def test_inherited_metadata_matches_pybids(examples):
    from bids import BIDSLayout

    root, _, result = examples
    index = result.index.to_pandas()
    for ds in ("ds000117", "ds114", "7t_trt", "qmri_mp2rage", "pet005", "synthetic"):
        layout = BIDSLayout(root / ds, validate=False, derivatives=False)
        for row in index[index["dataset_id"] == ds].itertuples():
            theirs = layout.get_metadata(str(root / ds / row.path))
            ours = json.loads(row.sidecar) if isinstance(row.sidecar, str) else {}
            assert ours == theirs, row.path


def test_known_inherited_values(examples):
    root, _, result = examples
    index = result.index.to_pandas().set_index(["dataset_id", "path"])
    mprage = json.loads((root / "ds000117" / "acq-mprage_T1w.json").read_text())
    rows = index.loc["ds000117"]
    t1 = rows[rows["suffix"] == "T1w"]
    assert len(t1) == 16
    assert (t1["repetition_time"] == mprage["RepetitionTime"]).all()
    assert mprage["RepetitionTime"] == 2.25
    dwi = index.loc["ds114"].query("modality == 'DWI'")
    assert len(dwi) == 20
    assert set(dwi["bval_path"]) == {"dwi.bval"} and set(dwi["bvec_path"]) == {"dwi.bvec"}
    own = index.loc["ds000117"].query("modality == 'DWI'")
    assert all(p.endswith("_dwi.bval") and p.startswith("sub-") for p in own["bval_path"])
    mp2 = index.loc["qmri_mp2rage"]
    assert (mp2.query("suffix == 'MP2RAGE'")["magnetic_field_strength"] == 7).all()
    flags = dict(zip(mp2.index, mp2["flags"], strict=True))
    assert flags["sub-1/anat/sub-1_inv-1_part-phase_MP2RAGE.nii"] == "phase,inversion"
    assert flags["sub-1/anat/sub-1_inv-2_part-mag_MP2RAGE.nii"] == "inversion"
    assert pd.isna(flags["sub-1/anat/sub-1_UNIT1.nii"])


def test_participants_from_bids_examples(examples):
    _, _, result = examples
    index = result.index.to_pandas()
    trt = index[index["dataset_id"] == "7t_trt"].drop_duplicates("subject").set_index("subject")
    table = pd.read_csv(examples[0] / "7t_trt" / "participants.tsv", sep="\t", dtype=str)
    for r in table.itertuples():
        sub = r.participant_id.removeprefix("sub-")
        assert trt.loc[sub, "age"] == float(r.age_at_first_scan_years)
        assert trt.loc[sub, "sex"] == r.sex
        score = float(r.handedness)
        assert trt.loc[sub, "handedness"] == ("R" if score >= 40 else "L" if score <= -40 else "A")
    pet = index[index["dataset_id"] == "pet005"].iloc[0]
    assert (pet["weight"], pet["sex"]) == (62.0, "F")
    bom = index[index["dataset_id"] == "ds000248"].iloc[0]  # BOM file, all n/a
    assert pd.isna(bom["age"]) and pd.isna(bom["sex"])


def test_header_statuses_on_bids_examples(examples):
    _, _, result = examples
    index = result.index.to_pandas()
    sizes = index["size_bytes"]
    assert (index.loc[sizes == 0, "header_status"] == "empty").all()
    # pet005's T1w: real header, 4D with a single volume.
    t1 = index.query("dataset_id == 'pet005' and suffix == 'T1w'")
    assert (t1["header_status"] == "ok").all() and (t1["n_volumes"] == 1).all()
    assert [list(s) for s in t1["shape"]] == [[192, 512, 512, 1]] * 2
    # pet005's PET files are one byte: corrupt, not ok, not empty.
    assert set(index.query("dataset_id == 'pet005' and suffix == 'pet'")["header_status"]) == {
        "corrupt"
    }
    # synthetic: 352-byte header-only files promising 128 MiB of data.
    assert set(index.query("dataset_id == 'synthetic'")["header_status"]) == {"corrupt"}


def test_dask_backend_gives_the_same_index(examples, dask_cluster, tmp_path):
    root, _, result = examples
    options = JobOptions(scheduler=dask_cluster.scheduler_address, progress=False)
    again = crawl([root], tmp_path / "images.parquet", CrawlOptions(), options)
    cols = ["image_id", "modality", "header_status", "sidecar", "age"]
    a = result.index.to_pandas()[cols].sort_values("image_id").reset_index(drop=True)
    b = again.index.to_pandas()[cols].sort_values("image_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


# ------------------------------------------------------------ generated corpus

HARMONIZED = ["age", "age_raw", "sex", "handedness", "weight", "bmi", "health_status"]


def test_generated_corpus_matches_the_truth(corpus, tmp_path):
    root, truth = corpus
    result = crawl([root], tmp_path / "images.parquet", CrawlOptions(derivatives=True), JOBS)
    index = result.index.to_pandas().set_index("image_id")
    images = truth[truth["kind"] == "image"].set_index("image_id")
    assert set(index.index) == set(images.index)  # masks and label maps are not images
    both = images.merge(index, left_index=True, right_index=True, suffixes=("_t", "_i"))
    assert (both["header_status_t"] == both["header_status_i"]).all()
    assert (both["modality_t"] == both["modality_i"]).all()
    for col in HARMONIZED:
        t, i = both[f"{col}_t"], both[f"{col}_i"]
        if t.dtype.kind == "f":
            assert np.allclose(t.astype(float), i.astype(float), equal_nan=True, rtol=1e-6), col
        else:
            assert ((t == i) | (t.isna() & i.isna())).all(), col
    ok = both[both["header_status_t"] == "ok"]
    assert all(list(a) == list(b) for a, b in zip(ok["shape_t"], ok["shape_i"], strict=True))
    assert (ok["n_volumes_t"] == ok["n_volumes_i"]).all()
    assert all(
        np.allclose(a, b, atol=1e-4) for a, b in zip(ok["spacing_t"], ok["spacing_i"], strict=True)
    )
    for row in both.itertuples():
        assert json.loads(row.sidecar_t) == json.loads(row.sidecar_i), row.path_t
    dwi = both[both["modality_t"] == "DWI"]
    assert (dwi["bval_path_t"] == dwi["bval_path_i"]).all()
    flags = dict(zip(both["path_t"], both["flags_i"], strict=True))
    assert any(v == "phase" for v in flags.values())
    problems = result.problems.to_pandas()
    bad = set(truth.loc[truth["header_status"] != "ok", "rel_path"])
    assert set(problems.loc[problems["kind"] == "header", "path"]) == bad


def test_incremental_recrawl(corpus, tmp_path):
    src, _ = corpus
    root = tmp_path / "corpus"
    shutil.copytree(src, root)
    out = tmp_path / "index" / "images.parquet"
    first = crawl([root], out, CrawlOptions(), JOBS)
    n = first.n_datasets
    assert first.n_headers_read == first.index.num_rows

    again = crawl([root], out, CrawlOptions(), JOBS)
    assert (again.n_unchanged, again.n_headers_read) == (n, 0)
    assert again.index.sort_by("image_id").equals(first.index.sort_by("image_id"))

    # One image rewritten: only its header is read again, in only its dataset.
    image = root / "ds900001/sub-01/anat/sub-01_T2w.nii.gz"
    img = nib.load(image)
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 10), np.int16), img.affine), image)
    # A top-level sidecar edited: every T1w row of that dataset changes, no header read.
    sidecar = root / "ds900001/T1w.json"
    doc = json.loads(sidecar.read_text())
    doc["RepetitionTime"] = 9.99
    sidecar.write_text(json.dumps(doc))
    third = crawl([root], out, CrawlOptions(), JOBS)
    assert (third.n_unchanged, third.n_headers_read) == (n - 1, 1)
    index = third.index.to_pandas().set_index("path")
    assert list(index.loc["sub-01/anat/sub-01_T2w.nii.gz", "shape"]) == [8, 9, 10]
    t1 = index[(index["dataset_id"] == "ds900001") & (index["suffix"] == "T1w")]
    assert (t1["repetition_time"] == 9.99).all() and len(t1) == 2
    assert third.index.num_rows == first.index.num_rows


# --------------------------------------------------------------- hostile inputs


def _nifti(path: Path, shape=(6, 7, 8), dtype=np.int16) -> Path:
    """Random data, so that the compressed file is not trivially small."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 1000, shape).astype(dtype)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


@pytest.fixture()
def hostile(tmp_path) -> Path:
    ds = tmp_path / "data set ü" / "ds-hostile"
    anat = ds / "sub-01" / "anat"
    (ds / "dataset_description.json").parent.mkdir(parents=True)
    (ds / "dataset_description.json").write_text('{"Name": "hostile", "BIDSVersion": "1.9.0"}')
    (ds / "T1w.json").write_text('{"RepetitionTime": 2.0, "EchoTime": 0.003}')
    # Latin-1 bytes, a duplicated participant and a ragged row.
    (ds / "participants.tsv").write_bytes(
        "participant_id\tage\tsex\tsite\nsub-01\t30\tF\tZürich\nsub-01\t31\tM\tBern\n"
        "sub-02\t40\n".encode("latin-1")
    )
    good = _nifti(anat / "sub-01_run-1_T1w.nii.gz")
    raw = good.read_bytes()
    (anat / "sub-01_run-2_T1w.nii.gz").write_bytes(raw[: len(raw) // 2])  # truncated gzip
    (anat / "sub-01_run-3_T1w.nii.gz").write_bytes(b"\n")  # a 1-byte NIfTI
    os.symlink(ds / ".git/annex/objects/missing", anat / "sub-01_run-4_T1w.nii.gz")
    _nifti(anat / "sub-01_run-5_T1w.nii.gz", shape=(6, 7, 8, 1))  # 4D with one volume
    _nifti(anat / "sub-01_acq-mprägé_T1w.nii.gz")  # unicode in a label
    (anat / "sub-01_run-1_T1w.json").write_text('{"EchoTime": 0.004,}')  # trailing comma
    _nifti(ds / "sub-02" / "anat" / "sub-02_T2w.nii")
    return ds


def test_hostile_inputs_are_reported_and_the_crawl_goes_on(hostile, tmp_path):
    out = tmp_path / "index" / "images.parquet"
    result = crawl([hostile.parent], out, CrawlOptions(), JobOptions(workers=1, progress=False))
    index = result.index.to_pandas().set_index("path")
    status = index["header_status"].to_dict()
    a = "sub-01/anat/sub-01_"
    assert status == {
        f"{a}run-1_T1w.nii.gz": "ok",
        f"{a}run-2_T1w.nii.gz": "corrupt",
        f"{a}run-3_T1w.nii.gz": "corrupt",
        f"{a}run-4_T1w.nii.gz": "missing",
        f"{a}run-5_T1w.nii.gz": "ok",
        f"{a}acq-mprägé_T1w.nii.gz": "ok",
        "sub-02/anat/sub-02_T2w.nii": "ok",
    }
    assert index.loc[f"{a}run-5_T1w.nii.gz", "n_volumes"] == 1
    assert index.loc[f"{a}acq-mprägé_T1w.nii.gz", "acq"] == "mprägé"
    # The malformed sidecar is skipped; the inherited top-level values remain.
    assert json.loads(index.loc[f"{a}run-1_T1w.nii.gz", "sidecar"]) == {
        "RepetitionTime": 2.0,
        "EchoTime": 0.003,
    }
    # Participants: first row of the duplicate kept; Latin-1 read; ragged row padded.
    sub1 = index.loc[f"{a}run-1_T1w.nii.gz"]
    assert (sub1["age"], sub1["sex"]) == (30.0, "F")
    assert json.loads(sub1["participant_extra"]) == {"site": "Zürich"}
    assert index.loc["sub-02/anat/sub-02_T2w.nii", "age"] == 40.0
    problems = result.problems.to_pandas()
    msgs = {(p.path, p.kind): p.message for p in problems.itertuples()}
    assert "trailing" in msgs[(f"{a}run-1_T1w.json", "malformed_json")].lower() or (
        "line 1 column 20" in msgs[(f"{a}run-1_T1w.json", "malformed_json")]
    )
    assert ("participants.tsv", "encoding") in msgs
    assert ("participants.tsv", "duplicate") in msgs
    assert ("participants.tsv", "bad_tsv") in msgs
    assert "broken symbolic link" in msgs[(f"{a}run-4_T1w.nii.gz", "header")]
    assert "truncated" in msgs[(f"{a}run-2_T1w.nii.gz", "header")]
    assert "too small to be gzip" in msgs[(f"{a}run-3_T1w.nii.gz", "header")]
    assert all(p.dataset_id == "ds-hostile" for p in problems.itertuples())


def test_permission_errors_are_reported(hostile, tmp_path, monkeypatch):
    """As root chmod cannot deny reads, so the OS answer is simulated."""
    import builtins

    real_open, real_scandir = builtins.open, os.scandir
    blocked_file = str(hostile / "T1w.json")
    blocked_dir = str(hostile / "sub-02")

    def fake_open(path, *args, **kwargs):
        if str(path) == blocked_file:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    def fake_scandir(path="."):
        if str(path) == blocked_dir:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)
    result = crawl(
        [hostile], tmp_path / "i.parquet", CrawlOptions(), JobOptions(workers=1, progress=False)
    )
    problems = {(p.path, p.kind) for p in result.problems.to_pandas().itertuples()}
    assert ("T1w.json", "unreadable") in problems
    assert ("sub-02", "unreadable") in problems
    assert result.index.num_rows == 6  # sub-02 unreadable, sub-01 intact


def test_gzip_trailer_check_agrees_with_a_full_read(tmp_path):
    path = _nifti(tmp_path / "x.nii.gz", shape=(20, 20, 20))
    assert read_header(path).status == "ok"
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 3, 400):
        bad = tmp_path / f"cut{cut}.nii.gz"
        bad.write_bytes(data[:cut])
        with pytest.raises(Exception):  # noqa: B017 - nibabel itself cannot read it
            nib.load(bad).get_fdata()
        assert read_header(bad).status == "corrupt", cut
    # Cut inside the 8-byte trailer: the data reads, the gzip integrity check fails.
    tail = tmp_path / "tail.nii.gz"
    tail.write_bytes(data[:-3])
    info = read_header(tail)
    assert info.status == "corrupt" and "trailer" in info.message
    # A multi-member gzip (valid, e.g. from concatenation) is not flagged.
    payload = gzip.decompress(data)
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(payload[:1000]) + gzip.compress(payload[1000:]))
    assert nib.load(multi).get_fdata().shape == (20, 20, 20)
    assert read_header(multi).status == "ok"


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("order", ["<", ">"])
def test_header_facts_of_nifti1_and_nifti2_in_either_byte_order(tmp_path, version, order):
    """Known answers from a header nibabel wrote: shape, spacing, volumes, dtype,
    and the size the header promises (vox_offset + data) against the file's."""
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    data = np.arange(240, dtype=f"{order}i2").reshape(4, 5, 6, 2)
    header = cls(data, np.eye(4)).header
    if header.endianness != order:
        header = header.as_byteswapped(order)
    image = cls(data, None, header)
    image.header.set_zooms((1.5, 2.0, 2.5, 3.0))
    path = tmp_path / "x.nii"
    nib.save(image, path)
    assert path.read_bytes()[:4] == np.array([348 if version == 1 else 540], f"{order}i4").tobytes()
    info = read_header(path)
    assert (info.status, info.shape, info.spacing) == ("ok", [4, 5, 6, 2], [1.5, 2.0, 2.5])
    assert (info.n_volumes, info.dtype) == (2, "int16")
    short = tmp_path / "short.nii"
    short.write_bytes(path.read_bytes()[:-10])
    info = read_header(short)
    assert info.status == "corrupt" and info.message.startswith("truncated"), info
