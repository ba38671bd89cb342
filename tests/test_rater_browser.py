"""The rater app in a real browser: `streamlit run` as a user starts it, driven by
Chromium through Playwright, on a PostgreSQL server of this module's own.

One app and one browser for the module. The first test rates as a rater would
at 1280x800 (the smallest screen the layout is made for); the second stops the
database mid-session, saves, restarts it and checks the typed rating was
saved once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from openmind_curate.quality import ratings as store

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SHAPE, SPACING = (20, 24, 16), 2.0  # the site's volumes (test_rater_app.build_site)

# the mean of four corner boxes of a view's image area, from the canvas pixels
CORNERS = """(canvas, [w, h]) => {
  const ctx = canvas.getContext('2d');
  const side = canvas.width, k = Math.min(side / w, side / h);
  const dw = w * k, dh = h * k, dx = (side - dw) / 2, dy = (side - dh) / 2;
  const box = (fx, fy) => {
    const d = ctx.getImageData(dx + fx * dw + 1, dy + fy * dh + 1, dw * 0.1, dh * 0.1).data;
    let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i + 2]; return s / (d.length / 4);
  };
  return { tl: box(0, 0), tr: box(0.9, 0), bl: box(0, 0.9), br: box(0.9, 0.9) };
}"""


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """A PostgreSQL server for this module alone (the outage test stops it)."""
    from pgserver import NoPostgres, ThrowawayPostgres, create_database

    try:
        server = ThrowawayPostgres()
    except NoPostgres as exc:
        pytest.skip(str(exc))
    try:
        url = create_database(server.start(), "rater_browser")
        yield server, url
    finally:
        server.remove()


@pytest.fixture(scope="module")
def app(tmp_path_factory, database):
    from pgserver import free_port
    from test_rater_app import build_site

    folder = tmp_path_factory.mktemp("rater-browser")
    site = build_site(folder, db=database[1])
    port = free_port()
    env = {
        **os.environ,
        "OPENMIND_RATER_INDEX": str(site["index"]),
        "OPENMIND_RATER_DB": database[1],
        "OPENMIND_RATER_SHOW_DATASETS": "0",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "apps" / "rater.py")]
    cmd += ["--server.headless", "true", "--server.port", str(port)]
    cmd += ["--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    cmd += ["--server.fileWatcherType", "none"]
    log = open(folder / "streamlit.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("streamlit did not start:\n" + (folder / "streamlit.log").read_text())
            time.sleep(0.3)
        yield {**site, "url": url, "db": database[1], "server": database[0], "log": folder}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(**chromium)
        yield b
        b.close()


def _page(browser, app, token: str, size=(1280, 800)):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.set_default_timeout(30_000)
    page.goto(app["url"])
    page.get_by_label("Rater token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("canvas.omc-view").first).to_be_visible()
    return page


def _choose(page, answers: dict[str, int]) -> None:
    for axis, value in answers.items():
        page.get_by_label(f"{axis} {value}", exact=True).check(force=True)


def test_rate_in_chromium_at_1280x800(app, browser, tmp_path):
    from playwright.sync_api import expect

    page = _page(browser, app, app["tokens"]["alice"])
    expect(page.get_by_text("Item 1 of 3")).to_be_visible()
    expect(page.get_by_text("ds-secret-name")).to_have_count(0)
    assert page.locator("img[src*='/media/']").count() == 0  # nothing through /media
    views = page.locator("canvas.omc-view")
    expect(views).to_have_count(3)
    # orientation, a known answer: the site's bars light each view's top-left corner only
    page.get_by_label("Crosshair").uncheck()
    dims = [(SHAPE[1], SHAPE[2]), (SHAPE[0], SHAPE[2]), (SHAPE[0], SHAPE[1])]  # sag, cor, ax
    for n, (w, h) in enumerate(dims):
        c = views.nth(n).evaluate(CORNERS, [w, h])
        assert c["tl"] > 200 and max(c["tr"], c["bl"], c["br"]) < 120, (n, c)
    # the views fill the width, with square boxes, and Save is on screen
    boxes = [views.nth(n).bounding_box() for n in range(3)]
    assert all(abs(b["width"] - b["height"]) < 1 and b["width"] >= 250 for b in boxes)
    save = page.get_by_role("button", name="Save and next")
    assert save.bounding_box()["y"] + save.bounding_box()["height"] <= 800
    for axis in ("Noisiness", "Blurriness", "Artifact level"):  # each scale on one line
        ys = {
            round(page.get_by_label(f"{axis} {v}", exact=True).bounding_box()["y"])
            for v in range(1, 6)
        }
        assert len(ys) == 1, (axis, ys)
    expect(page.locator(".omc-legend dd")).to_have_count(5)  # every level described once

    # a save with nothing chosen names every missing axis, beside each field too
    top = page.evaluate("() => window.scrollY")
    save.click()
    expect(page.get_by_text("noisiness, blurriness, artifact level")).to_be_visible()
    expect(page.get_by_text("Choose a value 1–5")).to_have_count(3)
    assert page.evaluate("() => window.scrollY") == top  # the message did not move the page

    # the viewer works in the browser: a preset, a slider step, zoom
    page.get_by_role("button", name="High contrast").click()
    axial = page.get_by_role("slider", name="Axial slice")
    axial.focus()
    page.keyboard.press("ArrowLeft")
    expect(axial).to_have_value(str(SHAPE[2] // 2 - 1))
    page.get_by_label("Zoom").select_option("2")
    _choose(page, {"Noisiness": 2, "Blurriness": 3, "Artifact level": 4})
    page.get_by_text("Field of view suboptimal").click()
    page.get_by_label("Comment (optional)").fill("slight wrap-around")
    save.dblclick()  # a double click saves once
    expect(page.get_by_text("Item 2 of 3")).to_be_visible()  # the DWI unit: 3 maps x 3 views
    expect(views).to_have_count(9)
    expect(page.get_by_text("Saved: item 1.")).to_be_visible()
    expect(page.get_by_label("Artifact level 1", exact=True)).to_have_count(0)
    page.screenshot(path=str(tmp_path / "rater.png"))

    saved = store.read_ratings(store.connect(app["db"]), rater_id="alice")
    assert len(saved) == 1
    row = saved.iloc[0]
    assert (row["image_id"], row["noisiness"], row["blurriness"], row["artifact_level"]) == (
        "img-a",
        2,
        3,
        4,
    )
    assert row["fov_suboptimal"] and not row["corrupted"]
    assert row["comment"] == "slight wrap-around" and row["seconds_spent"] > 0
    settings = json.loads(row["window_settings"])
    assert settings["preset"] == "High contrast" and settings["zoom"] == 2
    assert settings["slices"] == [SHAPE[0] // 2, SHAPE[1] // 2, SHAPE[2] // 2 - 1]

    page.reload()  # F5 keeps the session: no new sign-in
    expect(page.get_by_text("Item 2 of 3")).to_be_visible()
    expect(page.get_by_label("Rater token")).to_have_count(0)
    page.close()


def test_a_database_outage_mid_session_loses_nothing(app, browser):
    """Alice's item (item 2 after the test above, item 1 alone) has a next one whose
    voxels are in the browser: Save shows it at once, the server's answer (cannot
    reach the database) brings the rated item back with what was typed."""
    from playwright.sync_api import expect

    page = _page(browser, app, app["tokens"]["alice"])
    label = page.locator(".omc-title").inner_text()
    number = int(label.split()[1])
    page.wait_for_function("() => window.__omcVoxels && window.__omcVoxels.size >= 2")
    _choose(page, {"Noisiness": 4, "Blurriness": 2})
    if number == 1:
        _choose(page, {"Artifact level": 1})
    page.get_by_label("Comment (optional)").fill("typed before the outage")
    before = len(store.read_ratings(store.connect(app["db"]), rater_id="alice"))
    app["server"].stop()
    try:
        page.get_by_role("button", name="Save and next").click()
        expect(page.get_by_text("cannot be reached")).to_be_visible(timeout=30_000)
        expect(page.locator(".omc-title")).to_have_text(label)  # the rated item is back
        text = page.locator("body").inner_text()
        for leak in ("Traceback", "psycopg", "OperationalError", "127.0.0.1", "Google"):
            assert leak not in text
        # the typed form is still there
        expect(page.get_by_label("Noisiness 4", exact=True)).to_be_checked()
        expect(page.get_by_label("Comment (optional)")).to_have_value("typed before the outage")
        time.sleep(4)  # a retry or two while the server is down
    finally:
        app["server"].start()
    expect(page.get_by_text(f"Item {number + 1} of 3")).to_be_visible(timeout=30_000)
    saved = store.read_ratings(store.connect(app["db"]), rater_id="alice")
    assert len(saved) == before + 1  # saved once, however many tries
    assert saved.iloc[-1]["comment"] == "typed before the outage"
    assert saved.iloc[-1]["noisiness"] == 4
    page.close()
