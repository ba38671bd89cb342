"""The rater app through Streamlit's AppTest, and its logic (rating_flow) without the UI.

One small site per module: an index of three units (two T1w images and a
DWI unit of FA, MD and T2w maps) written as NIfTI files, a SQLite store with
raters alice (three items), bob (one item, to check isolation) and an admin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from openmind_curate import index as index_store
from openmind_curate.quality import rating_flow as flow
from openmind_curate.quality import ratings as store
from openmind_curate.quality.plan import DWI_GROUP
from openmind_curate.schema import IMAGE_INDEX

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "apps" / "rater.py")
HOSTILE = "<script>alert(1)</script>'; DROP TABLE ratings;-- ../../etc/passwd"


def _row(
    root: Path,
    rel: str,
    image_id: str,
    modality: str,
    derived_from: str | None = None,
    dataset: str = "ds-secret-name",
) -> dict:
    row = {f.name: None for f in IMAGE_INDEX}
    size = (root / rel).stat().st_size
    row.update(
        image_id=image_id,
        dataset_id=dataset,
        suffix=modality,
        extension=".nii.gz",
        modality=modality,
        is_derivative=derived_from is not None,
        root=str(root),
        path=rel,
        size_bytes=size,
        header_status="ok",
        derived_from=derived_from,
    )
    return row


def _volume(shape=(20, 24, 16), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100 + 50).astype(np.float32)


def build_site(folder: Path) -> dict:
    """Files, index, store, raters and assignments; returns paths and tokens."""
    root = folder / "ds"
    files = {
        "img-a": ("sub-01/anat/sub-01_T1w.nii.gz", "T1w", None),
        "img-b": ("sub-02/anat/sub-02_T1w.nii.gz", "T1w", None),
        "dwi-1": ("sub-01/dwi/sub-01_dwi.nii.gz", "DWI", None),
        "map-fa": ("derivatives/sub-01_FA.nii.gz", "FA", "dwi-1"),
        "map-md": ("derivatives/sub-01_MD.nii.gz", "MD", "dwi-1"),
        "map-t2": ("derivatives/sub-01_T2w.nii.gz", "T2w", "dwi-1"),
    }
    rows = []
    for n, (image_id, (rel, modality, source)) in enumerate(files.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = _volume(seed=n)
        if modality == "DWI":
            data = np.stack([data, data], axis=-1)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), root / rel)
        rows.append(_row(root, rel, image_id, modality, source))
    index_path = folder / "images.parquet"
    table = pa.Table.from_pylist(rows, schema=IMAGE_INDEX)
    index_store.update(index_path, lambda _current: table)
    db = folder / "ratings.sqlite"
    engine = store.connect(db)
    tokens = {name: store.add_rater(engine, name) for name in ("alice", "bob")}
    tokens["boss"] = store.add_rater(engine, "boss", admin=True)
    plan = [
        ("alice", "img-a", "T1w"),
        ("alice", "dwi-1", DWI_GROUP),
        ("alice", "img-b", "T1w"),
        ("bob", "img-a", "T1w"),
    ]
    store.add_assignments(
        engine,
        pd.DataFrame(
            [
                dict(
                    rater_id=r,
                    image_id=i,
                    kind="regular",
                    position=p,
                    dataset_id="ds-secret-name",
                    group_name=g,
                )
                for p, (r, i, g) in enumerate(plan)
            ]
        ),
        plan="test",
    )
    engine.dispose()
    return {"index": index_path, "db": db, "tokens": tokens}


@pytest.fixture(scope="module")
def site_template(tmp_path_factory) -> dict:
    return build_site(tmp_path_factory.mktemp("rater-site"))


@pytest.fixture
def site(site_template, tmp_path, monkeypatch) -> dict:
    """A fresh copy of the store for each test (the index and files are shared)."""
    db = tmp_path / "ratings.sqlite"
    db.write_bytes(Path(site_template["db"]).read_bytes())
    monkeypatch.setenv("OPENMIND_RATER_INDEX", str(site_template["index"]))
    monkeypatch.setenv("OPENMIND_RATER_DB", str(db))
    monkeypatch.delenv("OPENMIND_RATER_SHOW_DATASETS", raising=False)
    return {**site_template, "db": db, "engine": store.connect(db)}


# --- the app, through AppTest -------------------------------------------------------------


@pytest.fixture(autouse=True)
def _keep_main_module():
    """AppTest leaves the app script installed as ``__main__``; a later test that
    spawns processes would then re-run the app in each child. Put it back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


