"""The rater app: sign in with a token, score the units of your queue.

Started by ``curate rate --index INDEX --db DB``, which runs
``streamlit run apps/rater.py`` with the configuration in the environment
(and nowhere else):

- ``OPENMIND_RATER_INDEX``: the image index (parquet);
- ``OPENMIND_RATER_DB``: the ratings database (a SQLite path or a URL);
- ``OPENMIND_RATER_SHOW_DATASETS``: ``1`` shows dataset names (hidden by default);
- ``OPENMIND_RATER_SESSION_KEY``: optional, hex; the key sessions are signed
  with (a random one per server process otherwise: a restarted app asks raters
  to sign in again).

UI only. The viewer and the form are one component drawn in the browser
(``rater_panel.js``): slicing, windowing and zoom never reach the server, and
the only round trips are Save, Skip and Back. Where the rater is, what a save
stores and what is shown live in ``openmind_curate.quality.rating_flow`` and
``openmind_curate.quality.viewer``; sessions and sign-in throttling in
``openmind_curate.quality.rater_session``. Nothing the browser sends names a
file: the item comes from the rater's queue in the database and its files
from the index, and images travel inside the signed-in session only.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from openmind_curate.index import read_frame
from openmind_curate.quality import rater_session, viewer
from openmind_curate.quality import rating_flow as flow
from openmind_curate.quality import ratings as store
from openmind_curate.quality.plan import DWI_GROUP
from openmind_curate.quality.ratings import FLAGS, RatingsError

INDEX = os.environ.get("OPENMIND_RATER_INDEX", "")
DB = os.environ.get("OPENMIND_RATER_DB", "")
SHOW_DATASETS = os.environ.get("OPENMIND_RATER_SHOW_DATASETS", "") == "1"
CACHE_UNITS = 6
RETRY_SECONDS = 3
PREFETCH_DELAY = 0.3  # s: the next unit loads once this one is drawn, not against it
PANEL = "panel"
UNREACHABLE = (
    "The ratings database cannot be reached. Your answers are kept in this page; "
    f"saving again every {RETRY_SECONDS} s."
)
DWI_TITLE = "DWI-derived maps (FA, MD, T2w)"
HERE = Path(__file__).resolve().parent

ss = st.session_state
LOG = logging.getLogger("openmind_curate.rater")

rater_panel = st.components.v2.component(
    "openmind_rater_panel",
    js=(HERE / "rater_panel.js").read_text(),
    css=(HERE / "rater_panel.css").read_text(),
)


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


@st.cache_resource(show_spinner=False)
def session_key() -> bytes:
    given = os.environ.get("OPENMIND_RATER_SESSION_KEY", "")
    return bytes.fromhex(given) if given else secrets.token_bytes(32)


@st.cache_resource(show_spinner=False)
def throttle() -> rater_session.Throttle:
    return rater_session.Throttle()


@st.cache_resource(show_spinner=False)
def ended_sessions() -> set[str]:
    """Nonces of sessions signed out on this server: their tokens no longer work."""
    return set()


def index_stamp(path: str) -> int:
    """The index file's mtime: a rewritten index is read again."""
    return Path(path).stat().st_mtime_ns


def client_id() -> str:
    """Who a failed sign-in is counted against: the client address (behind a
    reverse proxy, the proxy's; see the README's remote-rating section)."""
    address = getattr(st.context, "ip_address", None)
    return address if isinstance(address, str) and address else "unknown"


# --- sessions -----------------------------------------------------------------------------


def start_session(rater: store.Rater) -> None:
    token = rater_session.issue(session_key(), rater.rater_id, rater.is_admin, time.time())
    st.query_params["session"] = token  # a reload keeps it: F5 does not sign out
    ss["rater"], ss["session"], ss["back"] = rater, token, 0
    ss["page"] = "Admin" if rater.is_admin else "Rate"  # a lead lands on the admin page


def restore_session() -> bool:
    """Sign in again from the page's session token (after a reload); False if none is valid."""
    token = st.query_params.get("session")
    if not token:
        return False
    found = rater_session.verify(session_key(), token, time.time(), frozenset(ended_sessions()))
    if found is None:
        del st.query_params["session"]
        ss["sign_in_error"] = "Your session ended; sign in again."
        return False
    ss["rater"], ss["session"] = store.Rater(found.rater_id, found.is_admin), token
    ss.setdefault("back", 0)
    ss.setdefault("page", "Admin" if found.is_admin else "Rate")
    return True


