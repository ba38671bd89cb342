"""Masks on real heads changed by real tools: the table in docs/benchmarks.md.

The heads are pydeface's average real head, warped, rescaled and resampled
onto two scanner-like grids with Rician noise, then left intact, defaced with
pydeface's face mask, cut by quickshear, face-blurred or skull-stripped
(`tests/realheads.py`, which also defines the truths). One average head, two
warps: a check that the detector works on real anatomy, not a survey of heads.

Columns: anonymization Dice against the removed head voxels; anatomy Dice;
flagged = anonymization voxels / head voxels; inside = the removed voxels
that the anatomy mask holds (a blurred face carries signal, so it stays in
the anatomy by the masks contract); seconds for `compute_masks`.

    python benchmarks/masks_real_heads.py
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
from realheads import WARPS, real_heads  # noqa: E402

from openmind_curate.masks.compute import compute_masks  # noqa: E402


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def main() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="quickshear")
    print("| case | kind found | anonymization Dice | anatomy Dice | flagged | inside | s |")
    print("|---|---|---|---|---|---|---|")
    for warp in WARPS:
        for case in real_heads(warp):
            start = time.perf_counter()
            masks = compute_masks(case.data, case.affine)
            seconds = time.perf_counter() - start
            removed = case.removed
            anon = f"{dice(masks.anonymization, removed):.3f}" if removed.any() else "-"
            inside = (
                f"{np.count_nonzero(masks.anatomy & removed) / np.count_nonzero(removed):.3f}"
                if removed.any()
                else "-"
            )
            flagged = 100 * np.count_nonzero(masks.anonymization) / np.count_nonzero(case.head)
            print(
                f"| {case.name} | {masks.anonymization_kind} | {anon} | "
                f"{dice(masks.anatomy, case.anatomy):.3f} | {flagged:.2f}% | {inside} | "
                f"{seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
