"""The image-index store: one writer, portable paths, stable ids, the re-crawl rule.

The pipeline tests run the real stages (crawl, dwi, masks, metrics) on two
datasets of the generated corpus, from a folder other than the tree's, and
then touch, remove, move and re-crawl files with known consequences.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal
from typer.testing import CliRunner

from openmind_curate import index as store
from openmind_curate.bids.crawl import CrawlOptions, crawl, find_datasets, state_path
from openmind_curate.cli import app
from openmind_curate.ids import dataset_ids, image_id
from openmind_curate.jobs import JobOptions
from openmind_curate.schema import IMAGE_INDEX, rows_to_table, stage_columns

runner = CliRunner()
JOBS = JobOptions(workers=2, progress=False)
FAST_DWI = ["--denoise", "none", "--no-gibbs", "--no-motion", "--no-bias"]
STAGE = ["anat_mask_path", "anon_mask_path", "is_brain_extracted"]
IQS_COLUMNS = ["iqs", "iqs_image", "iqs_predicted"]


def _cli(*args: str) -> str:
    result = runner.invoke(app, [*args, "-q"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def pipeline(corpus, tmp_path_factory):
    """ds900001 (anat only) and ds900002 (anat + 2 DWI) through crawl, dwi and
    masks, every command run from a folder outside the tree."""
    src, _ = corpus
    tree = tmp_path_factory.mktemp("pipeline") / "tree"
    for ds in ("ds900001", "ds900002"):
        shutil.copytree(src / ds, tree / "corpus" / ds)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    cwd = os.getcwd()
    os.chdir(elsewhere)
    try:
        index = str(tree / "out" / "index" / "images.parquet")
        _cli("crawl", str(tree / "corpus"), "--out", index)
        _cli("dwi", "--index", index, "--out", str(tree / "out" / "dwi"), *FAST_DWI)
        _cli("masks", "--index", index, "--out", str(tree / "out" / "masks"))
    finally:
        os.chdir(cwd)
    return tree


def _copy(tree: Path, dest: Path) -> Path:
    """Copy the tree elsewhere (times kept, as `mv` or `cp -a` would)."""
    shutil.copytree(tree, dest)
    return dest


def _index(tree: Path) -> Path:
    return tree / "out" / "index" / "images.parquet"


def _recrawl(tree: Path):
    return crawl([tree / "corpus"], _index(tree), CrawlOptions(), JOBS)


def _frame(tree: Path):
    return store.read_frame(_index(tree)).set_index("image_id").sort_index()


def test_stages_write_relative_paths_and_recomputable_ids(pipeline):
    raw = pq.read_table(_index(pipeline)).to_pandas()
    assert len(raw) == 12 + 6  # 12 images, FA/MD/T2w for each of the 2 DWI series
    for col in store.PATH_COLUMNS:
        values = raw[col].dropna()
        assert len(values) == len(raw) and not values.str.startswith("/").any(), col
    for row in raw.itertuples():
        assert row.image_id == image_id(row.dataset_id, row.path), row.path
    maps = raw[raw["derived_from"].notna()]
    assert set(maps["dataset_id"]) == {"ds900002"} and set(maps["root"]) == {"../dwi/ds900002"}
    meta = json.loads(pq.read_schema(_index(pipeline)).metadata[store.META_KEY])
    assert meta["version"] == store.INDEX_VERSION
    state = json.loads(state_path(_index(pipeline)).read_text())
    assert all(not key.startswith("/") for key in state["datasets"])
    frame = store.read_frame(_index(pipeline))
    for path in frame["anat_mask_path"]:
        assert os.path.isabs(path) and Path(path).is_file(), path


def test_recrawl_of_an_unchanged_tree_loses_nothing(pipeline, tmp_path):
    tree = _copy(pipeline, tmp_path / "tree")
    before = _frame(tree)
    result = _recrawl(tree)
    assert (result.n_unchanged, result.n_headers_read) == (2, 0)
    after = _frame(tree)
    assert after.equals(before)
    assert after["derived_from"].notna().sum() == 6
    assert after[STAGE[:2]].notna().all().all()


def test_touching_one_image_drops_only_its_own_results(pipeline, tmp_path):
    tree = _copy(pipeline, tmp_path / "tree")
    before = _frame(tree)
    anat = tree / "corpus/ds900001/sub-01/anat/sub-01_T1w.nii.gz"
    dwi = tree / "corpus/ds900002/sub-01/ses-01/dwi/sub-01_ses-01_dwi.nii.gz"
    for path in (anat, dwi):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    result = _recrawl(tree)
    after = _frame(tree)
    touched = {
        image_id("ds900001", "sub-01/anat/sub-01_T1w.nii.gz"),
        image_id("ds900002", "sub-01/ses-01/dwi/sub-01_ses-01_dwi.nii.gz"),
    }
    # The touched images lose their masks; the DWI loses its 3 maps (and their masks).
    assert after.loc[sorted(touched), STAGE[:2]].isna().all().all()
    gone = set(before.index[before["derived_from"].isin(touched)])
    assert len(gone) == 3 and not gone & set(after.index)
    # Everything else is as it was, the other DWI's maps included.
    rest = before.drop(index=sorted(touched | gone))
    assert_frame_equal(after.drop(index=sorted(touched)), rest, check_dtype=False)
    m = result.merge
    assert (m.cleared, m.removed, m.derived_dropped, m.derived_kept) == (2, 0, 3, 3)
    assert m.kept == 10


def test_removing_an_image_drops_it_and_what_was_derived_from_it(pipeline, tmp_path):
    tree = _copy(pipeline, tmp_path / "tree")
    (tree / "corpus/ds900002/sub-02/ses-01/dwi/sub-02_ses-01_dwi.nii.gz").unlink()
    result = _recrawl(tree)
    after = _frame(tree)
    assert len(after) == 18 - 1 - 3
    assert (result.merge.removed, result.merge.derived_dropped) == (1, 3)


def test_a_moved_tree_stays_valid_and_stages_run_from_anywhere(pipeline, tmp_path, monkeypatch):
    tree = _copy(pipeline, tmp_path / "mounted" / "elsewhere" / "tree")
    index = _index(tree)
    frame = store.read_frame(index)
    for col in store.PATH_COLUMNS:
        for path in frame[col]:
            assert path.startswith(str(tree)) and Path(path).exists(), path
    monkeypatch.chdir(tmp_path)
    out = _cli("crawl", str(tree / "corpus"), "--out", str(index))
    assert "2 unchanged since the last crawl" in out and "0 headers read" in out
    masks = _cli("masks", "--index", str(index), "--out", str(tree / "out" / "masks"))
    assert "18 skipped" in masks
    metrics = tmp_path / "metrics.parquet"
    _cli("metrics", "--index", str(index), "--out", str(metrics))
    table = pq.read_table(metrics).to_pandas()
    assert len(table) == 18 and not table["corrupted"].any()
    assert (table["mask_source"] == "index").all()


def test_dwi_rerun_replaces_its_rows_and_keeps_their_masks(pipeline, tmp_path, monkeypatch):
    tree = _copy(pipeline, tmp_path / "tree")
    before = _frame(tree)
    monkeypatch.chdir(tree)  # a relative --out, from yet another folder
    out = _cli("dwi", "--index", str(_index(tree)), "--out", "out/dwi", *FAST_DWI)
    assert "2 skipped" in out and "(0 new)" in out
    after = _frame(tree)
    assert len(after) == 18 and after.equals(before)


# ------------------------------------------------------------- the merge rule


def _rows(specs):
    """Index rows from (id, size, mtime, derived_from, mask)."""
    return rows_to_table(
        [
            dict(
                image_id=i,
                dataset_id="ds",
                suffix="T1w",
                extension=".nii.gz",
                modality="T1w",
                is_derivative=d is not None,
                root="/data/ds",
                path=f"{i}.nii.gz",
                size_bytes=s,
                mtime_ns=t,
                header_status="ok",
                derived_from=d,
                anat_mask_path=m,
                anon_mask_path=m,
                is_brain_extracted=True if m else None,
            )
            for i, s, t, d, m in specs
        ],
        IMAGE_INDEX,
    )


def test_merge_crawl_follows_one_rule_for_every_stage_column():
    assert set(stage_columns(IMAGE_INDEX)) == {"derived_from", *STAGE, *IQS_COLUMNS}
    old = _rows(
        [
            ("a", 10, 1, None, "/m/a"),  # unchanged
            ("b", 10, 1, None, "/m/b"),  # changed mtime
            ("c", 10, 1, None, "/m/c"),  # removed
            ("fa_a", 5, 1, "a", "/m/fa_a"),
            ("fa_b", 5, 1, "b", None),
            ("mask_of_fa_a", 5, 1, "fa_a", None),  # a chain: kept with its source
            ("fa_c", 5, 1, "c", None),
        ]
    )
    new = _rows([("a", 10, 1, None, None), ("b", 10, 2, None, None), ("d", 3, 1, None, None)])
    merged, report = store.merge_crawl(old, new)
    got = merged.to_pandas().set_index("image_id")
    assert sorted(got.index) == ["a", "b", "d", "fa_a", "mask_of_fa_a"]
    assert got.loc["a", "anat_mask_path"] == "/m/a" and got.loc["a", "is_brain_extracted"]
    assert got.loc["b", STAGE].isna().all() and got.loc["d", STAGE].isna().all()
    assert got.loc["b", "mtime_ns"] == 2 and got.loc["fa_a", "anat_mask_path"] == "/m/fa_a"
    assert (report.kept, report.cleared, report.removed) == (1, 1, 1)
    assert (report.derived_kept, report.derived_dropped) == (2, 2)


def test_read_with_stored_paths_is_the_file_as_stored(tmp_path):
    from openmind_curate.paths import rebase_table

    path = tmp_path / "index" / "images.parquet"
    rows = _rows([("a", 1, 1, None, str(tmp_path / "masks" / "a.nii.gz")), ("b", 1, 1, None, None)])
    rows = rows.set_column(
        rows.column_names.index("root"), "root", pa.array([str(tmp_path / "data" / "ds")] * 2)
    )
    with store.locked(path):
        store.write(path, rows)
    stored = store.read(path, paths="stored")
    assert stored.column("root").to_pylist() == ["../data/ds", "../data/ds"]
    assert stored.column("anat_mask_path").to_pylist() == ["../masks/a.nii.gz", None]
    for col in store.PATH_COLUMNS:  # exactly what the file holds
        assert stored.column(col).to_pylist() == pq.read_table(path).column(col).to_pylist()
    assert rebase_table(stored, store.base_dir(path)).equals(store.read(path))
    assert store.read(path).column("root")[0].as_py() == str(tmp_path / "data" / "ds")


def test_path_columns_convert_like_os_path(tmp_path):
    from openmind_curate.paths import absolute_path, stored_path, to_absolute

    values = ["../d/a", "m/x", "/abs/./p", None, "..", "a//b", "../../../../q", "./a", "x/.."]
    base = "/w/index"
    expected = [absolute_path(v, base) for v in values]
    assert to_absolute(pa.array(values, pa.string()), base).to_pylist() == expected
    assert expected[:3] == ["/w/d/a", "/w/index/m/x", "/abs/p"]
    assert stored_path("/w/data/ds", base) == "../data/ds"
    table = pa.table({"root": pa.array(["/w/data/ds", "/w/index/ds"]), "path": ["x", "y"]})
    assert store.stored_paths(table, tmp_path / "images.parquet", ["root"]).column(
        "root"
    ).to_pylist() == [os.path.relpath(p, tmp_path) for p in ("/w/data/ds", "/w/index/ds")]


# ------------------------------------------------------------ concurrent writes


def _add_maps(args):
    path, n = args
    for k in range(n):
        store.add_rows(path, _rows([(f"map{k}", 1, 1, f"img{k}", None)]))


def _set_masks(args):
    path, n = args
    for k in range(n):
        store.set_columns(
            path, pd.DataFrame({"image_id": [f"img{k}"], "anat_mask_path": [f"/m/{k}"]})
        )


def test_two_stages_writing_at_once_lose_neither_update(tmp_path):
    path = tmp_path / "index" / "images.parquet"
    n = 25
    with store.locked(path):
        store.write(path, _rows([(f"img{k}", 1, 1, None, None) for k in range(n)]))
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_dispatch, [(str(path), n, "add"), (str(path), n, "set")]))
    got = store.read_frame(path).set_index("image_id")
    assert {f"map{k}" for k in range(n)} <= set(got.index)
    assert all(got.loc[f"img{k}", "anat_mask_path"] == f"/m/{k}" for k in range(n))


def _dispatch(args):
    path, n, what = args
    (_add_maps if what == "add" else _set_masks)((path, n))


def test_masks_of_a_file_changed_meanwhile_are_not_recorded(tmp_path):
    path = tmp_path / "images.parquet"
    with store.locked(path):
        store.write(path, _rows([("a", 10, 1, None, None), ("b", 10, 1, None, None)]))
    values = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "anat_mask_path": ["/m/a", "/m/b"],
            "size_bytes": [10, 10],
            "mtime_ns": [1, 0],
        }
    )
    result = store.set_columns(path, values)
    assert (result.replaced, result.skipped) == (1, 1)
    with pytest.raises(store.IndexStoreError, match="not stage columns of the index: modality"):
        store.set_columns(path, pd.DataFrame({"image_id": ["a"], "modality": ["T2w"]}))
    got = store.read_frame(path).set_index("image_id")["anat_mask_path"]
    assert got["a"] == "/m/a" and pd.isna(got["b"])


# --------------------------------------------------------- versions, bad files


def test_newer_index_is_refused_and_version_1_is_upgraded(tmp_path):
    path = tmp_path / "images.parquet"
    with store.locked(path):
        store.write(path, _rows([("a", 10, 1, None, None)]))
    table = pq.read_table(path)
    newer = {store.META_KEY: json.dumps({"version": store.INDEX_VERSION + 1})}
    pq.write_table(table.replace_schema_metadata(newer), path)
    with pytest.raises(store.IndexStoreError, match="newer openmind-curate"):
        store.read(path)
    # Version 1: no metadata, absolute paths, map ids hashed from a derivatives name.
    v1 = _rows([("x", 10, 1, None, "/abs/x_mask.nii.gz"), ("y", 5, 1, "x", None)])
    v1 = v1.set_column(
        v1.column_names.index("root"), "root", pa.array(["/data/ds", "/data/deriv/ds"])
    )
    pq.write_table(v1.replace_schema_metadata(None), path)
    got = store.read_frame(path)
    assert list(got["image_id"]) == [image_id("ds", "x.nii.gz"), image_id("ds", "y.nii.gz")]
    assert got.loc[0, "anat_mask_path"] == "/abs/x_mask.nii.gz"
    with store.locked(path):
        store.write(path, store.read(path))
    raw = pq.read_table(path)
    assert json.loads(raw.schema.metadata[store.META_KEY])["version"] == store.INDEX_VERSION
    assert not raw.column("root")[0].as_py().startswith("/")
    # the stored-paths read of a version-1 index gives them relative to its folder too
    pq.write_table(v1.replace_schema_metadata(None), path)
    stored = store.read(path, paths="stored").column("root").to_pylist()
    assert stored == [os.path.relpath(p, tmp_path) for p in ("/data/ds", "/data/deriv/ds")]


def test_bad_index_files_get_a_clear_message(tmp_path):
    text = tmp_path / "notparquet.parquet"
    text.write_text("hello")
    other = tmp_path / "metrics.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "snr": [1.0]}), other)
    cases = {text: "not a parquet file", other: "not an image index", tmp_path: "a folder"}
    for path, message in cases.items():
        with pytest.raises(store.IndexStoreError, match=message):
            store.read(path)
        for command in ("masks", "metrics", "dwi"):
            result = runner.invoke(app, [command, "--index", str(path), "-q"])
            assert result.exit_code == 2 and message in result.output, (command, result.output)
            assert "Traceback" not in result.output


# -------------------------------------------------------------- dataset ids


def test_duplicate_dataset_names_get_order_free_suffixes(tmp_path):
    for folder in ("a/ds1", "b/ds1", "c/siteA/ds2", "c/siteB/ds2", "c/ds3"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "dataset_description.json").write_text("{}")

    def ids(*roots):
        return {
            Path(r.root).relative_to(tmp_path).as_posix(): r.dataset_id
            for r in find_datasets([tmp_path / x for x in roots], False)
        }

    expected = {
        "a/ds1": "ds1~a",
        "b/ds1": "ds1~b",
        "c/siteA/ds2": "ds2~siteA",
        "c/siteB/ds2": "ds2~siteB",
        "c/ds3": "ds3",
    }
    assert ids("a", "b", "c") == expected
    assert ids("c", "b", "a") == expected
    assert ids("b/ds1", "a/ds1") == {"a/ds1": "ds1~a", "b/ds1": "ds1~b"}
    assert dataset_ids([("/x/p/ds", "/x/p"), ("/y/p/ds", "/y/p")]) == ["ds~p", "ds~p~2"]


def test_add_rows_whose_sources_are_all_gone_adds_nothing(tmp_path):
    path = tmp_path / "images.parquet"
    with store.locked(path):
        store.write(path, _rows([("a", 10, 1, None, None)]))
    result = store.add_rows(path, _rows([("m1", 1, 1, "gone", None), ("m2", 1, 1, "gone", None)]))
    assert (result.added, result.skipped) == (0, 2)
    assert list(store.read_frame(path)["image_id"]) == ["a"]


def test_a_dataset_renamed_by_a_new_duplicate_gets_its_new_id_on_every_row(corpus, tmp_path):
    src, _ = corpus
    for site in ("siteA", "siteB"):
        shutil.copytree(src / "ds900001", tmp_path / "data" / site / "ds1")
    out = tmp_path / "index" / "images.parquet"
    first = crawl([tmp_path / "data" / "siteA"], out, CrawlOptions(), JOBS)
    assert set(first.index.column("dataset_id").to_pylist()) == {"ds1"}
    both = crawl(
        [tmp_path / "data" / "siteA", tmp_path / "data" / "siteB"], out, CrawlOptions(), JOBS
    )
    frame = store.read_frame(out)
    assert set(frame["dataset_id"]) == {"ds1~siteA", "ds1~siteB"}
    for row in frame.itertuples():
        assert row.image_id == image_id(row.dataset_id, row.path)
    assert both.n_headers_read == first.n_images  # siteA's headers reused, siteB's read


def test_index_from_before_a_stage_reads_with_its_columns_empty(tmp_path):
    """An index written before the IQS stage existed has no IQS columns."""
    path = tmp_path / "images.parquet"
    with store.locked(path):
        store.write(path, _rows([("a", 10, 1, None, None)]))
    old = pq.read_table(path)
    pq.write_table(old.drop_columns(IQS_COLUMNS), path)
    table = store.read(path)
    assert table.schema.names == IMAGE_INDEX.names
    assert all(table.column(c).null_count == 1 for c in IQS_COLUMNS)