def on_sign_in() -> None:
    token = ss.get("token_input", "")
    ss["token_input"] = ""  # the token does not stay in the session
    client, now = client_id(), time.time()
    wait = throttle().wait(client, now)
    if wait > 0:
        ss["sign_in_error"] = f"Too many failed sign-ins: try again in {math.ceil(wait)} s."
        return
    try:
        rater = store.authenticate(get_engine(DB), token)
    except RatingsError as exc:
        throttle().failed(client, now)
        ss["sign_in_error"] = f"Sign-in refused: {exc}"
        return
    except Exception as exc:
        if not flow.is_unreachable(exc):
            raise
        ss["sign_in_error"] = "The ratings database cannot be reached; try again in a moment."
        return
    throttle().succeeded(client)
    ss.pop("sign_in_error", None)
    start_session(rater)


def on_sign_out() -> None:
    token = ss.get("session")
    if token:
        found = rater_session.verify(session_key(), token, time.time())
        if found is not None:
            ended_sessions().add(found.nonce)
    for key in list(ss.keys()):
        del ss[key]
    st.query_params.clear()


# --- the panel's actions (a callback: it runs before the script, once per click) ------------


def panel_event(name: str) -> Any:
    """The value the panel sent with its trigger `name` (in the callback of that trigger)."""
    value = ss.get(PANEL)
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)


def on_sync() -> None:
    """The panel's own messages: "ready" (the item is painted: send the next unit's
    voxels now) and "need" (the browser lost a unit's voxels: send them again)."""
    sync, shown = panel_event("sync"), ss.get("shown")
    if not isinstance(sync, dict) or shown is None or sync.get("sid") != shown["sid"]:
        return
    if sync.get("type") == "ready":
        ss["ready_for"] = shown["sid"]
    elif sync.get("type") == "need":
        ss.setdefault("sent", set()).discard(sync.get("key"))


def on_action() -> None:
    action, shown = panel_event("action"), ss.get("shown")
    if not isinstance(action, dict) or shown is None or action.get("sid") != shown["sid"]:
        return  # a click on an item no longer shown
    if action.get("nonce") == ss.get("last_nonce"):
        return
    ss["last_nonce"] = action.get("nonce")
    kind = action.get("type")
    if kind == "back":
        ss["back"] = ss.get("back", 0) + 1
    elif kind == "return":
        ss["back"] = 0
    elif kind == "skip":
        skip(shown["item"])
    elif kind == "save":
        save(shown, action)


def skip(item: flow.Item) -> None:
    try:
        store.skip(get_engine(DB), ss["rater"].rater_id, item.image_id, item.kind)
    except Exception as exc:
        ss["status"] = status_of(exc)
        return
    ss["status"] = ("info", f"Skipped item {item.number}: it comes back after the rest.")


def save(shown: dict[str, Any], action: dict[str, Any]) -> None:
    item: flow.Item = shown["item"]
    answers = action.get("answers") or {}
    try:
        rating = flow.make_rating(
            item,
            {k: answers.get(k) for k in (*item.axes, *FLAGS, "comment")},
            rater_id=ss["rater"].rater_id,
            submission_id=shown["sid"],
            image_checksum=shown["checksum"],
            seconds_spent=time.time() - shown["shown_at"],
            window_settings=action.get("window"),
        )
    except RatingsError as exc:
        ss["status"] = ("error", f"Not saved: {exc}.")
        return
    submit(rating, item)


def submit(rating: dict[str, Any], item: flow.Item) -> bool:
    """Save; False if the database cannot be reached, and then the rating is kept
    to retry (with its submission id: however many tries, it is saved once)."""
    try:
        saved = flow.submit(get_engine(DB), rating)
    except Exception as exc:
        ss["status"] = status_of(exc)
        if flow.is_unreachable(exc):
            ss["pending"] = (rating, item)
            return False
        ss.pop("pending", None)  # refused (a revoked token, say): the status says why
        return True
    ss.pop("pending", None)
    what = "Correction saved" if saved.version > 1 else "Saved"
    ss["status"] = ("success", f"{what}: item {item.number}.")
    if ss.get("back", 0) > 0 and not saved.duplicate:
        ss["back"] -= 1
    return True


