"""The rater app through Streamlit's AppTest, and its logic (rating_flow) without the UI.

One small site per module: an index of three units (two T1w images and a
DWI unit of FA, MD and T2w maps) written as NIfTI files, a SQLite store with
raters alice (three items), bob (one item, to check isolation) and an admin.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from openmind_curate import index as index_store
from openmind_curate.quality import rating_flow as flow
from openmind_curate.quality import ratings as store
from openmind_curate.quality import viewer
from openmind_curate.quality.plan import DWI_GROUP
from openmind_curate.schema import IMAGE_INDEX

REPO = Path(__file__).resolve().parents[1]
IMG_A = "sub-01/anat/sub-01_T1w.nii.gz"
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


MARK = 1000.0  # the orientation markers' value, far above the noise (50-150)


def _volume(shape=(20, 24, 16), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 100 + 50).astype(np.float32)


def _with_markers(data: np.ndarray) -> np.ndarray:
    """Three bright bars along the left-anterior, left-superior and anterior-superior
    edges (RAS voxel axes): whatever the slice, each view's top-left corner is
    bright when the views are drawn the right way round (axial: L left, A up;
    coronal: L left, S up; sagittal: A left, S up)."""
    out = data.copy()
    out[:3, -4:, :] = MARK  # left-anterior: the axial view's top-left
    out[:3, :, -3:] = MARK  # left-superior: the coronal view's top-left
    out[:, -4:, -3:] = MARK  # anterior-superior: the sagittal view's top-left
    return out


def build_site(folder: Path, db: str | None = None) -> dict:
    """Files, index, store, raters and assignments; returns paths and tokens.
    The store is a SQLite file in `folder` unless `db` names another (a URL)."""
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
        if image_id == "img-a":
            data = _with_markers(data)
        if modality == "DWI":
            data = np.stack([data, data], axis=-1)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), root / rel)
        rows.append(_row(root, rel, image_id, modality, source))
    index_path = folder / "images.parquet"
    table = pa.Table.from_pylist(rows, schema=IMAGE_INDEX)
    index_store.update(index_path, lambda _current: table)
    db = db or folder / "ratings.sqlite"
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


def _app(query: dict | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


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
    parts += [e.proto.text for e in at.get("progress")]
    return "\n".join(parts)


def _panel(at) -> tuple[dict, bytes]:
    """The header and voxel body the browser panel was sent (apps/rater_panel.js)."""
    found = at.get("bidi_component")
    assert len(found) == 1, f"{len(found)} panels on the page"
    return viewer.unpack_payload(found[0].proto.bytes)


def _send(at, event: str, value: dict):
    """What the panel's setTriggerValue(event, value) does in a browser: a rerun
    carrying the event. AppTest cannot click inside a component, so the trigger
    goes in through the widget states it sends (an AppTest internal)."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    base = at.get("bidi_component")[0].proto.id
    states = at._tree.get_widget_states()
    trigger = f"$$STREAMLIT_INTERNAL_KEY_{base}__events"
    payload = json.dumps([{"event": event, "value": value}])
    states.widgets.append(WidgetState(id=trigger, json_trigger_value=payload))
    return at._run(states)


def _act(at, kind: str, **extra):
    header, _ = _panel(at)
    nonce = f"{kind}-{extra.pop('nonce', id(extra))}"
    return _send(
        at, "action", {"type": kind, "sid": header["item"]["sid"], "nonce": nonce, **extra}
    )


def _rate(at, noisiness=2, blurriness=3, artifact=4, comment=None, corrupted=False, **extra):
    answers = dict(noisiness=noisiness, blurriness=blurriness, artifact_level=artifact)
    answers.update(fov_suboptimal=False, corrupted=corrupted, comment=comment or "")
    window = extra.pop("window", {"preset": "Tissue", "slices": [10, 12, 8], "maps": {}})
    return _act(at, "save", answers=answers, window=window, **extra)


def _status(at) -> str:
    status = _panel(at)[0]["status"]
    return "" if status is None else status["text"]


