"""Brain mask on the bias-corrected mean b0.

dipy's `median_otsu` with a light median filter and one dilation, so that it
keeps the cortical ribbon (an aggressive setting eats cortex next to the
dark skull), followed by keeping the largest connected component and filling
holes (ventricles are bright on b0, but sinus drop-outs are not).
"""

from __future__ import annotations

import numpy as np
from dipy.segment.mask import median_otsu
from dipy.segment.threshold import otsu
from scipy import ndimage


def brain_mask(mean_b0: np.ndarray, median_radius: int = 2, numpass: int = 2) -> np.ndarray:
    _, mask = median_otsu(
        mean_b0.astype(np.float32), median_radius=median_radius, numpass=numpass, dilate=1
    )
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, range(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(mask)


def head_mask(volume: np.ndarray) -> np.ndarray:
    """A loose foreground mask (Otsu on the log image, dilated): where to
    spend denoising and registration effort."""
    v = np.log1p(np.maximum(volume, 0))
    fg = v > otsu(v[v > 0]) if (v > 0).any() else np.zeros(v.shape, bool)
    return ndimage.binary_dilation(ndimage.binary_fill_holes(fg), iterations=3)
