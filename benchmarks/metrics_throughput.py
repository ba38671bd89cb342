"""Masks + metrics throughput on 1 mm 256x256x176 heads, one core, beside a peer.

Target: >= 2 images/s per core (114k images in < 4 h on 8 cores).

Each image is a T1w rendering of the generated head model at 1 mm, posed at
random, with Rician noise, a bias field, and pydeface-style defacing on
every other image, written as int16 .nii.gz. Ours: read + both masks +
metrics (what `curate masks` and `curate metrics` do per image, without the
mask writes). Peer: dipy's `median_otsu` brain/foreground mask (the usual
quick mask in Python pipelines), read + mask only. Both run in this process
with one BLAS thread. Also printed: anatomy Dice against the true head.

    python benchmarks/metrics_throughput.py [--images 6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from openmind_curate.masks.compute import compute_masks, reference_volume  # noqa: E402
from openmind_curate.nifti_io import load_nifti, save_nifti  # noqa: E402
from openmind_curate.quality.metrics import image_metrics  # noqa: E402
from openmind_curate.synth import degrade  # noqa: E402
from openmind_curate.synth.head import head_model  # noqa: E402
from openmind_curate.synth.render import Grid, render, resample, rotation, truth_masks  # noqa: E402

SHAPE = (176, 256, 256)  # sagittal x coronal x axial, as an MPRAGE


def make_images(folder: Path, n: int) -> list[tuple[Path, np.ndarray]]:
    model = head_model()
    clean = render(model, "T1w")
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        affine = np.eye(4)
        affine[:3, 3] = -(np.array(SHAPE) - 1) / 2 + np.array([0, 10, -20])
        s2m = np.eye(4)
        s2m[:3, :3] = rotation(tuple(rng.uniform(-5, 5, 3)))
        grid = Grid(SHAPE, affine)
        img = resample(clean, model.affine, grid, s2m) * 1000
        img = img * degrade.bias_field(SHAPE, 0.2, rng)
        img = degrade.rician(img, 15.0, rng)
        masks = truth_masks(model, grid, s2m)
        head = masks["head"]
        if i % 2:
            face = masks["face"] & head
            img[face] = 0
            head = head & ~face
        path = folder / f"sub-{i:02d}_T1w.nii.gz"
        save_nifti(np.clip(np.rint(img), 0, 32767).astype(np.int16), affine, path, "int16")
        out.append((path, head))
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def ours(path: Path) -> np.ndarray:
    data, affine = load_nifti(path)
    masks = compute_masks(data, affine)
    image_metrics(reference_volume(data), affine, masks.anatomy, working=masks.working)
    return masks.anatomy


def peer(path: Path) -> np.ndarray:
    from dipy.segment.mask import median_otsu

    data, _ = load_nifti(path)
    _, mask = median_otsu(data, median_radius=2, numpass=1)
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp), args.images)
        ours(images[0][0])  # warm: template cache, imports
        results = {}
        runs = (("ours (read+masks+metrics)", ours), ("dipy median_otsu (read+mask)", peer))
        for name, func in runs:
            start = time.perf_counter()
            scores = [dice(func(path), head) for path, head in images]
            seconds = time.perf_counter() - start
            results[name] = seconds
            rate = len(images) / seconds
            print(
                f"{name:30s} {seconds / len(images):5.2f} s/image  {rate:5.2f} images/s/core  "
                f"head Dice median {np.median(scores):.3f} (min {min(scores):.3f})"
            )
    ours_s, peer_s = results.values()
    rate = args.images / ours_s
    print(f"ratio (peer time / ours)       {peer_s / ours_s:.2f}x")
    print(
        f"target >= 2 images/s/core: {'met' if rate >= 2 else 'NOT met'} ({rate:.2f}); "
        f"114k images on 8 cores: {113921 / (rate * 8) / 3600:.1f} h"
    )


if __name__ == "__main__":
    main()