def test_wrong_token_shows_nothing_but_sign_in_and_is_throttled(site):
    import streamlit as st

    st.cache_resource.clear()  # a fresh sign-in throttle
    at = _app()
    assert not at.exception
    assert len(at.get("bidi_component")) == 0 and at.text_input(key="token_input")
    for _ in range(5):  # five wrong guesses are answered
        at = _sign_in(at, "0123456789abcdef.forged-secret")
        assert "Sign-in refused" in at.error[0].value
    assert len(at.get("bidi_component")) == 0 and "rater" not in at.session_state
    assert "Item" not in _texts(at)
    at = _sign_in(at, site["tokens"]["alice"])  # the sixth, even right, must wait
    assert "Too many failed sign-ins" in at.error[0].value and "rater" not in at.session_state
    st.cache_resource.clear()


def test_revoked_token_is_refused(site):
    store.revoke_rater(site["engine"], "bob")
    at = _sign_in(_app(), site["tokens"]["bob"])
    assert "revoked" in at.error[0].value
    assert len(at.get("bidi_component")) == 0 and "rater" not in at.session_state


def test_rate_save_next_back_and_resume(site):
    engine = site["engine"]
    at = _sign_in(_app(), site["tokens"]["alice"])
    assert not at.exception, at.exception
    header, body = _panel(at)
    assert header["item"]["label"] == "Item 1 of 3" and "0 of 3 rated" in _texts(at)
    text = json.dumps(header)
    assert "ds-secret-name" not in text and "sub-01" not in text  # no dataset, no path
    # the voxels the browser gets are the file's, on the canonical grid (known answer)
    (meta,) = header["bodies"][header["unit"]["key"]]
    img = nib.as_closest_canonical(nib.load(site["index"].parent / "ds" / IMG_A))
    truth = img.get_fdata(dtype=np.float32)
    sent = viewer.decode_volume(meta, body)
    assert sent.shape == truth.shape and np.abs(sent - truth).max() <= meta["step"] / 2 + 1e-3
    first_sid = header["item"]["sid"]

    # painted: the server sends the next unit's voxels now; Save then sends a header only
    assert header["ask_ready"] == "painted"
    for _ in range(20):  # the next unit loads in the background
        at = _send(at, "sync", {"type": "ready", "sid": first_sid})
        if _panel(at)[0]["in_body"]:
            break
    header = _panel(at)[0]
    assert [k.split(":")[0] for k in header["in_body"]] == ["dwi-1"]
    # and the next item's header, so that Save can show it before the server answers
    assert header["next"]["item"]["label"] == "Item 2 of 3"
    assert header["next"]["unit"]["key"] == header["in_body"][0]

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
    assert json.loads(row["window_settings"])["slices"] == [10, 12, 8]

    # item 2 is the DWI unit: three maps, no artifact axis, saved as null
    header, body = _panel(at)
    assert header["item"]["label"] == "Item 2 of 3" and header["item"]["sid"] != first_sid
    assert header["in_body"] == [] and body == b""  # the browser already holds the voxels
    assert [v["label"] for v in header["unit"]["volumes"]] == ["FA", "MD", "T2w"]
    assert header["item"]["axes"] == ["noisiness", "blurriness"]
    assert _status(at) == "Saved: item 1."
    at = _rate(at, 1, 1, window={"preset": "High contrast", "maps": {"FA": {}, "MD": {}}})
    dwi = store.read_ratings(engine, rater_id="alice").iloc[-1]
    assert dwi["image_id"] == "dwi-1" and pd.isna(dwi["artifact_level"])
    assert json.loads(dwi["window_settings"])["preset"] == "High contrast"

    # back: the DWI unit again, pre-filled; saving makes version 2
    at = _act(at, "back")
    header, _ = _panel(at)
    assert header["item"]["correction"].startswith("Correcting your saved rating of item 2")
    assert header["item"]["latest"]["noisiness"] == 1 and header["nav"]["can_return"]
    at = _rate(at, 3, 1)
    versions = store.read_ratings(engine, rater_id="alice").query("image_id == 'dwi-1'")
    assert sorted(versions["version"]) == [1, 2] and versions.iloc[-1]["noisiness"] == 3
    assert _panel(at)[0]["item"]["label"] == "Item 3 of 3"
    assert _status(at) == "Correction saved: item 2."

    # a restarted app (new session) resumes at the first unrated item
    again = _sign_in(_app(), site["tokens"]["alice"])
    assert _panel(again)[0]["item"]["label"] == "Item 3 of 3"
    assert "2 of 3 rated" in _texts(again)


