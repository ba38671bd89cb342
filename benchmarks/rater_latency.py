"""Rater app latency: from pressing save to the next item's three views being ready.

Target: median <= 300 ms for a 256x256x176 volume.

Setup: a few 256x256x176 int16 .nii.gz heads (a smooth ellipsoid with noise)
in a temporary folder, an index of `--items` units over them (units cycle
over the files, each its own image_id), a SQLite store with two raters who
both have every unit in their queue.

Ours, per item: `save_rating` of the item shown + `rating_flow.current_item` +
`UnitCache.get` of the next unit (loaded and encoded for the browser in the
background while the rater was scoring) + the header the app sends (the browser
draws the views itself: benchmarks/rater_browser.py measures that part, in
Chromium); then the prefetch of the item after it and `--think` seconds of
"rater scoring" (not timed). Peer: the same save and queue read, then the next
item's NIfTI re-read from disk with nibabel (``get_fdata``), its 1-99 % window
(the same subsampled percentiles as ours), three slices and their PNGs: no
cache, no prefetch (what a simple viewer does per click). Both in one process,
files in the page cache (decompression, not the disk, is what a re-read costs).
Also printed: the background load of one unit (it must fit in a rater's time
per item) and a slider redraw from the cached array.

    python benchmarks/rater_latency.py [--items 16] [--files 4] [--think 1.5]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from PIL import Image  # noqa: E402

from openmind_curate import index as index_store  # noqa: E402
from openmind_curate.quality import rating_flow as flow  # noqa: E402
from openmind_curate.quality import ratings as store  # noqa: E402
from openmind_curate.quality import viewer  # noqa: E402
from openmind_curate.schema import IMAGE_INDEX  # noqa: E402

SHAPE = (256, 256, 176)


def make_head(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    c = np.array(SHAPE) / 2
    r = ((x - c[0]) / 90) ** 2 + ((y - c[1]) / 110) ** 2 + ((z - c[2]) / 75) ** 2
    head = np.where(r < 1, 800 - 300 * r, 0).astype(np.float32)
    head += rng.normal(0, 20, SHAPE).astype(np.float32) * (head > 0)
    head += np.abs(rng.normal(0, 8, SHAPE)).astype(np.float32)  # background noise, as in MRI
    return np.clip(head, 0, 32767).astype(np.int16)


def build(folder: Path, n_files: int, n_items: int) -> tuple[Path, Path]:
    root = folder / "ds"
    (root / "anat").mkdir(parents=True)
    paths = []
    for i in range(n_files):
        rel = f"anat/sub-{i:02d}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(make_head(i), np.diag([1.0, 1.0, 1.0, 1.0])), root / rel)
        paths.append(rel)
    rows = []
    for i in range(n_items):
        rel = paths[i % n_files]
        row = {f.name: None for f in IMAGE_INDEX}
        row.update(
            image_id=f"unit-{i:03d}",
            dataset_id="bench",
            suffix="T1w",
            extension=".nii.gz",
            modality="T1w",
            is_derivative=False,
            root=str(root),
            path=rel,
            size_bytes=(root / rel).stat().st_size,
            header_status="ok",
        )
        rows.append(row)
    index_path = folder / "images.parquet"
    index_store.update(index_path, lambda _c: pa.Table.from_pylist(rows, schema=IMAGE_INDEX))
    db = folder / "ratings.sqlite"
    engine = store.connect(db)
    plan = []
    for rater in ("ours", "peer"):
        store.add_rater(engine, rater)
        plan += [
            dict(
                rater_id=rater,
                image_id=f"unit-{i:03d}",
                kind="regular",
                position=i,
                dataset_id="bench",
                group_name="T1w",
            )
            for i in range(n_items)
        ]
    store.add_assignments(engine, pd.DataFrame(plan), plan="bench")
    engine.dispose()
    return index_path, db


def rating(item: flow.Item, rater: str, checksum: str | None) -> dict:
    return flow.make_rating(
        item,
        {"noisiness": 2, "blurriness": 2, "artifact_level": 1},
        rater_id=rater,
        submission_id=store.new_submission_id(),
        image_checksum=checksum,
        seconds_spent=3.0,
        window_settings={"preset": viewer.DEFAULT_PRESET},
    )


def png(images) -> None:
    """Encode as a server-rendered viewer sends them (st.image, lossless PNG)."""
    for img in images:
        Image.fromarray(img).save(io.BytesIO(), format="PNG")


def run_ours(engine, index_df: pd.DataFrame, think: float) -> list[float]:
    cache = viewer.UnitCache(index_df, maxsize=4)
    item = flow.current_item(engine, "ours")
    unit = cache.get(item.image_id)  # the first item: shown before the clock starts
    cache.prefetch(flow.next_after(engine, "ours", item).image_id)
    times = []
    while item is not None:
        time.sleep(think)  # the rater scores; the next unit loads meanwhile
        t0 = time.perf_counter()
        store.save_rating(engine, rating(item, "ours", unit.checksum))
        item = flow.current_item(engine, "ours")
        if item is None:
            break
        unit = cache.get(item.image_id)
        # what the app sends on Save: a header (the voxels reached the browser earlier)
        viewer.pack_payload({"unit": {"key": unit.unit_id, "volumes": unit.encoded[0]}})
        times.append(time.perf_counter() - t0)
        after = flow.next_after(engine, "ours", item)
        cache.prefetch(after.image_id if after else None)
    cache.close()
    return times


def run_peer(engine, index_df: pd.DataFrame) -> list[float]:
    paths = {r.image_id: Path(r.root) / r.path for r in index_df.itertuples()}
    item = flow.current_item(engine, "peer")
    times = []
    while item is not None:
        t0 = time.perf_counter()
        store.save_rating(engine, rating(item, "peer", None))
        item = flow.current_item(engine, "peer")
        if item is None:
            break
        data = nib.load(str(paths[item.image_id])).get_fdata(dtype=np.float32)
        # the same subsampled percentiles as ours: only the re-read differs
        level, width = viewer.window(viewer._percentiles(data), viewer.DEFAULT_PRESET)
        i, j, k = (n // 2 for n in data.shape)
        planes = (data[i].T[::-1], data[:, j].T[::-1], data[:, :, k].T[::-1])
        png([viewer.to_uint8(p, level, width) for p in planes])
        times.append(time.perf_counter() - t0)
    return times


def load_and_redraw_ms(index_df: pd.DataFrame, unit_id: str, reps: int = 200):
    t0 = time.perf_counter()
    vol = viewer.load_unit(index_df, unit_id).volumes[0]
    load = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    for n in range(reps):
        level, width = viewer.window(vol, viewer.DEFAULT_PRESET)
        viewer.slices(vol, (n % vol.shape[0], 128, 88), level, width)
    return load, (time.perf_counter() - t0) / reps * 1000


def stats(times: list[float]) -> tuple[float, float]:
    ms = np.array(times) * 1000
    return float(np.median(ms)), float(np.percentile(ms, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=16, help="units rated per run (default 16)")
    ap.add_argument("--files", type=int, default=4, help="distinct volumes (default 4)")
    ap.add_argument(
        "--think",
        type=float,
        default=1.5,
        help="seconds a rater scores an item, untimed (default 1.5)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index_path, db = build(Path(tmp), args.files, args.items)
        print(
            f"{args.files} volumes {SHAPE} int16 .nii.gz, {args.items} items per rater "
            f"(setup {time.perf_counter() - t0:.1f} s)"
        )
        index_df = index_store.read_frame(index_path)
        engine = store.connect(db)
        ours = run_ours(engine, index_df, args.think)
        peer = run_peer(engine, index_df)
        load, redraw = load_and_redraw_ms(index_df, "unit-000")
        engine.dispose()
    (om, op), (pm, pp) = stats(ours), stats(peer)
    print(f"save -> next item's three views ready, {len(ours)} items each:")
    print(f"  ours (cache + prefetch): median {om:7.1f} ms   p95 {op:7.1f} ms")
    print(f"  peer (nibabel re-read):  median {pm:7.1f} ms   p95 {pp:7.1f} ms")
    print(f"  peer / ours (median): {pm / om:.1f}x")
    print(f"one unit's background load (read, reorient, percentiles, encode): {load:.0f} ms")
    print(f"slider or preset redraw (window + three slices, cached array): {redraw:.2f} ms")
    print(f"target median <= 300 ms: {'met' if om <= 300 else 'NOT met'}")


if __name__ == "__main__":
    main()
