"""Rater app latency as a rater feels it: measured in Chromium, not in the server.

Two figures, each per item over `--items` items, median and 95th percentile:

- Save to next: from the Save click to the next item's views painted (the
  page's own clock: the click and the paint are both timed inside the page).
  Ours shows the next item before the server's answer when its voxels are
  already in the browser; "save to confirmed" is when that answer arrived;
- slider step: from a slice slider moving one step to the view repainted.

Ours: `apps/rater.py`, whose viewer and form are drawn in the browser
(`apps/rater_panel.js`). Peer: `benchmarks/rater_peer_app.py`, the same store,
cache and prefetch drawn with Streamlit's stock widgets (a form of radio
buttons, three `st.image` views re-rendered by the server on every slider
step), the design this app had before. Both run side by side in one run, on
the same volumes, on SQLite and (when a PostgreSQL server can be started
here, or `--postgres URL` is given) on PostgreSQL, with one browser, one
server at a time and nothing else running.

Volumes: `--files` generated 256x256x176 int16 heads (benchmarks/rater_latency.py's
`make_head`), cycled over `--items` units.

    python benchmarks/rater_browser.py [--items 20] [--files 4] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from openmind_curate.quality import ratings as store  # noqa: E402

PEER_APP = HERE / "rater_peer_app.py"
THINK = 3.0  # seconds a rater looks at an item before saving (raters take 5-30 s), untimed
OUR_APP = REPO / "apps" / "rater.py"

# In-page helpers: the panel lives in a shadow root; time is the page's clock.
FIND_PANEL = """() => {
  const walk = (r) => { for (const e of r.querySelectorAll('*')) {
      if (e.shadowRoot && e.shadowRoot.querySelector('.omc-panel')) return e.shadowRoot;
      if (e.shadowRoot) { const f = walk(e.shadowRoot); if (f) return f; } } return null; };
  return walk(document); }"""
OURS_SAVE = (
    "() => { const r = (" + FIND_PANEL + ")();"
    " for (const a of ['noisiness', 'blurriness', 'artifact_level']) {"
    "   const i = r.querySelector(`input[name=${a}][value='2']`); if (i) i.checked = true; }"
    " const before = window.__omcPainted.label;"
    " const t0 = performance.timeOrigin + performance.now();"
    " r.querySelector('button.omc-primary').click(); return [before, t0]; }"
)
OURS_SLIDER = (
    "() => { const r = (" + FIND_PANEL + ")();"
    " const s = r.querySelectorAll('.omc-caption input[type=range]')[2];"
    " const n = window.__omcPainted.n; const t0 = performance.timeOrigin + performance.now();"
    " s.value = String(Number(s.value) + (Number(s.value) < Number(s.max) ? 1 : -1));"
    " s.dispatchEvent(new Event('input')); return [n, t0]; }"
)
# The peer: done when the heading names the item and view `which` shows a new, loaded
# image (a slider step changes one view; the next item changes all three).
PEER_WATCH = """([want, srcs, which]) => new Promise((ok, fail) => {
  const start = performance.now();
  const check = () => {
    const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
    const img = imgs[which];
    const heading = document.body.innerText.includes(want);
    const fresh = img && img.complete && img.naturalWidth > 0 && img.src !== srcs[which];
    if (heading && fresh) ok(performance.timeOrigin + performance.now());
    else if (performance.now() - start > 30000) fail(new Error("the peer did not repaint"));
    else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
})"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(folder: Path, n_files: int, n_items: int, db: str) -> Path:
    """The volumes, the index, and a store where 'ours' and 'peer' both have every unit."""
    from rater_latency import build as build_sqlite

    index, sqlite_db = build_sqlite(folder, n_files, n_items)
    if db != str(sqlite_db):  # the same raters and queues on PostgreSQL
        src, dst = store.connect(sqlite_db), store.connect(db)
        for table in ("raters", "assignments"):
            frame = pd.read_sql_table(table, src)
            frame.to_sql(table, dst, if_exists="append", index=False)
        src.dispose()
        dst.dispose()
    return index


def tokens(db: str) -> dict[str, str]:
    """Fresh tokens for the two raters (build() made them and threw the tokens away)."""
    engine = store.connect(db)
    out = {}
    for name in ("ours", "peer"):
        store.revoke_rater(engine, name)
        out[name] = store.add_rater(engine, name)
    engine.dispose()
    return out


class App:
    """One `streamlit run` of an app on a free port, stopped on exit."""

    def __init__(self, script: Path, index: Path, db: str, folder: Path):
        self.port = free_port()
        env = {
            **os.environ,
            "OPENMIND_RATER_INDEX": str(index),
            "OPENMIND_RATER_DB": db,
            "PYTHONPATH": str(REPO),
        }
        cmd = [sys.executable, "-m", "streamlit", "run", str(script)]
        cmd += ["--server.headless", "true", "--server.port", str(self.port)]
        cmd += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
        self.log = open(folder / f"{script.stem}.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{script.name} did not start; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def sign_in(page, url: str, token: str) -> None:
    page.goto(url)
    page.get_by_label("Rater token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def run_ours(page, url: str, token: str, items: int) -> tuple[list[float], list[float]]:
    sign_in(page, url, token)
    page.wait_for_function("() => window.__omcPainted && window.__omcPainted.sid")
    saves, steps, sizes, confirmed = [], [], [], []
    for _ in range(items - 1):
        for _ in range(3):  # three slider steps per item
            n, t0 = page.evaluate(OURS_SLIDER)
            page.wait_for_function(f"() => window.__omcPainted.n > {n}")
            steps.append(page.evaluate("() => window.__omcPainted.t") - t0)
        time.sleep(THINK)  # the rater scores; the next unit reaches the browser meanwhile
        before, t0 = page.evaluate(OURS_SAVE)
        page.wait_for_function(f"() => window.__omcPainted.label !== {before!r}", timeout=30_000)
        painted = page.evaluate("() => window.__omcPainted")
        saves.append(painted["t"] - t0)
        sizes.append(painted["bytes"])
        if painted["bytes"] == 0:  # shown before the server answered: when did it confirm?
            label = painted["label"]
            done = f"() => window.__omcConfirmed && window.__omcConfirmed.label === {label!r}"
            page.wait_for_function(done)
            confirmed.append(page.evaluate("() => window.__omcConfirmed.t") - t0)
    print(f"  ours: the message Save brought, median {np.median(sizes) / 1e3:.1f} kB")
    if confirmed:
        print("  " + summary("ours: save to confirmed", confirmed).strip())
    return saves, steps


def run_peer(page, url: str, token: str, items: int) -> tuple[list[float], list[float]]:
    sign_in(page, url, token)
    page.get_by_text("Item 1 of").wait_for()
    saves, steps = [], []
    for n in range(1, items):
        page.locator('[data-testid="stImage"] img').nth(2).wait_for()
        for _ in range(3):
            srcs = page.eval_on_selector_all(
                '[data-testid="stImage"] img', "els => els.map((e) => e.src)"
            )
            slider = page.get_by_role("slider", name="Axial slice")
            slider.focus()
            t0 = page.evaluate("() => performance.timeOrigin + performance.now()")
            page.keyboard.press("ArrowRight")
            steps.append(page.evaluate(PEER_WATCH, [f"Item {n} of", srcs, 2]) - t0)
        for axis in ("Noisiness", "Blurriness", "Artifact level"):
            page.get_by_role("radiogroup", name=axis).get_by_text("2", exact=True).click()
        time.sleep(THINK)
        srcs = page.eval_on_selector_all(
            '[data-testid="stImage"] img', "els => els.map((e) => e.src)"
        )
        button = page.get_by_role("button", name="Save and next")
        t0 = page.evaluate("() => performance.timeOrigin + performance.now()")
        button.click()
        saves.append(page.evaluate(PEER_WATCH, [f"Item {n + 1} of", srcs, 0]) - t0)
    return saves, steps


def summary(name: str, ms: list[float]) -> str:
    a = np.array(ms)
    med, p95 = np.median(a), np.percentile(a, 95)
    return f"{name:<26} median {med:7.1f} ms  p95 {p95:7.1f} ms  (n={a.size})"


def measure(backend: str, db: str, index: Path, folder: Path, items: int, chromium) -> dict:
    tok = tokens(db)
    results = {}
    for who, script, runner in (("ours", OUR_APP, run_ours), ("peer", PEER_APP, run_peer)):
        app = App(script, index, db, folder)
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            results[who] = runner(page, app.url, tok[who], items)
            page.close()
        finally:
            app.stop()
    print(f"\n{backend}: {items} items, 1400x1000 window")
    for who in ("ours", "peer"):
        saves, steps = results[who]
        print(summary(f"{who}: save to next", saves))
        print(summary(f"{who}: slider step", steps))
        print(f"  {who} save to next, each item (ms):", " ".join(f"{t:.0f}" for t in saves))
    ratio = np.median(results["peer"][0]) / np.median(results["ours"][0])
    step_ratio = np.median(results["peer"][1]) / np.median(results["ours"][1])
    print(f"peer/ours (median): save to next {ratio:.1f}x, slider step {step_ratio:.1f}x")
    return results


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=20, help="items rated per app (default 20)")
    ap.add_argument("--files", type=int, default=4, help="distinct volumes (default 4)")
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    ap.add_argument("--postgres", help="a PostgreSQL server URL (default: start one here)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        folder = Path(tmp)
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            if args.backend in ("sqlite", "both"):
                where = folder / "sqlite"
                where.mkdir()
                index = build(where, args.files, args.items, str(where / "ratings.sqlite"))
                measure("SQLite", str(where / "ratings.sqlite"), index, where, args.items, browser)
            if args.backend in ("postgres", "both"):
                postgres(args, folder, browser)
        finally:
            browser.close()


def postgres(args, folder: Path, browser) -> None:
    from pgserver import ThrowawayPostgres, create_database

    where = folder / "postgres"
    where.mkdir()
    server = None
    try:
        if args.postgres:
            base = args.postgres
        else:
            server = ThrowawayPostgres()
            base = server.start()
        db = create_database(base, f"bench_{os.getpid()}")
        index = build(where, args.files, args.items, db)
        measure("PostgreSQL", db, index, where, args.items, browser)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