def test_a_reload_keeps_the_session_and_a_forged_one_is_refused(site):
    at = _sign_in(_app(), site["tokens"]["alice"])
    token = at.query_params["session"]
    token = token[0] if isinstance(token, list) else token
    assert site["tokens"]["alice"].split(".")[1] not in token  # never the rater's secret
    reloaded = _app({"session": token})  # F5: a new session with the same URL
    assert not reloaded.exception and _panel(reloaded)[0]["item"]["label"] == "Item 1 of 3"
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    refused = _app({"session": forged})
    assert len(refused.get("bidi_component")) == 0 and "session ended" in _texts(refused)
    # signing out ends the session: its token no longer signs in
    signed_out = _app({"session": token})
    signed_out.button[0].click().run()  # "Sign out" (the only button when signed in)
    assert "rater" not in signed_out.session_state
    after = _app({"session": token})
    assert len(after.get("bidi_component")) == 0 and "session ended" in _texts(after)


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
    header, _ = _panel(at)
    assert header["item"]["label"] == "Item 1 of 1" and "0 of 1 rated" in _texts(at)
    assert "alice was here" not in json.dumps(header) + _texts(at)
    assert header["nav"]["can_back"] is False  # bob has rated nothing
    monkeypatch.setenv("OPENMIND_RATER_SHOW_DATASETS", "1")
    shown = _sign_in(_app(), site["tokens"]["bob"])
    assert "ds-secret-name" in _panel(shown)[0]["item"]["label"]


def test_hostile_comment_is_stored_verbatim_and_sent_back_as_data(site):
    at = _sign_in(_app(), site["tokens"]["alice"])
    at = _rate(at, comment=HOSTILE)
    stored = store.read_ratings(site["engine"], rater_id="alice")
    assert stored.iloc[0]["comment"] == HOSTILE
    at = _act(at, "back")  # back to it: the comment comes back as a JSON string
    assert _panel(at)[0]["item"]["latest"]["comment"] == HOSTILE
    assert not any("<script>" in str(m.value) for m in at.markdown)
    assert store.read_ratings(site["engine"]).shape[0] == 1  # the table is still there


def test_double_submit_stores_one_rating(site):
    engine = site["engine"]
    at = _sign_in(_app(), site["tokens"]["alice"])
    sid = _panel(at)[0]["item"]["sid"]
    stale = dict(at.session_state["shown"])
    at = _rate(at, nonce="first")
    at.session_state["shown"] = stale  # the same showing submitted again (a double click)
    at = _rate(at, nonce="second")
    assert _panel(at)[0]["item"]["sid"] != sid  # the page moved on
    assert len(store.read_ratings(engine, rater_id="alice")) == 1


def test_missing_answers_are_all_named_and_nothing_saved(site):
    at = _sign_in(_app(), site["tokens"]["alice"])
    sid = _panel(at)[0]["item"]["sid"]
    at = _rate(at, 2, None, None)  # blurriness and artifact missing
    assert "blurriness, artifact level" in _status(at)
    assert _panel(at)[0]["item"]["sid"] == sid and store.read_ratings(site["engine"]).empty
    store.revoke_rater(site["engine"], "alice")  # revoked mid-session
    at = _rate(at)
    assert store.read_ratings(site["engine"]).empty
    assert "sign in with a new one" in _texts(at) and len(at.get("bidi_component")) == 0