def _app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=60).run()


def _sign_in(at, token: str):
    at.text_input(key="token_input").input(token)
    at.button[0].click()  # the sign-in form's only button
    return at.run()


def _texts(at) -> str:
    """Every piece of text the page shows (markdown, text, captions, subheaders, alerts)."""
    parts = []
    for kind in (
        "markdown",
        "text",
        "caption",
        "subheader",
        "title",
        "header",
        "error",
        "info",
        "success",
        "warning",
    ):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def _sid(at) -> str:
    return at.session_state["shown"]["sid"]


def _rate(at, noisiness=2, blurriness=3, artifact=4, comment=None, corrupted=False):
    sid = _sid(at)
    at.radio(key=f"{sid}-noisiness").set_value(noisiness)
    at.radio(key=f"{sid}-blurriness").set_value(blurriness)
    artifact_keys = [r.key for r in at.radio if r.key == f"{sid}-artifact_level"]
    if artifact_keys:
        at.radio(key=f"{sid}-artifact_level").set_value(artifact)
    if corrupted:
        at.checkbox(key=f"{sid}-corrupted").check()
    if comment is not None:
        at.text_area(key=f"{sid}-comment").input(comment)
    at.button(key=f"{sid}-save").click()
    return at.run()


def test_wrong_token_shows_nothing_but_sign_in(site):
    at = _app()
    assert not at.exception
    assert len(at.image) == 0 and at.text_input(key="token_input")
    at = _sign_in(at, "0123456789abcdef.forged-secret")
    assert "Sign-in refused" in at.error[0].value
    assert len(at.image) == 0 and len(at.radio) == 0 and "rater" not in at.session_state
    assert "Item" not in _texts(at)


def test_revoked_token_is_refused(site):
    store.revoke_rater(site["engine"], "bob")
    at = _sign_in(_app(), site["tokens"]["bob"])
    assert "revoked" in at.error[0].value
    assert len(at.image) == 0 and "rater" not in at.session_state


