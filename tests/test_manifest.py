"""`curate build-manifest`: filters, split, sidecar, portable paths, exports, errors.

Known answers on a hand-built index of a few rows (every file in it exists,
so the tests can check that a manifest's paths resolve).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.cli import app
from openmind_curate.errors import InputError
from openmind_curate.manifest import build as B
from openmind_curate.manifest import filters as F
from openmind_curate.manifest import openmind_csv, split
from openmind_curate.manifest.writers import read_manifest, sidecar_path
from openmind_curate.paths import _exact, rebase
from openmind_curate.schema import IMAGE_INDEX, IQS, rows_to_table

runner = CliRunner()
ENV = {"COLUMNS": "200"}

# label: (dataset, subject, session, modality, iqs, extra)
ROWS = {
    "a1": ("dsA", "01", None, "T1w", 1.5, {}),
    "a2": ("dsA", "01", None, "T2w", 3.0, {}),
    "a3": ("dsA", "02", None, "FLAIR", None, {}),
    "a4": ("dsA", "02", None, "DWI", 2.0, {"n_volumes": 65, "masks": False}),
    "b1": ("dsB", "01", "01", "T1w", 2.0, {"header_status": "corrupt"}),
    "b2": ("dsB", "01", "01", "T2w", 2.0, {"spacing": [1.0, 1.0, 3.5], "masks": False}),
    "b3": ("dsB", "02", "02", "FA", 2.2, {"derived_from": "a4", "iqs_predicted": 3.0}),
    "c1": ("dsC", "01", None, "T2w", 2.5, {"iqs_predicted": 1.2}),
    "c2": ("dsC", "02", None, "FLAIR", 4.0, {"iqs_predicted": 2.0}),
}


def _row(label: str, work: Path) -> dict:
    ds, sub, ses, mod, iqs, extra = ROWS[label]
    folder = f"sub-{sub}/" + (f"ses-{ses}/" if ses else "") + "anat"
    name = f"sub-{sub}_" + (f"ses-{ses}_" if ses else "") + f"acq-{label}_{mod}.nii.gz"
    rel = f"{folder}/{name}"
    root = work / "data" / ds
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"img")
    row = {
        "image_id": label,
        "dataset_id": ds,
        "subject": sub,
        "session": ses,
        "acq": label,
        "suffix": mod,
        "extension": ".nii.gz",
        "modality": mod,
        "is_derivative": False,
        "root": str(root),
        "path": rel,
        "size_bytes": 3,
        "header_status": "ok",
        "spacing": [1.0, 1.0, 1.2],
        "n_volumes": 1,
        "iqs": iqs,
        "age": 30.0,
        "sex": "F",
        "manufacturer": "X",
        "is_brain_extracted": False,
    }
    if extra.get("masks", True):
        for kind, col in (("anat", "anat_mask_path"), ("anon", "anon_mask_path")):
            mask = work / "masks" / ds / f"{label}_{kind}.nii.gz"
            mask.parent.mkdir(parents=True, exist_ok=True)
            mask.write_bytes(b"m")
            row[col] = str(mask)
    row.update({k: v for k, v in extra.items() if k != "masks"})
    return row


def make_index(work: Path, labels=tuple(ROWS)) -> Path:
    table = rows_to_table([_row(k, work) for k in labels], IMAGE_INDEX)
    path = work / "index" / "images.parquet"
    with store.locked(path):
        store.write(path, table)
    return path


@pytest.fixture
def work(tmp_path) -> Path:
    make_index(tmp_path)
    return tmp_path


def _ids(table) -> set[str]:
    return set(table.column("image_id").to_pylist())


def _build(work: Path, out: str = "m.parquet", **kw) -> B.BuildResult:
    opts = {
        k: kw.pop(k)
        for k in list(kw)
        if k in ("fmt", "val_fraction", "seed", "iqs_file", "allow_empty", "openmind_root")
    }
    index = kw.pop("index", work / "index" / "images.parquet")
    return B.build(index, F.Filters(**kw), work / "manifests" / out, command=[], **opts)


def _cli(args, code=0):
    result = runner.invoke(app, ["build-manifest", *args], env=ENV)
    assert result.exit_code == code, result.output
    return result.output


# ------------------------------------------------------------------ filters

DEFAULT = {"a1", "a2", "a3", "b2", "b3", "c1", "c2"}  # header ok, 3D


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, DEFAULT),
        ({"header_status": None}, DEFAULT | {"b1"}),
        ({"keep_4d": True}, DEFAULT | {"a4"}),
        ({"iqs_max": 2.5}, {"a1", "b2", "b3", "c1"}),
        ({"iqs_max": 2.5, "keep_unrated": True}, {"a1", "a3", "b2", "b3", "c1"}),
        ({"iqs_max": 2.0, "use_predicted_iqs": True}, {"c1", "c2"}),
        ({"modalities": ("T2w", "FLAIR")}, {"a2", "a3", "b2", "c1", "c2"}),
        ({"exclude_modalities": ("T2w", "FA")}, {"a1", "a3", "c2"}),
        ({"datasets": ("dsB", "dsC")}, {"b2", "b3", "c1", "c2"}),
        ({"exclude_datasets": ("dsA",)}, {"b2", "b3", "c1", "c2"}),
        ({"require_masks": True}, {"a1", "a2", "a3", "b3", "c1", "c2"}),
        ({"max_spacing": 1.5}, DEFAULT - {"b2"}),
        ({"max_spacing": 1.0}, set()),
        ({"iqs_max": 2.5, "modalities": ("T2w",), "require_masks": True}, {"c1"}),
    ],
)
def test_each_filter_keeps_the_known_rows(work, filters, expected):
    result = _build(work, allow_empty=True, **filters)
    assert _ids(result.table) == expected
    assert result.steps[-1].after == len(expected)
    back = read_manifest(result.out)
    assert _ids(back) == expected


def test_unrated_images_are_dropped_and_counted_unless_kept(work):
    dropped = _build(work, iqs_max=2.5)
    step = dropped.steps[-1]
    assert step.name == "iqs" and step.detail == {
        "unrated": 1,
        "unrated_dropped": 1,
        "above_threshold": 2,
    }
    side = json.loads(dropped.sidecar.read_text())
    assert side["unrated_dropped"] == 1
    kept = _build(work, "k.parquet", iqs_max=2.5, keep_unrated=True)
    assert "a3" in _ids(kept.table) and kept.steps[-1].detail["unrated_dropped"] == 0


def test_iqs_file_overrides_the_index_scores(work):
    scores = rows_to_table(
        [
            {
                "image_id": "a2",
                "dataset_id": "dsA",
                "modality": "T2w",
                "group_key": "dsA/T2w",
                "n_raters": 2,
                "iqs": 1.2,
                "iqs_image": 1.0,
                "group_n_rated": 1,
            }
        ],
        IQS,
    )
    pq.write_table(scores, work / "iqs.parquet")
    result = _build(work, iqs_max=2.5, iqs_file=work / "iqs.parquet")
    assert _ids(result.table) == {"a2"}  # every image the file does not list is unrated
    side = json.loads(result.sidecar.read_text())
    assert side["inputs"]["iqs"]["sha256"] == B.sha256(work / "iqs.parquet")


# ------------------------------------------------------------------- split


def _many_subjects(work: Path, n: int) -> Path:
    for s in range(n):
        for m in ("T1w", "T2w"):
            ROWS[f"s{s}{m}"] = (f"ds{s % 3}", f"{s:03d}", None, m, 2.0, {})
    labels = [k for k in ROWS if k.startswith("s") and int(k[1:-3]) < n]
    try:
        return make_index(work, labels)
    finally:
        for k in labels:
            del ROWS[k]


def _split_of(table) -> dict[str, set[str]]:
    keys = split.subject_keys(table).to_pylist()
    sides: dict[str, set[str]] = {"train": set(), "val": set()}
    for k, side in zip(keys, table.column("split").to_pylist(), strict=True):
        sides[side].add(k)
    return sides


def test_split_is_subject_level_with_five_val_subjects_and_deterministic(tmp_path):
    index = _many_subjects(tmp_path, 60)
    a = B.build(index, F.Filters(), tmp_path / "a.parquet", val_fraction=0.01, seed=1, command=[])
    sides = _split_of(a.table)
    assert not sides["train"] & sides["val"]  # no subject on both sides
    assert len(sides["val"]) == 5 and a.split.val_subjects == 5  # 0.01 x 60 < 5
    assert a.split.val_images == 10 and a.split.train_images == 110
    again = B.build(
        index, F.Filters(), tmp_path / "b.parquet", val_fraction=0.01, seed=1, command=[]
    )
    assert _split_of(again.table) == sides
    other = B.build(
        index, F.Filters(), tmp_path / "c.parquet", val_fraction=0.01, seed=2, command=[]
    )
    assert _split_of(other.table)["val"] != sides["val"]
    big = B.build(index, F.Filters(), tmp_path / "d.parquet", val_fraction=0.2, seed=1, command=[])
    assert big.split.val_subjects == 12


@pytest.mark.parametrize(
    ("n", "fraction", "val"),
    [
        (1, 0.01, 0),
        (2, 0.01, 1),
        (6, 0.01, 3),
        (10, 0.01, 5),
        (1000, 0.01, 10),
        (1000, 0.0, 0),
        (100, 0.5, 50),
    ],
)
def test_val_subject_count(n, fraction, val):
    assert split.n_val_subjects(n, fraction) == val


# ------------------------------------------------------------------ sidecar


def test_sidecar_records_filters_counts_checksums_and_version(work):
    result = _build(work, iqs_max=2.5, modalities=("T1w", "T2w", "FA"))
    assert result.sidecar == work / "manifests" / "m.json"
    side = json.loads(result.sidecar.read_text())
    index = work / "index" / "images.parquet"
    assert side["inputs"]["index"]["sha256"] == B.sha256(index)
    assert side["inputs"]["iqs"] is None
    assert side["toolkit"]["version"] and side["format"] == "parquet"
    assert side["filters"]["iqs_max"] == 2.5 and side["filters"]["modalities"] == [
        "T1w",
        "T2w",
        "FA",
    ]
    steps = [(s["filter"], s["before"], s["after"]) for s in side["steps"]]
    assert steps == [("header_status", 9, 8), ("3d_only", 8, 7), ("modality", 7, 5), ("iqs", 5, 4)]
    assert side["counts"]["images"] == 4 and side["counts"]["input_images"] == 9
    assert side["counts"]["subjects"] == 4 and side["counts"]["datasets"] == 3
    t2w = side["counts"]["per_modality"]["T2w"]
    assert (t2w["images"], t2w["subjects"], t2w["datasets"]) == (2, 2, 2)
    assert side["paths"]["base"] == "manifest_folder"


def test_paths_resolve_after_moving_the_tree(work, tmp_path_factory):
    result = _build(work, iqs_max=2.5)
    stored = pq.read_table(result.out)
    for col in ("root", "anat_mask_path", "anon_mask_path"):
        assert not any(p and p.startswith("/") for p in stored.column(col).to_pylist())
    moved = tmp_path_factory.mktemp("elsewhere") / "tree"
    shutil.copytree(work, moved)
    shutil.rmtree(work)
    table = read_manifest(moved / "manifests" / "m.parquet")
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert set(rows) == {"a1", "b2", "b3", "c1"}
    for row in rows.values():
        assert row["root"].startswith(str(moved))
        assert os.path.isfile(os.path.join(row["root"], row["path"]))
    # a1, b3 and c1 have both masks (b2 has none): each resolves to its own file
    for label in ("a1", "b3", "c1"):
        for kind, col in (("anat", "anat_mask_path"), ("anon", "anon_mask_path")):
            path = rows[label][col]
            assert path == str(moved / "masks" / ROWS[label][0] / f"{label}_{kind}.nii.gz")
            assert os.path.isfile(path)
    assert rows["b2"]["anat_mask_path"] is None and rows["b2"]["anon_mask_path"] is None
    frame = read_manifest(moved / "manifests" / "m.parquet", as_frame=True)
    assert set(frame["split"]) <= {"train", "val"}


def test_rebase_matches_os_path_for_any_value():
    values = [
        "../d/a.nii.gz",
        "m/x",
        "../../y",
        "..",
        ".",
        "/abs/p",
        None,
        "a/../b",
        "../../../../../q",
        "./a",
        "a//b",
        "/x/./y",
    ] * 10
    values = [v if v is None else f"{v}{i}" for i, v in enumerate(values)]
    for base, to in (("/w/index", None), ("/w/index", "/w/manifests"), ("/w/i", "/o/p/q")):
        expected = [None if v is None else _exact(v, base, to) for v in values]
        assert rebase(pa.array(values, pa.string()), base, to).to_pylist() == expected


# ------------------------------------------------------------------ exports


def test_nnssl_pretrain_data_structure(work):
    result = _build(work, "n/pretrain_data.json", fmt="nnssl", iqs_max=2.5)
    assert result.sidecar.name == "pretrain_data.sidecar.json"
    data = json.loads(result.out.read_text())
    assert set(data) == {"collection_index", "collection_name", "datasets"}
    assert data["collection_name"] == "Dataset001_OpenMind" and data["collection_index"] == 1
    assert set(data["datasets"]) == {"dsA", "dsB", "dsC"}
    ds_b = data["datasets"]["dsB"]
    assert set(ds_b) == {"dataset_index", "name", "dataset_info", "subjects"}
    assert ds_b["dataset_index"] == "dsB" and ds_b["name"] is None
    assert {"modality": "FA", "derived_from": "a4", "image_quality_score": 2.2} in ds_b[
        "dataset_info"
    ]["image_quality_score"]
    subject = ds_b["subjects"]["sub-02"]
    assert set(subject) == {"subject_id", "sessions", "subject_info"}
    assert subject["subject_info"] == {"age": 30.0, "sex": "F"}
    session = subject["sessions"]["ses-02"]
    assert set(session) == {"session_id", "session_info", "images"}
    (image,) = session["images"]
    assert set(image) == {"name", "image_path", "modality", "image_info", "associated_masks"}
    assert image["modality"] == "FA" and os.path.isfile(image["image_path"])
    assert image["image_info"] == {
        "derived_from": "a4",
        "is_brain_extract": False,
        "manufacturer": "X",
    }
    masks = image["associated_masks"]
    assert set(masks) == {"anonymization_mask", "anatomy_mask"}
    assert masks["anatomy_mask"].endswith("b3_anat.nii.gz") and os.path.isfile(
        masks["anonymization_mask"]
    )
    no_session = data["datasets"]["dsA"]["subjects"]["sub-01"]["sessions"]
    assert list(no_session) == ["ses-DEFAULT"]
    assert no_session["ses-DEFAULT"]["images"][0]["name"] == "sub-01_acq-a1_T1w.nii.gz"


def test_openmind_csv_round_trip(work):
    result = _build(work, "o.csv", fmt="openmind-csv", iqs_max=2.5)
    with open(result.out) as fh:
        header = fh.readline().strip().split(",")
    assert header == [*openmind_csv.COLUMNS, "split"]
    first = pq.read_table(work / "index" / "images.parquet")  # to compare with
    assert first.num_rows == 9
    again = _build(work, "o2.parquet", index=result.out)
    a = {r["path"]: r for r in result.table.to_pylist()}
    b = {r["path"]: r for r in again.table.to_pylist()}
    assert a.keys() == b.keys()
    for path, row in a.items():
        other = b[path]
        for col in (
            "dataset_id",
            "subject",
            "session",
            "modality",
            "iqs",
            "root",
            "anat_mask_path",
            "anon_mask_path",
            "derived_from",
            "age",
            "sex",
        ):
            assert other[col] == row[col], (path, col)
        assert os.path.isfile(os.path.join(other["root"], other["path"]))


def test_openmind_csv_input_layout(tmp_path):
    top = tmp_path / "download"
    om = top / "OpenMind"
    rows = [
        ("ds000001/sub-01/ses-01/anat/sub-01_ses-01_T1w.nii.gz", "ds000001_a", "T1w", 1.8, ""),
        ("ds000001/sub-02/anat/sub-02_T2w.nii.gz", "ds000001_b", "T2w", 3.2, ""),
        (
            "ds000002/sub-07/ses-pre/dwi/sub-07_ses-pre_dwi_00000/FA.nii.gz",
            "ds000002_c",
            "FA",
            2.0,
            "ds000002_x",
        ),
        ("ds000002/sub-08/anat/sub-08_FLAIR.nii.gz", "ds000002_d", "FLAIR", "", ""),
    ]
    lines = [",".join(openmind_csv.COLUMNS)]
    for path, uid, mod, iqs, derived in rows:
        (om / path).parent.mkdir(parents=True, exist_ok=True)
        (om / path).write_bytes(b"x")
        mask = path.replace(".nii.gz", "_anat.nii.gz")
        (om / mask).write_bytes(b"m")
        values = {
            "image_path": path,
            "unique_id": uid,
            "modality": mod,
            "image_quality_score": iqs,
            "anat_mask_path": mask,
            "anon_mask_path": "",
            "derived_from": derived,
            "is_brain_extract": "False",
            "age": "25",
            "sex": "male",
        }
        lines.append(",".join(str(values.get(c, "")) for c in openmind_csv.COLUMNS))
    csv = top / "openneuro_metadata.csv"
    csv.write_text("\n".join(lines) + "\n")
    table = openmind_csv.read(csv)  # finds OpenMind/ beside the CSV
    got = {r["image_id"]: r for r in table.to_pylist()}
    assert (
        got["ds000001_a"]["dataset_id"],
        got["ds000001_a"]["subject"],
        got["ds000001_a"]["session"],
    ) == ("ds000001", "01", "01")
    assert got["ds000001_b"]["session"] is None
    assert got["ds000002_c"]["session"] == "pre" and got["ds000002_c"]["iqs"] == 2.0
    assert got["ds000002_d"]["iqs"] is None
    assert got["ds000001_a"]["sex"] == "M"
    for r in got.values():
        assert os.path.isfile(os.path.join(r["root"], r["path"]))
        assert os.path.isfile(r["anat_mask_path"])
    assert openmind_csv.read(csv, om).column("root").to_pylist() == table.column("root").to_pylist()
    out = tmp_path / "m" / "pretrain_data.json"
    result = B.build(csv, F.Filters(iqs_max=2.5), out, fmt="nnssl", command=[])
    assert _ids(result.table) == {"ds000001_a", "ds000002_c"}
    side = json.loads(result.sidecar.read_text())
    assert side["inputs"]["index"]["kind"] == "openmind-csv"
    data = json.loads(out.read_text())
    fa = data["datasets"]["ds000002"]["subjects"]["sub-07"]["sessions"]["ses-pre"]["images"][0]
    assert fa["name"] == "sub-07_ses-pre_dwi_00000"[:-5] + "FA.nii.gz"  # the converter's rule
    assert fa["image_info"]["derived_from"] == "ds000002_x"
    assert data["datasets"]["ds000001"]["subjects"]["sub-01"]["sessions"]["ses-01"]["images"][0][
        "image_path"
    ] == str(om / rows[0][0])


# ------------------------------------------------------------------- CLI


def test_everyday_form_finds_index_and_names_the_output(work, monkeypatch):
    monkeypatch.chdir(work)
    out = _cli(["--iqs-max", "2.5"])
    path = work / "manifests" / "iqs-le-2.5.parquet"
    assert out.strip().splitlines()[-1] == str(path)
    assert path.is_file() and (work / "manifests" / "iqs-le-2.5.json").is_file()
    assert "unrated" in out and "header_status" in out
    assert len(read_manifest(path)) == 4
    out = _cli(["--iqs-max", "2.5", "--modalities", "T1w,T2w,FLAIR"])
    assert out.strip().splitlines()[-1].endswith("manifests/iqs-le-2.5_T1w-T2w-FLAIR.parquet")


def test_renamed_modality_options_still_work_with_a_note(work, monkeypatch):
    monkeypatch.chdir(work)
    help_text = _cli(["--help"])
    assert "--modalities" in help_text and "--exclude-modalities" in help_text
    assert "--modality " not in help_text and "--exclude-modality " not in help_text
    new = _cli(["--modalities", "T2w", "--exclude-modalities", "FLAIR", "--out", "new.parquet"])
    old = _cli(["--modality", "T2w", "--exclude-modality", "FLAIR", "--out", "old.parquet"])
    assert "--modality is deprecated, use --modalities" in old
    assert "--exclude-modality is deprecated, use --exclude-modalities" in old
    assert _ids(read_manifest(work / "old.parquet")) == _ids(read_manifest(work / "new.parquet"))
    assert _ids(read_manifest(work / "new.parquet")) == {"a2", "b2", "c1"}
    assert "deprecated" not in new


def test_iqs_max_before_curate_iqs_names_the_missing_step(tmp_path, monkeypatch):
    rows = [{**_row(k, tmp_path), "iqs": None, "iqs_predicted": None} for k in ROWS]
    path = tmp_path / "index" / "images.parquet"
    with store.locked(path):
        store.write(path, rows_to_table(rows, IMAGE_INDEX))  # crawled, not yet scored
    monkeypatch.chdir(tmp_path)
    out = _cli(["--iqs-max", "2.5"], code=2)
    assert "run `curate iqs` first" in out and "loosen" not in out
    assert "run `curate iqs --model` first" in _cli(
        ["--iqs-max", "2.5", "--use-predicted-iqs"], code=2
    )
    assert "curate iqs" in _cli(["--iqs-max", "2.5", "--keep-unrated"], code=2)
    assert not (tmp_path / "manifests").exists()
    assert "kept 7 images of 9" in _cli([])  # without --iqs-max, no score is needed


def test_val_subjects_sets_the_validation_size(work):
    index = _many_subjects(work, 30)
    result = B.build(index, F.Filters(), work / "v.parquet", val_subjects=2, command=[])
    assert result.split.val_subjects == 2 and result.split.train_subjects == 28
    assert json.loads(result.sidecar.read_text())["split"]["val_subjects_asked"] == 2
    assert B.default_name(F.Filters(), val_subjects=2) == "val-2-subjects.parquet"


def test_out_naming_a_folder_is_refused(work, monkeypatch):
    monkeypatch.chdir(work)
    out = _cli(["--out", "manifests/"], code=2)
    assert "ends in '/'" in out and not (work / "manifests").exists()


def test_default_names():
    name = B.default_name
    assert name(F.Filters(iqs_max=2.5)) == "iqs-le-2.5.parquet"
    assert name(F.Filters(iqs_max=3, modalities=("T1w", "T2w", "FLAIR"))) == (
        "iqs-le-3_T1w-T2w-FLAIR.parquet"
    )
    assert name(F.Filters(), "nnssl") == "all/pretrain_data.json"
    assert name(
        F.Filters(iqs_max=2, keep_unrated=True, exclude_modalities=("DWI",), require_masks=True),
        "openmind-csv",
        seed=3,
    ) == ("iqs-le-2-or-unrated_no-DWI_masks_seed-3.csv")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--iqs-max", "7"], "outside the IQS scale"),
        (["--iqs-max", "0.5"], "outside the IQS scale"),
        (["--iqs-max", "abc"], "abc"),
        (["--modalities", "T1w,T3w"], "unknown modality 'T3w'"),
        (["--exclude-modalities", "bold"], "unknown modality 'bold'"),
        (["--iqs-max", "1.0"], "no image passes the filters"),
        (["--format", "nifti"], "--format"),
    ],
)
def test_errors_exit_2_with_a_message(work, monkeypatch, args, message):
    monkeypatch.chdir(work)
    out = _cli(args, code=2)
    assert message in out
    assert not (work / "manifests" / "iqs-le-1.parquet").exists()


def test_allow_empty_writes_an_empty_manifest(work, monkeypatch):
    monkeypatch.chdir(work)
    out = _cli(["--iqs-max", "1.0", "--allow-empty"])
    path = Path(out.strip().splitlines()[-1])
    assert path.name == "iqs-le-1.parquet" and len(read_manifest(path)) == 0
    assert json.loads(sidecar_path(path).read_text())["counts"]["images"] == 0


def test_missing_index_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "curate crawl" in _cli(["--iqs-max", "2.5"], code=2)


def test_output_under_a_file_is_a_clear_error(work, monkeypatch):
    monkeypatch.chdir(work)
    (work / "blocker").write_text("")
    out = _cli(["--iqs-max", "2.5", "--out", "blocker/m.parquet"], code=2)
    assert "is a file, not a folder" in out


def test_every_option_reaches_the_filters(work, monkeypatch):
    monkeypatch.chdir(work)
    args = [
        "--iqs-max",
        "2",
        "--use-predicted-iqs",
        "--header-status",
        "any",
        "--keep-4d",
        "--datasets",
        "dsB,dsC",
        "--exclude-datasets",
        "dsB",
        "--require-masks",
        "--max-spacing",
        "2",
        "--val-fraction",
        "0.5",
        "--seed",
        "3",
        "--format",
        "openmind-csv",
    ]
    path = Path(_cli(args).strip().splitlines()[-1])
    assert path == work / "manifests" / (
        "iqspred-le-2_ds-dsB-dsC_no-ds-dsB_sp-le-2_masks_hdr-any_with-4d_val-0.5_seed-3.csv"
    )
    side = json.loads(sidecar_path(path).read_text())
    assert [s["filter"] for s in side["steps"]] == [
        "datasets",
        "exclude_datasets",
        "max_spacing",
        "require_masks",
        "iqs",
    ]
    assert side["split"]["seed"] == 3 and side["split"]["val_subjects"] == 1
    back = openmind_csv.read(path, work / "data")
    assert set(back.column("image_id").to_pylist()) == {"dsC_c1", "dsC_c2"}
    assert back.column("iqs").to_pylist() == [2.5, 4.0]  # the index's iqs, not the predicted


def test_openmind_csv_paths_with_windows_separators(tmp_path):
    csv = tmp_path / "openneuro_metadata.csv"
    lines = [",".join(openmind_csv.COLUMNS)]
    for path, uid in (
        ("ds000001\\sub-01\\ses-1\\anat\\sub-01_ses-1_T1w.nii.gz", "ds000001_a"),
        ("ds000001/sub-02/anat/sub-02_FLAIR.nii", "ds000001_b"),
    ):
        values = {"image_path": path, "unique_id": uid, "modality": "T1w"}
        lines.append(",".join(values.get(c, "") for c in openmind_csv.COLUMNS))
    csv.write_text("\n".join(lines) + "\n")
    rows = {r["image_id"]: r for r in openmind_csv.read(csv).to_pylist()}
    a, b = rows["ds000001_a"], rows["ds000001_b"]
    assert (a["dataset_id"], a["subject"], a["session"]) == ("ds000001", "01", "1")
    assert a["path"] == "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    assert (a["suffix"], a["extension"], b["suffix"], b["extension"]) == (
        "T1w",
        ".nii.gz",
        "FLAIR",
        ".nii",
    )
    assert a["root"] == str(tmp_path / "ds000001") and b["session"] is None
    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0] + "\n" + "ds000001/file.nii.gz" + "," * (len(lines[0].split(",")) - 1))
    with pytest.raises(InputError, match=r"bad.csv: row 0: image_path 'ds000001/file.nii.gz'"):
        openmind_csv.read(bad)