def test_an_outage_keeps_the_answers_and_saves_them_once_when_back(site, monkeypatch):
    from sqlalchemy.exc import OperationalError

    real = flow.submit

    def down(*_args, **_kwargs):
        raise OperationalError("INSERT ...", {}, ConnectionRefusedError("server closed"))

    at = _sign_in(_app(), site["tokens"]["alice"])
    sid = _panel(at)[0]["item"]["sid"]
    monkeypatch.setattr(flow, "submit", down)
    at = _rate(at, 2, 3, 4, comment="typed during the outage")
    assert not at.exception, at.exception
    assert "cannot be reached" in _status(at) and "server closed" not in _texts(at)
    assert _panel(at)[0]["item"]["sid"] == sid  # the same panel: the browser keeps the form
    at.run()  # a retry while still down: still kept
    assert "cannot be reached" in _status(at) and store.read_ratings(site["engine"]).empty
    monkeypatch.setattr(flow, "submit", real)
    at.run()  # the database is back: the kept rating is saved, once, and the rater goes on
    saved = store.read_ratings(site["engine"], rater_id="alice")
    assert len(saved) == 1 and saved.iloc[0]["comment"] == "typed during the outage"
    assert saved.iloc[0]["submission_id"] == sid
    assert _panel(at)[0]["item"]["label"] == "Item 2 of 3"
    at.run()
    assert len(store.read_ratings(site["engine"], rater_id="alice")) == 1


def test_unshowable_item_says_why_and_can_still_be_rated(site, monkeypatch):
    import streamlit as st

    def broken(_index, unit_id):
        raise viewer.ViewerError(f"cannot show /data/ds-secret-name/{unit_id}.nii.gz: EOFError")

    st.cache_resource.clear()  # a fresh UnitCache, loading through the broken loader
    monkeypatch.setattr(viewer, "load_unit", broken)
    try:
        at = _sign_in(_app(), site["tokens"]["alice"])
        header, body = _panel(at)
        assert not at.exception and header["unit"] is None and body == b""
        assert "cannot be shown" in header["missing"]
        text = json.dumps(header) + _texts(at)
        assert "ds-secret-name" not in text and ".nii" not in text  # no path
        # the next unit cannot be read either: the page stops asking for it (no endless
        # "later" polling), and nothing is sent
        for _ in range(40):
            at = _send(at, "sync", {"type": "ready", "sid": header["item"]["sid"]})
            if not _panel(at)[0]["ask_ready"]:
                break
            time.sleep(0.05)
        assert _panel(at)[0]["ask_ready"] == "" and _panel(at)[0]["in_body"] == []
        at = _rate(at, corrupted=True)  # it can still be rated (as corrupted)
        row = store.read_ratings(site["engine"], rater_id="alice").iloc[0]
        assert row["corrupted"] and pd.isna(row["image_checksum"])
    finally:
        st.cache_resource.clear()


def test_skip_moves_item_to_the_end(site):
    at = _sign_in(_app(), site["tokens"]["alice"])
    at = _act(at, "skip")
    assert _status(at).startswith("Skipped item 1")
    assert _panel(at)[0]["item"]["label"] == "Item 1 of 3"  # the heading names what is shown
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
    at = _sign_in(_app(), site["tokens"]["boss"])  # a lead lands on the admin page
    assert not at.exception, at.exception
    assert len(at.get("bidi_component")) == 0 and "Progress per rater" in _texts(at)
    progress = at.dataframe[0].value
    assert "rater_id" not in progress.columns and "is_admin" not in progress.columns
    assert any("(s)" in c for c in progress.columns)  # units in the names
    progress = progress.set_index(progress.columns[0])
    assert "None" not in progress.astype(str).to_string()
    assert len(at.dataframe) >= 2 and "How to read" in _texts(at)
    plain = _sign_in(_app(), site["tokens"]["alice"])
    assert len(plain.get("segmented_control")) == 0  # no admin page for a rater


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