def test_rate_save_next_back_and_resume(site):
    engine = site["engine"]
    at = _sign_in(_app(), site["tokens"]["alice"])
    assert not at.exception, at.exception
    page = _texts(at)
    assert "Item 1 of 3" in page and "ds-secret-name" not in page  # datasets hidden
    assert "sub-01" not in page and "/" not in at.subheader[0].value  # no path shown
    assert len(at.image) >= 1 and "0 of 3 rated" in at.get("progress")[0].proto.text
    first_sid = _sid(at)

    # moving a slice slider redraws without a new showing (same submission id)
    at.slider(key=f"{first_sid}-slice-Axial").set_value(3).run()
    assert _sid(at) == first_sid

    at = _rate(at, 2, 3, 4, comment="fine")
    assert not at.exception, at.exception
    mine = store.read_ratings(engine, rater_id="alice")
    assert len(mine) == 1 and mine.iloc[0]["submission_id"] == first_sid
    row = mine.iloc[0]
    assert (row["image_id"], row["noisiness"], row["blurriness"], row["artifact_level"]) == (
        "img-a",
        2,
        3,
        4,
    )
    assert row["seconds_spent"] > 0 and len(row["image_checksum"]) == 64
    settings = json.loads(row["window_settings"])
    assert settings["preset"] == "Auto (1-99%)" and settings["slices"][2] == 3
    assert set(settings["maps"]) == {"T1w"}
    assert "Item 2 of 3" in _texts(at) and _sid(at) != first_sid

    # item 2 is the DWI unit: three maps, no artifact axis, saved as null
    labels = [e.proto.imgs[0].caption.split(" · ")[0] for e in at.image]
    assert labels == ["FA"] * 3 + ["MD"] * 3 + ["T2w"] * 3
    assert all(e.proto.imgs[0].url.endswith(".png") for e in at.image)  # lossless
    keys = [r.key for r in at.radio]
    assert f"{_sid(at)}-artifact_level" not in keys and f"{_sid(at)}-noisiness" in keys
    at = _rate(at, 1, 1)
    dwi = store.read_ratings(engine, rater_id="alice").iloc[-1]
    assert dwi["image_id"] == "dwi-1" and pd.isna(dwi["artifact_level"])
    assert set(json.loads(dwi["window_settings"])["maps"]) == {"FA", "MD", "T2w"}

    # back: the DWI unit again, pre-filled; saving makes version 2
    at.button[0].click().run()  # Back
    assert "Correcting your rating" in _texts(at)
    sid = _sid(at)
    assert at.radio(key=f"{sid}-noisiness").value == 1
    at = _rate(at, 3, 1)
    versions = store.read_ratings(engine, rater_id="alice").query("image_id == 'dwi-1'")
    assert sorted(versions["version"]) == [1, 2] and versions.iloc[-1]["noisiness"] == 3
    assert "Item 3 of 3" in _texts(at)

    # a restarted app (new session) resumes at the first unrated item
    again = _sign_in(_app(), site["tokens"]["alice"])
    assert "Item 3 of 3" in _texts(again) and "2 of 3 rated" in again.get("progress")[0].proto.text


def test_isolation_and_dataset_names(site, monkeypatch):
    engine = site["engine"]
    flow.submit(
        engine,
        flow.make_rating(
            flow.current_item(engine, "alice"),
            dict(noisiness=5, blurriness=5, artifact_level=5, comment="alice was here"),
            rater_id="alice",
            submission_id="s-alice",
            image_checksum=None,
            seconds_spent=1.0,
            window_settings=None,
        ),
    )
    at = _sign_in(_app(), site["tokens"]["bob"])
    page = _texts(at)
    assert "Item 1 of 1" in page and "0 of 1 rated" in at.get("progress")[0].proto.text
    assert "alice was here" not in page
    assert at.button[0].label == "Back" and at.button[0].disabled  # bob has rated nothing
    monkeypatch.setenv("OPENMIND_RATER_SHOW_DATASETS", "1")
    shown = _sign_in(_app(), site["tokens"]["bob"])
    assert "ds-secret-name" in _texts(shown)


def test_hostile_comment_is_stored_verbatim_and_shown_as_text(site):
    at = _sign_in(_app(), site["tokens"]["alice"])
    at = _rate(at, comment=HOSTILE)
    stored = store.read_ratings(site["engine"], rater_id="alice")
    assert stored.iloc[0]["comment"] == HOSTILE
    at.button[0].click().run()  # back to it: the comment shows as plain text
    assert any(t.value == HOSTILE for t in at.text)
    assert at.text_area(key=f"{_sid(at)}-comment").value == HOSTILE
    assert not any("<script>" in str(m.value) for m in at.markdown)
    assert store.read_ratings(site["engine"]).shape[0] == 1  # the table is still there


