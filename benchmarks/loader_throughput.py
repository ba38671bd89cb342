"""Patch loader throughput: 160^3 patches per second per CPU core, from the
blosc2 store of `curate preprocess`, beside the naive loader.

Target: >= 1.5 patches/s per core with the CPU augmentation on.

Setup: `--volumes` synthetic heads of 200 x 220 x 180 voxels at 1 mm (smooth
random tissue inside an ellipsoid, Rician-like background noise, int16
.nii.gz as scanners write them, with anatomy masks), preprocessed into a store
(`train.preprocess`: 1 mm, LPS, nonzero crop, z-score).

Ours: `make_loader` with `--workers` processes (one per core), global batch 2
per step, anatomy-centred patches off, augmentation at spatial_prob 0.2 (the
default) and 1.0 (flips at 0.5 in both), and with no augmentation (reads
only). The first batch of every worker is not timed (process start).
Peer (the naive loader): nibabel loads the whole image and anatomy mask
.nii.gz for every patch (as a loader over the raw NIfTI files must),
z-scores the image over the mask and crops the same 160^3 patch location;
in this process (no worker, no inter-process copy), no augmentation.

    python benchmarks/loader_throughput.py [--volumes 4] [--steps 12] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from openmind_curate.jobs import JobOptions  # noqa: E402
from openmind_curate.nifti_io import save_nifti  # noqa: E402
from openmind_curate.schema import MANIFEST, rows_to_table  # noqa: E402
from openmind_curate.train import preprocess as P  # noqa: E402
from openmind_curate.train.loader import LoaderConfig, make_loader, split_cases  # noqa: E402
from openmind_curate.train.store import open_store  # noqa: E402

SHAPE = (180, 220, 200)  # NIfTI (i, j, k): stored (D, H, W) = (200, 220, 180) after LPS
PATCH = 160


def make_volume(path: Path, anat_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE, sparse=True)
    radii = np.array(SHAPE) * rng.uniform(0.38, 0.45, 3)
    centre = np.array(SHAPE) / 2 + rng.normal(0, 4, 3)
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
    head = r2 <= 1
    coarse = rng.standard_normal(tuple(s // 8 + 1 for s in SHAPE))
    tissue = ndimage.zoom(coarse, 8, order=1)[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    img = np.where(head, 600 + 150 * tissue, 0) + np.abs(rng.normal(0, 20, SHAPE))
    save_nifti(np.clip(img, 0, 32767).astype(np.int16), np.eye(4), path, "int16")
    save_nifti(head.astype(np.uint8), np.eye(4), anat_path, "uint8")


def build(folder: Path, n: int, workers: int):
    rows = []
    for i in range(n):
        img, anat = folder / f"sub-{i:02d}_T1w.nii.gz", folder / f"sub-{i:02d}_anat.nii.gz"
        make_volume(img, anat, i)
        rows.append(
            {
                "image_id": f"case{i:02d}",
                "dataset_id": "ds000001",
                "subject": f"{i:02d}",
                "suffix": "T1w",
                "extension": ".nii.gz",
                "modality": "T1w",
                "is_derivative": False,
                "root": str(folder),
                "path": img.name,
                "size_bytes": img.stat().st_size,
                "header_status": "ok",
                "group_n_rated": 0,
                "split": "train",
                "anat_mask_path": str(anat),
                "anon_mask_path": None,
            }
        )
    manifest = rows_to_table(rows, MANIFEST).to_pandas()
    start = time.perf_counter()
    res = P.preprocess(
        manifest, folder / "store", options=JobOptions(workers=workers, progress=False)
    )
    assert res.batch.ok and len(res.ok) == n, res.batch.summary()
    t = time.perf_counter() - start
    size = sum(f.stat().st_size for f in (folder / "store").rglob("*.b2nd") if "image" in f.name)
    raw = sum(f.stat().st_size for f in folder.glob("sub-*_T1w.nii.gz"))
    print(
        f"preprocessed {n} volumes in {t:.1f} s ({workers} workers); "
        f"image arrays {size / 2**20:.0f} MiB (float32) vs {raw / 2**20:.0f} MiB of int16 "
        f".nii.gz; stored shape {tuple(int(v) for v in res.ok.iloc[0]['shape'])}"
    )
    return open_store(folder / "store")


def ours(store, cfg: LoaderConfig, workers: int, steps: int) -> float:
    """Patches per second (all workers), first batch of each worker untimed."""
    it = make_loader(store, cfg, start_step=0, workers=workers, pin_memory=False)
    for _ in range(workers):
        next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(steps):
        batch = next(it)
        n += batch["image"].shape[0]
    rate = n / (time.perf_counter() - start)
    del it
    return rate


def naive(store, cfg: LoaderConfig, sources: dict[str, str], steps: int) -> float:
    """The same cases and patch locations, image and anatomy mask read with
    nibabel from their .nii.gz (the loader's batch holds the mask too)."""
    from openmind_curate.train.loader import _start

    cases = split_cases(store, cfg.split)
    start = time.perf_counter()
    n = 0
    for step in range(steps):
        for g in range(cfg.global_batch):
            rng = np.random.default_rng([cfg.seed, step, g])
            case = cases[int(rng.integers(len(cases)))]
            s = _start(rng, store, case, cfg)
            vol = np.asarray(nib.load(sources[case][0]).dataobj, dtype=np.float32)
            anat = np.asarray(nib.load(sources[case][1]).dataobj, dtype=np.uint8)
            nz = vol[anat > 0]
            vol = (vol - nz.mean()) / nz.std()
            out = np.zeros((PATCH,) * 3, np.float32)
            out_anat = np.zeros((PATCH,) * 3, np.uint8)
            src = tuple(
                slice(max(0, a), min(d, a + PATCH)) for a, d in zip(s, vol.shape, strict=True)
            )
            dst = tuple(slice(x.start - a, x.stop - a) for x, a in zip(src, s, strict=True))
            out[dst] = vol[src]
            out_anat[dst] = anat[src]
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volumes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed steps (2 patches each)")
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="loader processes, one per core [default: all cores]",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        store = build(Path(tmp), args.volumes, args.workers)
        cases = store.cases
        sources = {
            c: (src, src.replace("_T1w.", "_anat."))
            for c, src in zip(cases["case_id"], cases["source"], strict=True)
        }
        cfg = LoaderConfig(patch=PATCH, global_batch=2, seed=0)
        w = args.workers
        print(f"160^3 patches, {w} loader worker(s) = {w} core(s), {args.steps} steps of 2")
        rates = {}
        variants = {
            "no augmentation (reads only)": replace(cfg, spatial_prob=0.0, flip_prob=0.0),
            "augmentation, spatial_prob 0.2 (default)": cfg,
            "augmentation, spatial_prob 1.0": replace(cfg, spatial_prob=1.0),
        }
        for name, c in variants.items():
            rates[name] = ours(store, c, w, args.steps) / w
            print(f"  ours, blosc2 store, {name:42s} {rates[name]:6.2f} patches/s per core")
        peer = naive(store, cfg, sources, max(2, args.steps // 3))
        print(
            f"  peer, nibabel image+mask .nii.gz per patch, no augmentation "
            f"{peer:6.2f} patches/s per core"
        )
        default = rates["augmentation, spatial_prob 0.2 (default)"]
        reads = rates["no augmentation (reads only)"]
        print(
            f"ratio ours/peer: {reads / peer:.1f}x reading only, {default / peer:.1f}x with "
            f"the default augmentation (peer without)"
        )
        verdict = "MET" if default >= 1.5 else "NOT met"
        print(f"target >= 1.5 patches/s per core with CPU augmentation: {default:.2f} -> {verdict}")


if __name__ == "__main__":
    main()
