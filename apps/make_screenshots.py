"""Screenshots of the rater app for the docs (docs/img/rater-*.png).

A one-image site (nilearn's MNI152 T1 template, 1 mm, a real head), the app
started as `curate rate` starts it, and Chromium at 1280x800 and 1920x1080,
plus the mosaic view at 1920x1080. Run from a checkout:

    python apps/make_screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from openmind_curate import index as index_store
from openmind_curate.quality import ratings as store
from openmind_curate.schema import IMAGE_INDEX, rows_to_table

REPO = Path(__file__).resolve().parents[1]


def build(folder: Path) -> tuple[Path, Path, str]:
    from nilearn.datasets import load_mni152_template

    rel = "sub-mni/anat/sub-mni_T1w.nii.gz"
    path = folder / "ds" / rel
    path.parent.mkdir(parents=True)
    img = load_mni152_template(resolution=1)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine), path)
    row = dict(
        image_id="mni152",
        dataset_id="demo",
        suffix="T1w",
        extension=".nii.gz",
        modality="T1w",
        is_derivative=False,
        root=str(folder / "ds"),
        path=rel,
        size_bytes=path.stat().st_size,
        header_status="ok",
    )
    index = folder / "images.parquet"
    index_store.update(index, lambda _c: rows_to_table([row], IMAGE_INDEX))
    db = folder / "ratings.sqlite"
    engine = store.connect(db)
    token = store.add_rater(engine, "rater")
    plan = dict(rater_id="rater", image_id="mni152", kind="regular", position=0)
    plan.update(dataset_id="demo", group_name="T1w")
    store.add_assignments(engine, pd.DataFrame([plan]), plan="screenshots")
    return index, db, token


def main() -> None:
    from playwright.sync_api import expect, sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        index, db, token = build(Path(tmp))
        env = {**os.environ, "OPENMIND_RATER_INDEX": str(index), "OPENMIND_RATER_DB": str(db)}
        cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "apps" / "rater.py")]
        cmd += ["--server.headless", "true", "--server.port", "8597"]
        cmd += ["--browser.gatherUsageStats", "false"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            for _ in range(150):
                try:
                    urllib.request.urlopen("http://127.0.0.1:8597/_stcore/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.3)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium")
                for width, height in ((1280, 800), (1920, 1080)):
                    page = browser.new_page(viewport={"width": width, "height": height})
                    page.goto("http://127.0.0.1:8597")
                    page.get_by_label("Rater token").fill(token)
                    page.get_by_role("button", name="Sign in").click()
                    expect(page.locator("canvas.omc-view").first).to_be_visible()
                    page.get_by_label("Noisiness 2", exact=True).check(force=True)
                    time.sleep(1.0)
                    page.screenshot(path=str(args.out / f"rater-{width}x{height}.png"))
                    if width == 1920:
                        page.get_by_label("Mosaic").check()
                        time.sleep(0.5)
                        page.screenshot(path=str(args.out / "rater-mosaic-1920x1080.png"))
                    page.close()
                browser.close()
        finally:
            proc.terminate()
            proc.wait(20)
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
