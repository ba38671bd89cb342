"""The rater app: sign in with a token, score the units of your queue.

Started by ``curate rate --index INDEX --db DB``, which runs
``streamlit run apps/rater.py`` with the configuration in the environment
(and nowhere else):

- ``OPENMIND_RATER_INDEX``: the image index (parquet);
- ``OPENMIND_RATER_DB``: the ratings database (a SQLite path or a URL);
- ``OPENMIND_RATER_SHOW_DATASETS``: ``1`` shows dataset names (hidden by default).

UI only: where the rater is, what a save stores and what is shown live in
``openmind_curate.quality.rating_flow`` and ``openmind_curate.quality.viewer``.
Nothing the browser sends names a file: the item comes from the rater's queue
in the database and its files from the index.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from openmind_curate.index import read_frame
from openmind_curate.quality import rating_flow as flow
from openmind_curate.quality import ratings as store
from openmind_curate.quality import viewer
from openmind_curate.quality.plan import DWI_GROUP
from openmind_curate.quality.ratings import AXES, FLAGS, RatingsError

INDEX = os.environ.get("OPENMIND_RATER_INDEX", "")
DB = os.environ.get("OPENMIND_RATER_DB", "")
SHOW_DATASETS = os.environ.get("OPENMIND_RATER_SHOW_DATASETS", "") == "1"
CACHE_UNITS = 6
VIEW_NAMES = ("Sagittal (nose left)", "Coronal (L | R)", "Axial (L | R, anterior up)")

ss = st.session_state
LOG = logging.getLogger("openmind_curate.rater")


# --- shared resources (one per server process) ---------------------------------------------


@st.cache_resource(show_spinner=False)
def get_engine(db: str):
    return store.connect(db, create=False)


@st.cache_resource(show_spinner=False)
def get_index(path: str, stamp: int):  # the stamp is part of the cache key
    return read_frame(path)


@st.cache_resource(show_spinner=False)
def get_cache(path: str, stamp: int) -> viewer.UnitCache:
    return viewer.UnitCache(get_index(path, stamp), maxsize=CACHE_UNITS, workers=2)


def index_stamp(path: str) -> int:
    """The index file's mtime: a rewritten index is read again."""
    return Path(path).stat().st_mtime_ns


# --- callbacks (they run before the script, with the values of the showing they belong to) --


def on_sign_in() -> None:
    token = ss.get("token_input", "")
    ss["token_input"] = ""  # the token does not stay in the session
    try:
        rater = store.authenticate(get_engine(DB), token)
    except RatingsError as exc:
        ss["sign_in_error"] = f"Sign-in refused: {exc}"
        return
    ss["rater"] = rater
    ss["back"] = 0
    ss.pop("sign_in_error", None)


def on_sign_out() -> None:
    for key in list(ss.keys()):
        del ss[key]


def on_save(
    rater_id: str, item: flow.Item, sid: str, shown_at: float, checksum: str | None
) -> None:
    values = {name: ss.get(f"{sid}-{name}") for name in (*AXES, *FLAGS, "comment")}
    try:
        rating = flow.make_rating(
            item,
            values,
            rater_id=rater_id,
            submission_id=sid,
            image_checksum=checksum,
            seconds_spent=time.time() - shown_at,
            window_settings=ss.get(f"{sid}-window"),
        )
        saved = flow.submit(get_engine(DB), rating)
    except RatingsError as exc:
        ss["flash"] = ("error", str(exc))
        return
    if saved.duplicate:
        ss["flash"] = ("info", f"Already saved (version {saved.version}); nothing new stored.")
        return
    what = "Correction saved" if saved.version > 1 else "Saved"
    ss["flash"] = ("success", f"{what} (version {saved.version}).")
    if ss.get("back", 0) > 0:
        ss["back"] -= 1


def on_skip(rater_id: str, item: flow.Item) -> None:
    try:
        store.skip(get_engine(DB), rater_id, item.image_id, item.kind)
    except RatingsError as exc:
        ss["flash"] = ("error", str(exc))
        return
    ss["flash"] = ("info", "Skipped: the item comes back after the rest of your queue.")


def on_back() -> None:
    ss["back"] = ss.get("back", 0) + 1


def on_return() -> None:
    ss["back"] = 0


# --- pages ------------------------------------------------------------------------------------