def status_of(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, RatingsError):
        return ("error", f"Not saved: {exc}.")
    if flow.is_unreachable(exc):
        LOG.warning("ratings database unreachable: %s", exc)
        return ("error", UNREACHABLE)
    raise exc


@st.fragment(run_every=RETRY_SECONDS)
def retry_outage() -> None:
    """While the database is unreachable: retry a kept save, or just look; when
    it answers again, rerun the whole page (the rater goes on, still signed in)."""
    if "pending" in ss:
        if submit(*ss["pending"]):
            st.rerun(scope="app")
        return
    try:
        flow.place(get_engine(DB), ss["rater"].rater_id)
    except Exception as exc:
        if flow.is_unreachable(exc):
            return
        raise
    st.rerun(scope="app")


# --- pages ------------------------------------------------------------------------------------


def sign_in_page() -> None:
    st.title("Image quality rating")
    with st.form("sign_in"):
        st.text_input("Rater token", type="password", key="token_input")
        st.form_submit_button("Sign in", type="primary", on_click=on_sign_in)
    if ss.get("sign_in_error"):
        st.error(ss["sign_in_error"])


def panel_header(item: flow.Item, sid: str, unit: viewer.Unit | None, where: flow.Place) -> dict:
    """What the browser panel draws for one showing (see rater_panel.js), without voxels."""
    return dict(
        **showing(item, sid, unit, back=where.back, history=where.history),
        scale=list(flow.SCALE),
        axis_labels=flow.AXIS_LABELS,
        axis_hints=flow.AXIS_HINTS,
        flag_labels=flow.FLAG_LABELS,
        presets=viewer.PRESET_HELP,
        default_preset=viewer.DEFAULT_PRESET,
        status=None,
        in_body=[],  # unit keys whose voxels follow the header, in order
        ask_ready="",  # "painted"/"later": say when ready, the server then sends the next unit
        next=None,  # the next item, once the browser holds its voxels: Save shows it at once
    )


def showing(
    item: flow.Item, sid: str, unit: viewer.Unit | None, *, back: int, history: int
) -> dict:
    """The parts of the header that change from item to item."""
    latest = item.latest or {}
    correction = (
        f"Correcting your saved rating of item {item.number}: saving replaces it "
        "(the earlier one is kept in the history)."
        if item.latest
        else ""
    )
    return dict(
        item=dict(
            sid=sid,
            label=item.label(SHOW_DATASETS),
            group=DWI_TITLE if item.group_name == DWI_GROUP else item.group_name,
            axes=list(item.axes),
            is_dwi=item.is_dwi,
            latest={k: latest.get(k) for k in (*item.axes, *FLAGS, "comment")} if latest else None,
            correction=correction,
        ),
        unit=None if unit is None else dict(key=unit_key(unit), volumes=unit.encoded[0]),
        missing=""
        if unit is not None
        else "This image cannot be shown (its file could not be read). "
        "Skip it, or rate it as corrupted.",
        nav=dict(can_back=back < history, can_skip=not back, can_return=bool(back)),
    )


def unit_key(unit: viewer.Unit) -> str:
    """How the browser's cache names a unit's voxels (a changed file is a new key)."""
    return f"{unit.unit_id}:{unit.checksum[:16]}"


def with_voxels(header: dict, units: list[viewer.Unit]) -> bytes:
    """The header, then the voxels of `units` (the browser keeps them by key);
    each volume's offset is shifted to its place in the joined body."""
    parts, offset = [], 0
    header = {**header, "in_body": [], "bodies": {}}
    for unit in units:
        metas, body = unit.encoded
        header["in_body"].append(unit_key(unit))
        header["bodies"][unit_key(unit)] = [{**m, "offset": m["offset"] + offset} for m in metas]
        parts.append(body)
        offset += len(body)
    return viewer.pack_payload(header, b"".join(parts))


