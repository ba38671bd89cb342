"""The peer of benchmarks/rater_browser.py: a rater app drawn with Streamlit's
stock widgets, as apps/rater.py was before its viewer moved into the browser.

The same store, flow and unit cache (with prefetch) as ours; the views are
three server-rendered PNGs (`st.image`) in a fragment, so a slider step is a
server round trip; the form is `st.form` with radio buttons. Benchmark only.
"""

from __future__ import annotations

import os
import time

import streamlit as st

from openmind_curate.index import read_frame
from openmind_curate.quality import rating_flow as flow
from openmind_curate.quality import ratings as store
from openmind_curate.quality import viewer

INDEX, DB = os.environ["OPENMIND_RATER_INDEX"], os.environ["OPENMIND_RATER_DB"]
ss = st.session_state
VIEWS = ("Sagittal", "Coronal", "Axial")


@st.cache_resource
def engine():
    return store.connect(DB, create=False)


@st.cache_resource
def cache() -> viewer.UnitCache:
    return viewer.UnitCache(read_frame(INDEX), maxsize=6, workers=2)


def on_sign_in() -> None:
    ss["rater"] = store.authenticate(engine(), ss.pop("token", ""))


def on_save(item: flow.Item, sid: str, checksum: str) -> None:
    values = {a: ss.get(f"{sid}-{a}") for a in item.axes}
    rating = flow.make_rating(
        item,
        values,
        rater_id=ss["rater"].rater_id,
        submission_id=sid,
        image_checksum=checksum,
        seconds_spent=1.0,
        window_settings=None,
    )
    flow.submit(engine(), rating)


@st.fragment
def views(unit: viewer.Unit, sid: str) -> None:
    vol = unit.volumes[0]
    cols = st.columns(3)
    ijk = [
        c.slider(f"{name} slice", 0, n - 1, m, key=f"{sid}-{name}")
        for c, name, n, m in zip(cols, VIEWS, vol.shape, vol.center, strict=True)
    ]
    level, width = viewer.window(vol, viewer.DEFAULT_PRESET)
    for col, pic in zip(st.columns(3), viewer.slices(vol, tuple(ijk), level, width), strict=True):
        col.image(pic, width="stretch", output_format="PNG")


def main() -> None:
    st.set_page_config(layout="wide")
    if "rater" not in ss:
        with st.form("sign_in"):
            st.text_input("Rater token", type="password", key="token")
            st.form_submit_button("Sign in", on_click=on_sign_in)
        st.stop()
    where = flow.place(engine(), ss["rater"].rater_id)
    if where.item is None:
        st.success("done")
        return
    item = where.item
    if ss.get("key") != item.key:
        ss["key"], ss["sid"] = item.key, store.new_submission_id()
    sid = ss["sid"]
    unit = cache().get(item.image_id)
    if where.after is not None:
        cache().prefetch(where.after.image_id)
    st.subheader(item.label())
    left, right = st.columns([3, 1])
    with left:
        views(unit, sid)
    with right, st.form(f"rate-{sid}"):
        for axis in item.axes:
            st.radio(
                flow.AXIS_LABELS[axis],
                [1, 2, 3, 4, 5],
                horizontal=True,
                index=None,
                key=f"{sid}-{axis}",
            )
        st.form_submit_button("Save and next", on_click=on_save, args=(item, sid, unit.checksum))
    ss["shown_at"] = time.time()


main()
