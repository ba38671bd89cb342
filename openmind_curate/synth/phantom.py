"""A DWI phantom with known motion, bias field, noise and ground-truth maps.

The head model's tissue maps give a tensor per voxel (as in `synth.dwi`). Each
volume is simulated in the head's own frame with the gradient the head saw
(g_head = R^T g_scanner), then moved by a rigid transform about the grid
centre, multiplied by a smooth bias field and given Rician noise. The stored
b-vectors are the scanner's, as a scanner would write them; the truth records
each volume's rotation and the head-frame b-vectors that a correct motion
correction must recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from openmind_curate.synth import degrade
from openmind_curate.synth import dwi as dwisim
from openmind_curate.synth.head import LAYERS, head_model
from openmind_curate.synth.render import Grid, render, resample, rotation


@dataclass
class DwiPhantom:
    data: np.ndarray  # (x, y, z, n) float32
    affine: np.ndarray
    bvals: np.ndarray
    bvecs_fsl: np.ndarray  # (3, n), as stored in a .bvec file
    bvecs_head: np.ndarray  # (n, 3) voxel frame: what motion correction must give
    rotations_deg: np.ndarray  # (n, 3) applied rotations (x, y, z; R = Rz Ry Rx)
    translations_mm: np.ndarray  # (n, 3)
    fa: np.ndarray
    md: np.ndarray
    brain: np.ndarray
    bias: np.ndarray
    sigma: float


def dwi_phantom(
    shape: tuple[int, int, int] = (100, 116, 94),
    spacing: float = 2.0,
    n_b0: int = 5,
    n_dirs: int = 60,
    bval: float = 1000.0,
    snr: float = 20.0,
    max_rotation_deg: float = 2.0,
    max_translation_mm: float = 2.0,
    bias_strength: float = 0.3,
    gibbs_keep: float | None = None,
    extra_shell: float | None = None,
    seed: int = 0,
) -> DwiPhantom:
    rng = np.random.default_rng(seed)
    model = head_model()
    affine = np.eye(4)
    affine[:3, :3] = np.diag([spacing] * 3)
    centre_mm = np.array([0.0, -18.0, 12.0])  # the brain's centre in MNI
    affine[:3, 3] = centre_mm - spacing * (np.array(shape) - 1) / 2
    grid = Grid(shape, affine)
    eye = np.eye(4)
    gm, wm, csf = (resample(p, model.affine, grid, eye) for p in (model.gm, model.wm, model.csf))
    soft = np.isin(model.layer, [LAYERS["scalp"], LAYERS["muscle"], LAYERS["marrow"]])
    other = resample(soft.astype(np.float32), model.affine, grid, eye)
    tensors = dwisim.tensor_field(gm, wm, csf, other)
    fa, md = dwisim.fa_md(tensors)
    s0 = resample(render(model, "b0"), model.affine, grid, eye) * 1000.0
    brain = (gm + wm + csf) > 0.5
    shells = {int(bval): n_dirs}
    if extra_shell:
        shells[int(extra_shell)] = max(6, n_dirs // 2)
    gtab = dwisim.gradient_table(n_b0, shells, rng)
    n = len(gtab.bvals)
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, (n, 3))
    shifts = rng.uniform(-max_translation_mm, max_translation_mm, (n, 3))
    angles[0], shifts[0] = 0, 0  # the first b0 is the reference pose
    centre_vox = (np.array(shape) - 1) / 2
    data = np.empty((*shape, n), np.float32)
    heads = np.zeros((n, 3))
    for i in range(n):
        r = rotation(tuple(angles[i]))
        g_head = r.T @ gtab.bvecs[i]
        heads[i] = g_head
        one = dwisim.GradientTable(gtab.bvals[i : i + 1], g_head[None])
        signal = dwisim.simulate(s0, tensors, one)[..., 0]
        # moved(x) = signal(R^T (x - c - t) + c), in voxels (isotropic, axis-aligned grid)
        t_vox = shifts[i] / spacing
        offset = centre_vox - r.T @ (centre_vox + t_vox)
        data[..., i] = ndimage.affine_transform(signal, r.T, offset, order=3, mode="constant")
    bias = degrade.bias_field(shape, bias_strength, rng)
    data *= bias[..., None]
    if gibbs_keep:
        data = degrade.gibbs_truncate(data, gibbs_keep, axis=0)
        data = degrade.gibbs_truncate(data, gibbs_keep, axis=1)
    sigma = float(np.median(s0[wm > 0.5]) / snr)
    data = degrade.rician(np.maximum(data, 0), sigma, rng).astype(np.float32)
    # Written by hand, not with dwi.gradients.fsl_to_voxel, so that the pipeline
    # tests check that conversion against an independent statement of the convention.
    bvecs_fsl = gtab.bvecs.T.copy()
    bvecs_fsl[0] *= -1  # RAS grid: positive determinant, FSL flips x
    return DwiPhantom(
        data, affine, gtab.bvals, bvecs_fsl, heads, angles, shifts, fa, md, brain, bias, sigma
    )