def test_double_submit_stores_one_rating(site):
    engine = site["engine"]
    at = _sign_in(_app(), site["tokens"]["alice"])
    sid = _sid(at)
    shown = dict(at.session_state["shown"])
    at = _rate(at)
    # the same showing submitted again (a second click on the same form)
    at.session_state["shown"] = shown
    at.run()
    assert _sid(at) != sid  # the page moved on: the old form is gone
    item = flow.previous_item(engine, "alice")
    again = flow.make_rating(
        item,
        dict(noisiness=2, blurriness=3, artifact_level=4),
        rater_id="alice",
        submission_id=sid,
        image_checksum=None,
        seconds_spent=1.0,
        window_settings=None,
    )
    assert flow.submit(engine, again).duplicate
    assert len(store.read_ratings(engine, rater_id="alice")) == 1


def test_save_error_is_shown_and_nothing_saved(site):
    at = _sign_in(_app(), site["tokens"]["alice"])
    sid = _sid(at)
    at.radio(key=f"{sid}-noisiness").set_value(2)
    at.button(key=f"{sid}-save").click().run()  # blurriness and artifact missing
    assert "choose a value" in at.error[0].value
    assert _sid(at) == sid and store.read_ratings(site["engine"]).empty
    store.revoke_rater(site["engine"], "alice")  # revoked mid-session
    at = _rate(at)
    assert store.read_ratings(site["engine"]).empty
    errors = [e.value for e in at.error]
    assert any("was revoked" in e for e in errors)  # the save's own error
    assert any("sign in with a new one" in e for e in errors) and len(at.image) == 0


def test_unshowable_item_says_why_and_can_still_be_rated(site, monkeypatch):
    import streamlit as st

    from openmind_curate.quality import viewer

    def broken(_index, unit_id):
        raise viewer.ViewerError(f"cannot show /data/ds-secret-name/{unit_id}.nii.gz: EOFError")

    st.cache_resource.clear()  # a fresh UnitCache, loading through the broken loader
    monkeypatch.setattr(viewer, "load_unit", broken)
    try:
        at = _sign_in(_app(), site["tokens"]["alice"])
        assert not at.exception and len(at.image) == 0
        assert "cannot be shown" in at.error[0].value
        assert "ds-secret-name" not in _texts(at) and ".nii" not in _texts(at)  # no path
        at = _rate(at, corrupted=True)  # it can still be rated (as corrupted)
        row = store.read_ratings(site["engine"], rater_id="alice").iloc[0]
        assert row["corrupted"] and pd.isna(row["image_checksum"])
    finally:
        st.cache_resource.clear()


def test_skip_moves_item_to_the_end(site):
    at = _sign_in(_app(), site["tokens"]["alice"])
    at.button[1].click().run()  # Skip
    assert "Skipped" in _texts(at)
    assert flow.current_item(site["engine"], "alice").image_id == "dwi-1"
    assert [i for i in store.queue(site["engine"], "alice")["image_id"]][-1] == "img-a"


def test_admin_page(site):
    engine = site["engine"]
    for rater in ("alice", "bob"):
        item = flow.current_item(engine, rater)
        values = dict(noisiness=2, blurriness=2, artifact_level=2)
        flow.submit(
            engine,
            flow.make_rating(
                item,
                values,
                rater_id=rater,
                submission_id=f"s-{rater}",
                image_checksum=None,
                seconds_spent=4.0,
                window_settings=None,
            ),
        )
    at = _sign_in(_app(), site["tokens"]["boss"])
    at.sidebar.radio(key="page").set_value("Admin").run()
    assert not at.exception, at.exception
    progress = at.dataframe[0].value.set_index("rater_id")
    assert progress.loc["alice", "done"] == 1 and progress.loc["alice", "total"] == 3
    assert progress.loc["bob", "median_seconds"] == 4.0
    subheads = [h.value for h in at.subheader]
    if len(at.dataframe) > 1:  # progress + the five agreement tables
        assert len(at.dataframe) == 6 and "Per rater pair" in subheads
    else:  # quality.agreement missing or failing: the page says so
        assert "Agreement statistics are not available" in _texts(at)
    plain = _sign_in(_app(), site["tokens"]["alice"])
    assert len(plain.sidebar.radio) == 0  # no admin page for a rater


