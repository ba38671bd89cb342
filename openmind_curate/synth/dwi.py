"""Diffusion-weighted series simulated from the tissue maps with a tensor model.

Each voxel holds one diffusion tensor: the partial-volume weighted mean of the
tissue tensors (GM and CSF isotropic, WM anisotropic along the local fibre
direction). Because every voxel is exactly a single tensor, the ground-truth FA
and MD are exact and a noiseless tensor fit recovers them. The fibre direction
is the axis along which the white-matter map changes least (smallest
eigenvector of its structure tensor): tracts run along WM sheets.

Gradient directions are expressed on the image's voxel axes; the conversion
from the FSL/BIDS files is `dwi.gradients.fsl_to_voxel`, shared with the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from dipy.core.sphere import HemiSphere, disperse_charges
from scipy import ndimage

#: Tissue diffusivities, mm^2/s (eigenvalues for WM).
D_GM = 0.8e-3
D_CSF = 3.0e-3
D_OTHER = 1.0e-3
WM_EIGENVALUES = (1.6e-3, 0.4e-3, 0.3e-3)


@dataclass(frozen=True)
class GradientTable:
    bvals: np.ndarray  # (n,) s/mm^2
    bvecs: np.ndarray  # (n, 3) unit vectors on voxel axes (zeros for b0)


def gradient_table(n_b0: int, shells: dict[int, int], rng: np.random.Generator) -> GradientTable:
    """b0s interleaved with well spread directions per shell (electrostatic repulsion)."""
    bvals, bvecs = [], []
    for b, n in shells.items():
        theta = np.arccos(rng.uniform(-1, 1, n))
        phi = rng.uniform(0, 2 * np.pi, n)
        hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 200)
        bvecs.append(hemi.vertices)
        bvals.append(np.full(n, b))
    vecs = np.concatenate(bvecs)
    vals = np.concatenate(bvals).astype(float)
    order = rng.permutation(len(vals))
    vecs, vals = vecs[order], vals[order]
    # One b0 first, the others spread through the series, as scanners do.
    positions = np.linspace(0, len(vals) + n_b0 - 1, n_b0).round().astype(int)
    out_vals = np.empty(len(vals) + n_b0)
    out_vecs = np.zeros((len(vals) + n_b0, 3))
    is_b0 = np.zeros(len(out_vals), bool)
    is_b0[positions] = True
    out_vals[is_b0] = 0
    out_vals[~is_b0] = vals
    out_vecs[~is_b0] = vecs
    return GradientTable(out_vals, out_vecs)


def fibre_directions(wm: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Unit fibre direction per voxel (..., 3) from the WM structure tensor."""
    grads = np.gradient(ndimage.gaussian_filter(wm, 1.0))
    st = np.empty(wm.shape + (3, 3), np.float32)
    for i in range(3):
        for j in range(i, 3):
            st[..., i, j] = st[..., j, i] = ndimage.gaussian_filter(grads[i] * grads[j], sigma)
    _, vecs = np.linalg.eigh(st)
    return vecs[..., :, 0]  # eigenvector of the smallest eigenvalue


def tensor_field(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-voxel diffusion tensor (..., 3, 3), mm^2/s."""
    e1 = fibre_directions(wm)
    l1, l2, l3 = WM_EIGENVALUES
    # WM tensor: l1 along e1, the mean of l2 and l3 across (axially symmetric).
    perp = (l2 + l3) / 2
    d_wm = perp * np.eye(3) + (l1 - perp) * e1[..., :, None] * e1[..., None, :]
    total = gm + wm + csf + other
    w = np.where(total > 0, 1.0 / np.maximum(total, 1e-6), 0.0)
    iso = (gm * D_GM + csf * D_CSF + other * D_OTHER) * w
    d = wm[..., None, None] * w[..., None, None] * d_wm + iso[..., None, None] * np.eye(3)
    d[total <= 0] = D_OTHER * np.eye(3)
    return d.astype(np.float32)


def fa_md(tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fractional anisotropy and mean diffusivity of tensors (..., 3, 3)."""
    ev = np.linalg.eigvalsh(tensors.astype(np.float64))
    md = ev.mean(-1)
    num = np.sqrt(((ev - md[..., None]) ** 2).sum(-1))
    den = np.sqrt((ev**2).sum(-1))
    fa = np.sqrt(1.5) * np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)
    return fa.astype(np.float32), md.astype(np.float32)


def simulate(s0: np.ndarray, tensors: np.ndarray, gtab: GradientTable) -> np.ndarray:
    """Noiseless signal S0 exp(-b g^T D g), shape (..., n_volumes).

    The one signal model of the generator: the corpus writer and the DWI phantom
    (one volume at a time, with the gradient the moved head saw) both call it.
    """
    q = np.einsum("...ij,ni,nj->...n", tensors, gtab.bvecs, gtab.bvecs, optimize=True)
    return (s0[..., None] * np.exp(-gtab.bvals * q)).astype(np.float32)
