"""The rater app in a real browser: `streamlit run` as a user starts it, driven by
Chromium through Playwright: sign in, score one image, save, and check the store."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from openmind_curate.quality import ratings as store

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, chromium):
    from test_rater_app import build_site

    folder = tmp_path_factory.mktemp("rater-browser")
    site = build_site(folder)
    port = _free_port()
    env = {
        **os.environ,
        "OPENMIND_RATER_INDEX": str(site["index"]),
        "OPENMIND_RATER_DB": str(site["db"]),
        "OPENMIND_RATER_SHOW_DATASETS": "0",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO / "apps" / "rater.py"),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
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
        yield {**site, "url": url}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_sign_in_rate_and_save_in_chromium(server, tmp_path, chromium):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(**chromium)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.set_default_timeout(30_000)
            page.goto(server["url"])
            page.get_by_label("Rater token").fill(server["tokens"]["alice"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text("Item 1 of 3")).to_be_visible()
            expect(page.get_by_text("ds-secret-name")).to_have_count(0)
            expect(page.locator("img[src*='.png']")).to_have_count(3)
            # the viewer: a preset and a slice change redraw the views (a fragment rerun)
            first_src = page.locator("img[src*='.png']").first.get_attribute("src")
            page.get_by_text("Narrow (5-95%)").click()
            axial = page.get_by_role("slider", name="Axial slice")
            axial.focus()
            page.keyboard.press("ArrowLeft")
            expect(axial).to_have_value("7")
            expect(page.locator("img[src*='.png']").first).not_to_have_attribute("src", first_src)
            for axis, value in (("Noisiness", "2"), ("Blurriness", "3"), ("Artifact level", "4")):
                group = page.get_by_role("radiogroup", name=axis)
                group.get_by_text(value, exact=True).click()
            page.get_by_text("Field of view suboptimal").click()  # the label: the box is hidden
            page.get_by_label("Comment (optional)").fill("slight wrap-around")
            # a double click: whichever form the second click reaches, one rating is stored
            page.get_by_role("button", name="Save and next").dblclick()
            expect(page.get_by_text("Item 2 of 3")).to_be_visible()  # the DWI unit: 3 maps
            expect(page.locator("img[src*='.png']")).to_have_count(9)
            expect(page.get_by_role("button", name="Save and next")).to_be_visible()
            expect(page.get_by_role("radiogroup", name="Artifact level")).to_have_count(0)
            page.screenshot(path=str(tmp_path / "rater.png"), full_page=True)
        finally:
            browser.close()
    saved = store.read_ratings(store.connect(server["db"]), rater_id="alice")
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
    assert settings["preset"] == "Narrow (5-95%)" and settings["slices"] == [10, 12, 7]
    assert (tmp_path / "rater.png").stat().st_size > 0