def sign_in_page() -> None:
    st.title("Image quality rating")
    with st.form("sign_in"):
        st.text_input("Rater token", type="password", key="token_input")
        st.form_submit_button("Sign in", type="primary", on_click=on_sign_in)
    if ss.get("sign_in_error"):
        st.error(ss["sign_in_error"])


def show_flash() -> None:
    flash = ss.pop("flash", None)
    if flash is None:
        return
    level, text = flash
    {"error": st.error, "info": st.info, "success": st.success}[level](text)


@st.fragment
def viewer_panel(unit: viewer.Unit, sid: str) -> None:
    """Three orthogonal views of each volume. A fragment: a slider or preset
    change reruns only this panel (no database reads), redrawing from the
    cached arrays; what was used is kept for the save."""
    first = unit.volumes[0]
    controls = st.columns([2, 1, 1, 1])
    preset = controls[0].radio("Window", list(viewer.PRESETS), horizontal=True, key=f"{sid}-preset")
    ijk = []
    for col, name, n, c in zip(
        controls[1:], ("Sagittal", "Coronal", "Axial"), first.shape, first.center, strict=True
    ):
        ijk.append(col.slider(f"{name} slice", 0, n - 1, c, key=f"{sid}-slice-{name}"))
    used = {"preset": preset, "slices": ijk, "maps": {}}
    for vol in unit.volumes:
        level, width = viewer.window(vol, preset)
        used["maps"][vol.label] = {"level": round(level, 6), "width": round(width, 6)}
        pics = viewer.slices(vol, tuple(ijk), level, width)
        cols = st.columns(3)
        for col, pic, name in zip(cols, pics, VIEW_NAMES, strict=True):
            col.image(
                pic, caption=f"{vol.label} · {name}", width="stretch", output_format="PNG"
            )  # lossless: JPEG would add artifacts to rate
    ss[f"{sid}-window"] = used


def rating_form(
    rater_id: str, item: flow.Item, sid: str, shown_at: float, checksum: str | None
) -> None:
    latest = item.latest or {}
    with st.form(f"rate-{sid}", enter_to_submit=False):
        for axis in item.axes:
            value = latest.get(axis)
            st.radio(
                f"**{flow.AXIS_LABELS[axis]}**",
                [1, 2, 3, 4, 5],
                horizontal=True,
                index=None if value is None else int(value) - 1,
                key=f"{sid}-{axis}",
                help=flow.AXIS_HELP[axis],
            )
            st.caption(flow.AXIS_HELP[axis])
        if item.is_dwi:
            st.caption("Artifact level is not rated for DWI-derived maps.")
        for flag in FLAGS:
            st.checkbox(
                flow.FLAG_LABELS[flag], value=bool(latest.get(flag) or False), key=f"{sid}-{flag}"
            )
        st.text_area(
            "Comment (optional)",
            value=latest.get("comment") or "",
            key=f"{sid}-comment",
            max_chars=4000,
        )
        label = "Save correction" if item.latest else "Save and next"
        st.form_submit_button(
            label,
            type="primary",
            shortcut="Ctrl+Enter",
            key=f"{sid}-save",
            on_click=on_save,
            args=(rater_id, item, sid, shown_at, checksum),
        )