def show_panel(
    header: dict, units: list[viewer.Unit], status: tuple[str, str] | None = None
) -> None:
    if status is None:
        status = ss.pop("status", None)
    header = {**header, "status": None if status is None else dict(level=status[0], text=status[1])}
    header["handled"] = ss.get("last_nonce")  # the last action this answers (rater_panel.js)
    ss["seq"] = header["seq"] = ss.get("seq", 0) + 1  # never the same data twice: a repeat
    # "later" must reach the browser, and Streamlit does not redraw unchanged data
    payload = with_voxels(header, units)
    rater_panel(key=PANEL, data=payload, on_action_change=on_action, on_sync_change=on_sync)


def progress_line(rater: store.Rater, where: flow.Place | None) -> None:
    if where is None:
        st.caption(f"{rater.rater_id} · progress unknown while the database is unreachable")
        return
    text = f"{rater.rater_id} · {where.done} of {where.total} rated"
    if where.median_seconds is not None:
        text += f" · median {where.median_seconds:.0f} s per rating"
    st.progress(where.done / where.total if where.total else 0.0, text=text)


@st.fragment
def rate_page(rater: store.Rater) -> None:
    """A fragment: Save, Skip and Back rerun only this part of the page."""
    engine = get_engine(DB)
    rid = rater.rater_id
    if "pending" in ss and not submit(*ss["pending"]):  # a save kept through an outage
        outage_page(rater)
        return
    try:
        where = flow.place(engine, rid, ss.get("back", 0))
    except Exception as exc:
        if not flow.is_unreachable(exc):
            raise
        outage_page(rater)
        return
    ss["back"] = where.back
    progress_line(rater, where)
    item = where.item
    if item is None:
        st.success("Your queue is done. Thank you!" if where.total else "Your queue is empty.")
        return
    shown = ss.get("shown")
    if shown is None or shown["item"].key != item.key:  # a new showing: one submission id
        shown = {"item": item, "sid": store.new_submission_id(), "shown_at": time.time()}
    shown["item"] = item  # the same showing, with fresh numbers (after a skip, say)
    cache = get_cache(INDEX, index_stamp(INDEX))
    unit = load(cache, rid, item)
    shown["checksum"] = unit.checksum if unit is not None else None
    ss["shown"] = shown
    header = panel_header(item, shown["sid"], unit, where)
    ss["last_header"] = header
    show_panel(header, voxels_to_send(cache, rid, unit, where, shown["sid"], header))


def load(cache: viewer.UnitCache, rater_id: str, item: flow.Item | None) -> viewer.Unit | None:
    if item is None:
        return None
    try:
        return cache.get(item.image_id)
    except viewer.ViewerError as exc:  # the reason goes to the server log: it names files
        LOG.warning("rater %s, unit %s: %s", rater_id, item.image_id, exc)
        return None


def voxels_to_send(
    cache: viewer.UnitCache,
    rater_id: str,
    unit: viewer.Unit | None,
    where: flow.Place,
    sid: str,
    header: dict,
) -> list[viewer.Unit]:
    """The units whose voxels go with this showing: the current one unless the
    browser already holds it; once the browser has painted it (a "ready" from
    the panel), the next one, so that Save only sends a header."""
    sent: set[str] = ss.setdefault("sent", set())  # unit keys this browser page holds
    out = []
    if unit is not None and unit_key(unit) not in sent:
        out.append(unit)
    after = where.after
    loaded = after is not None and cache.loaded(after.image_id)
    nxt = load(cache, rater_id, after) if loaded else None  # None also if it cannot be read
    if after is not None and not (loaded and (nxt is None or unit_key(nxt) in sent)):
        if ss.pop("ready_for", None) != sid:
            header["ask_ready"] = "painted"
            cache.prefetch(after.image_id, delay=PREFETCH_DELAY)  # after this item's paint
        elif nxt is not None:  # painted, and the next unit is loaded: send it now
            out.append(nxt)
        else:
            cache.prefetch(after.image_id)  # (again, if the server cache dropped it)
            header["ask_ready"] = "later"  # still loading: ask again in a moment
    sent.update(unit_key(u) for u in out)
    if nxt is not None and not where.back and unit_key(nxt) in sent:
        header["next"] = showing(after, "", nxt, back=0, history=where.history + 1)
    return out