# --- the logic, without the UI -------------------------------------------------------------


def _values(**over):
    return {"noisiness": 2, "blurriness": 2, "artifact_level": 2, **over}


def _save(engine, rater, item, sid, seconds=5.0, **over):
    rating = flow.make_rating(
        item,
        _values(**over),
        rater_id=rater,
        submission_id=sid,
        image_checksum="x",
        seconds_spent=seconds,
        window_settings={"preset": "Full range"},
    )
    return flow.submit(engine, rating)


def test_flow_resume_previous_progress(site):
    engine = site["engine"]
    assert flow.progress(engine, "alice") == (0, 3, None)
    first = flow.current_item(engine, "alice")
    assert (first.image_id, first.number, first.total) == ("img-a", 1, 3)
    assert flow.previous_item(engine, "alice") is None
    assert flow.next_after(engine, "alice", first).image_id == "dwi-1"
    _save(engine, "alice", first, "s1", seconds=4.0)
    second = flow.current_item(engine, "alice")
    assert (
        second.image_id == "dwi-1" and second.is_dwi and second.axes == ("noisiness", "blurriness")
    )
    saved = _save(engine, "alice", second, "s2", artifact_level=5, seconds=8.0)
    assert saved.version == 1
    assert pd.isna(store.read_ratings(engine).iloc[-1]["artifact_level"])  # DWI: null
    assert flow.progress(engine, "alice") == (2, 3, 6.0)
    back = flow.previous_item(engine, "alice")
    assert back.image_id == "dwi-1" and back.latest["version"] == 1
    assert back.latest["artifact_level"] is None and back.latest["noisiness"] == 2
    assert flow.previous_item(engine, "alice", 2).image_id == "img-a"
    assert flow.previous_item(engine, "alice", 3) is None
    assert _save(engine, "alice", back, "s3", noisiness=4).version == 2  # a correction
    # a correction does not move the item in the back history, nor count in the median
    assert flow.previous_item(engine, "alice").image_id == "dwi-1"
    assert flow.progress(engine, "alice") == (2, 3, 6.0)
    assert flow.current_item(engine, "alice").image_id == "img-b"
    assert flow.next_after(engine, "alice", flow.current_item(engine, "alice")) is None
    _save(engine, "alice", flow.current_item(engine, "alice"), "s4")
    assert flow.current_item(engine, "alice") is None
    table = flow.all_progress(engine).set_index("rater_id")
    assert table.loc["alice", ["done", "total", "corrections"]].tolist() == [3, 3, 1]
    assert table.loc["bob", ["done", "total"]].tolist() == [0, 1]


def test_make_rating_rules(site):
    item = flow.current_item(site["engine"], "alice")
    with pytest.raises(store.RatingsError, match="blurriness"):
        flow.make_rating(
            item,
            {"noisiness": 1},
            rater_id="alice",
            submission_id="s",
            image_checksum=None,
            seconds_spent=None,
            window_settings=None,
        )
    dwi = flow.Item("dwi-1", "regular", "d", DWI_GROUP, 2, 3)
    out = flow.make_rating(
        dwi,
        _values(artifact_level=5, comment="  "),
        rater_id="alice",
        submission_id="s",
        image_checksum=None,
        seconds_spent=-1,
        window_settings={"b": 1, "a": 2},
    )
    assert out["artifact_level"] is None and out["comment"] is None
    assert out["seconds_spent"] == 0.0 and out["window_settings"] == '{"a": 2, "b": 1}'
    assert out["fov_suboptimal"] is False and out["corrupted"] is False
    assert (
        flow.make_rating(
            item,
            _values(comment=HOSTILE),
            rater_id="alice",
            submission_id="s",
            image_checksum=None,
            seconds_spent=1,
            window_settings=None,
        )["comment"]
        == HOSTILE
    )
