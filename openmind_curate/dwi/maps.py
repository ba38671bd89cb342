"""The output maps: T2w (mean b0), FA and MD from a WLS tensor fit.

Only shells with b <= 1500 s/mm^2 enter the fit: the tensor model holds for
low b-values and higher shells bias MD downwards. Outputs are finite by
construction: FA is clipped to [0, 1], MD to >= 0 (mm^2/s, since b-values are
in s/mm^2), and everything outside the mask is 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel

from openmind_curate.dwi.gradients import shells

MAX_B = 1500.0


@dataclass(frozen=True)
class MapsReport:
    shells_used: list[float]
    shells_ignored: list[float]
    n_volumes_fit: int
    fa_median_in_mask: float


def tensor_maps(
    data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray, b0: np.ndarray
) -> tuple[np.ndarray, np.ndarray, MapsReport]:
    use = b0 | (bvals <= MAX_B)
    if not (use & ~b0).any():
        raise ValueError(f"no shell with b <= {MAX_B:g} s/mm^2 to fit a tensor")
    gtab = gradient_table(bvals[use], bvecs=bvecs[use], b0_threshold=50)
    fit = TensorModel(gtab, fit_method="WLS").fit(data[..., use], mask=mask)
    fa = np.clip(np.nan_to_num(fit.fa, nan=0.0, posinf=0.0, neginf=0.0), 0, 1)
    md = np.clip(np.nan_to_num(fit.md, nan=0.0, posinf=0.0, neginf=0.0), 0, None)
    fa[~mask], md[~mask] = 0, 0
    found = shells(bvals, b0)
    report = MapsReport(
        [s for s in found if s <= MAX_B],
        [s for s in found if s > MAX_B],
        int(use.sum()),
        float(np.median(fa[mask])) if mask.any() else 0.0,
    )
    return fa.astype(np.float32), md.astype(np.float32), report