def outage_page(rater: store.Rater) -> None:
    """The database is unreachable: keep the item and the typed answers on screen
    (the same panel, same key: the browser keeps its form) and retry."""
    progress_line(rater, None)
    header = ss.get("last_header")
    status = ss.pop("status", None) or ("error", UNREACHABLE)
    if header is not None:
        show_panel(header, [], status)
    else:
        st.warning("The ratings database cannot be reached; this page retries by itself.")
    retry_outage()


def admin_page() -> None:
    from openmind_curate.quality import display

    engine = get_engine(DB)
    st.header("Progress per rater")
    st.dataframe(display.progress_table(flow.all_progress(engine)), hide_index=True)
    st.header("Agreement")
    all_versions = store.read_ratings(engine)
    if all_versions.empty:
        st.info("No ratings yet.")
        return
    try:
        from openmind_curate.quality.agreement import agreement

        gold = store.read_gold(engine)
        report = agreement(all_versions, None if gold.empty else gold)
    except Exception as exc:  # noqa: BLE001 - the page works without the statistics
        LOG.warning("agreement failed: %s", exc)
        st.error(f"Cannot compute agreement: {type(exc).__name__}. The server log has details.")
        return
    for warning in report.warnings:
        st.text(f"Warning: {warning}")
    for title, table in display.agreement_tables(report).items():
        st.subheader(title)
        st.dataframe(table, hide_index=True)
    st.caption("How to read kappa, alpha and ICC: see the ratings guide in the documentation.")


STYLE = """<style>
[data-testid="stMainBlockContainer"] {padding: 2.4rem 1.2rem 0.5rem 1.2rem; max-width: 100%;}
[data-testid="stHeader"] {height: 2.2rem;}
</style>"""


def top_bar(rater: store.Rater) -> str:
    """One row: who is signed in, the lead's page switch, sign out."""
    left, mid, right = st.columns([6, 2, 1], vertical_alignment="center")
    left.caption(f"Signed in as {rater.rater_id}" + (" (lead)" if rater.is_admin else ""))
    with right:
        st.button("Sign out", on_click=on_sign_out)
    page = "Rate"
    if rater.is_admin:
        with mid:
            page = st.segmented_control(
                "Page", ["Admin", "Rate"], key="page", label_visibility="collapsed"
            )
            page = page or "Admin"
    return page


def main() -> None:
    st.set_page_config(
        page_title="Image quality rating", layout="wide", initial_sidebar_state="collapsed"
    )
    st.markdown(STYLE, unsafe_allow_html=True)
    if not INDEX or not DB:
        st.error("Start the app with `curate rate --index INDEX --db DB`.")
        st.stop()
    try:
        engine = get_engine(DB)
        index_stamp(INDEX)
    except (RatingsError, OSError) as exc:
        st.error(f"Cannot start: {exc}")
        st.stop()
    if "rater" not in ss and not restore_session():
        sign_in_page()
        st.stop()
    rater: store.Rater = ss["rater"]
    if revoked(engine, rater):
        on_sign_out()
        ss["sign_in_error"] = "Your token was revoked; sign in with a new one."
        sign_in_page()
        st.stop()
    if top_bar(rater) == "Admin":
        try:
            admin_page()
        except Exception as exc:
            if not flow.is_unreachable(exc):
                raise
            st.warning("The ratings database cannot be reached; reload the page in a moment.")
    else:
        rate_page(rater)


def revoked(engine, rater: store.Rater) -> bool:
    """Whether the rater was revoked since signing in (during an outage: not known, so no)."""
    try:
        raters = store.list_raters(engine)
    except Exception as exc:
        if flow.is_unreachable(exc):
            return False
        raise
    mine = raters[raters["rater_id"] == rater.rater_id]
    return bool(mine.empty or pd.notna(mine["revoked_at"].iloc[0]))


def run() -> None:
    """main(), with no traceback ever reaching the browser: the server log has it."""
    st.set_option("client.showErrorDetails", "none")
    st.set_option("client.toolbarMode", "minimal")  # no "Deploy" button for raters
    try:
        main()
    except Exception:
        LOG.exception("rater app error")
        st.error("Something went wrong on the server (it is in the server's log). Reload the page.")


run()