def rate_page(rater: store.Rater) -> None:
    engine = get_engine(DB)
    rid = rater.rater_id
    done, total, median = flow.progress(engine, rid)
    text = f"{done} of {total} rated"
    if median is not None:
        text += f" · median {median:.0f} s per rating"
    st.progress(done / total if total else 1.0, text=text)
    show_flash()

    back = ss.get("back", 0)
    item = flow.previous_item(engine, rid, back) if back else None
    if back and item is None:
        ss["back"] = back = 0
    if not back:
        item = flow.current_item(engine, rid)
    history = flow.history_length(engine, rid)
    nav = st.columns([1, 1, 1, 3])
    nav[0].button(
        "Back",
        shortcut="Alt+B",
        on_click=on_back,
        disabled=back >= history,
        help="Show the item before: saving it stores a correction",
    )
    if back:
        nav[1].button("Return to current item", on_click=on_return)
    if item is None:
        st.success("Your queue is done. Thank you!" if total else "Your queue is empty.")
        return
    if not back:
        nav[1].button(
            "Skip",
            shortcut="Alt+S",
            on_click=on_skip,
            args=(rid, item),
            help="Move this item to the end of your queue",
        )

    shown = ss.get("shown")
    if shown is None or shown["key"] != item.key:  # a new showing: one submission id for it
        shown = {"key": item.key, "sid": store.new_submission_id(), "shown_at": time.time()}
        ss["shown"] = shown
    sid = shown["sid"]

    group = "DWI-derived maps (FA, MD, T2w)" if item.group_name == DWI_GROUP else item.group_name
    st.subheader(item.label(SHOW_DATASETS))
    st.caption(group)
    if item.latest:
        st.info(
            f"Correcting your rating (saved version {item.latest['version']}): "
            f"saving stores version {item.latest['version'] + 1}."
        )
        if item.latest.get("comment"):
            st.caption("Your saved comment, as typed:")
            st.text(item.latest["comment"])

    cache = get_cache(INDEX, index_stamp(INDEX))
    try:
        with st.spinner("Loading the image..."):
            unit = cache.get(item.image_id)
    except viewer.ViewerError as exc:  # the reason goes to the server log: it names files
        LOG.warning("rater %s, unit %s: %s", rid, item.image_id, exc)
        st.error(
            "This image cannot be shown (its file could not be read). "
            "Skip it, or rate it as corrupted."
        )
        rating_form(rid, item, sid, shown["shown_at"], None)
        return
    if not back:
        after = flow.next_after(engine, rid, item)
        cache.prefetch(after.image_id if after else None)

    left, right = st.columns([3, 1])
    with left:
        viewer_panel(unit, sid)
    with right:
        rating_form(rid, item, sid, shown["shown_at"], unit.checksum)


def admin_page() -> None:
    engine = get_engine(DB)
    st.header("Progress per rater")
    st.dataframe(flow.all_progress(engine), hide_index=True)
    st.header("Agreement")
    try:
        from openmind_curate.quality.agreement import agreement
    except Exception as exc:  # noqa: BLE001 - the page works without the statistics
        st.info(f"Agreement statistics are not available: {type(exc).__name__}: {exc}")
        return
    all_versions = store.read_ratings(engine)
    if all_versions.empty:
        st.info("No ratings yet.")
        return
    gold = store.read_gold(engine)
    try:
        report = agreement(all_versions, None if gold.empty else gold)
    except Exception as exc:  # noqa: BLE001 - show the failure, keep the page
        st.error(f"Cannot compute agreement: {type(exc).__name__}: {exc}")
        return
    for warning in report.warnings:
        st.text(f"Warning: {warning}")
    titles = {
        "axes": "Per axis",
        "pairs": "Per rater pair",
        "bias": "Rater bias",
        "intra": "Intra-rater (hidden repeats)",
        "gold": "Gold items",
    }
    for name, title in titles.items():
        st.subheader(title)
        st.dataframe(getattr(report, name), hide_index=True)


def main() -> None:
    st.set_page_config(page_title="Image quality rating", layout="wide")
    if not INDEX or not DB:
        st.error("Start the app with `curate rate --index INDEX --db DB`.")
        st.stop()
    try:
        engine = get_engine(DB)
        index_stamp(INDEX)
    except (RatingsError, OSError) as exc:
        st.error(f"Cannot start: {exc}")
        st.stop()
    if "rater" not in ss:
        sign_in_page()
        st.stop()
    rater: store.Rater = ss["rater"]
    raters = store.list_raters(engine)
    mine = raters[raters["rater_id"] == rater.rater_id]
    if mine.empty or pd.notna(mine["revoked_at"].iloc[0]):  # revoked since signing in
        flash = ss.get("flash")  # a save refused in the same click says why
        on_sign_out()
        if flash is not None and flash[0] == "error":
            st.error(flash[1])
        ss["sign_in_error"] = "Your token was revoked; sign in with a new one."
        sign_in_page()
        st.stop()
    with st.sidebar:
        st.text(f"Signed in as {rater.rater_id}")
        page = st.radio("Page", ["Rate", "Admin"], key="page") if rater.is_admin else "Rate"
        st.button("Sign out", on_click=on_sign_out)
        st.caption("Shortcuts: Ctrl+Enter save · Alt+S skip · Alt+B back")
    if page == "Admin":
        admin_page()
    else:
        rate_page(rater)


main()
