"""Gibbs-ringing removal by local sub-voxel shifts (Kellner et al. 2016), batched.

The algorithm is dipy's `gibbs_removal` (sub-voxel shifts by Fourier phase
ramps, total variation over 3 neighbours, the two in-plane passes blended
with dipy's k-space weights), with the shift range selectable (`SHIFTS`).
dipy runs it one 2D slice at a time; here a whole stack of slices goes
through each FFT and each TV step, and chunks of slices run on several
threads (scipy.fft and numpy's loops release the GIL). With dipy's shifts and
``exact=True`` the output equals dipy's (tested). Slices are taken across
`slice_axis` (the through-plane axis), and the input is never modified.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

#: Sub-voxel shifts searched. "kellner": Kellner et al.'s original range, j / (2 nsh)
#: for j = 1..20, i.e. up to half a voxel (also MRtrix3's mrdegibbs default).
#: "dipy": dipy's 45 shifts in [0.02, 0.9], which smooth more.
SHIFTS: dict[str, np.ndarray] = {
    "kellner": (np.arange(1, 21) / 40.0).astype(np.float32),
    "dipy": np.linspace(0.02, 0.9, num=45, dtype=np.float32),
}


@dataclass(frozen=True)
class GibbsReport:
    slice_axis: int
    n_points: int
    n_slices: int
    shifts: str


def _weights(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    g0, g1 = np.zeros(shape), np.zeros(shape)
    k0 = np.linspace(-np.pi, np.pi, num=shape[0])
    k1 = np.linspace(-np.pi, np.pi, num=shape[1])
    kk1, kk0 = np.meshgrid(k1[1:-1], k0[1:-1])
    c0, c1 = 1.0 + np.cos(kk0), 1.0 + np.cos(kk1)
    g1[1:-1, 1:-1] = c0 / (c0 + c1)
    g0[1:-1, 1:-1] = c1 / (c0 + c1)
    g1[1:-1, 0] = g1[1:-1, -1] = 1
    g1[0, 0] = g1[-1, -1] = g1[0, -1] = g1[-1, 0] = 0.5
    g0[0, 1:-1] = g0[-1, 1:-1] = 1
    g0[0, 0] = g0[-1, -1] = g0[0, -1] = g0[-1, 0] = 0.5
    return g0, g1


def _tv(x: np.ndarray, n_points: int) -> np.ndarray:
    """min(right TV, left TV) along the last axis, with circular wrap (as dipy).

    right[i] = sum_{m<p} |x[i+m+1] - x[i+m]| and left[i] = right[i-p]: both are
    windows of one running sum of circular |diff|, so it is computed once.
    """
    p = n_points
    n = x.shape[-1]
    d = np.empty_like(x)
    np.subtract(x[..., 1:], x[..., :-1], out=d[..., :-1])
    np.subtract(x[..., :1], x[..., -1:], out=d[..., -1:])
    np.abs(d, out=d)
    padded = np.concatenate((d, d[..., : p - 1]), axis=-1)
    right = padded[..., :n].copy()
    for m in range(1, p):
        right += padded[..., m : m + n]
    left = np.concatenate((right[..., -p:], right[..., :-p]), axis=-1)
    return np.minimum(right, left, out=right)


def _unring_1d(x: np.ndarray, n_points: int, exact: bool, shifts: np.ndarray) -> np.ndarray:
    """dipy's _gibbs_removal_1d along the last axis of a stack (..., N).

    exact: shifted images as |complex inverse FFT|, as dipy. Otherwise the
    real inverse FFT (half the work; differs only through the Nyquist bin).
    """
    n = x.shape[-1]
    tvp = _tv(x, n_points)
    tvn = tvp.copy()
    isp, isn = x.copy(), x.copy()
    sp = np.zeros(x.shape, np.float32)
    sn = np.zeros(x.shape, np.float32)
    if exact:
        c = sfft.fft(x, axis=-1)
        k = sfft.fftfreq(n, 1 / (2.0j * np.pi)).astype(c.dtype)
    else:
        c = sfft.rfft(x, axis=-1)
        k = (2.0j * np.pi * sfft.rfftfreq(n)).astype(c.dtype)
    for s in shifts:
        ramp = np.exp(k * s)
        for tv, best, shift, phase in ((tvp, isp, sp, ramp), (tvn, isn, sn, np.conj(ramp))):
            if exact:
                img = np.abs(sfft.ifft(c * phase, axis=-1))
            else:
                img = np.abs(sfft.irfft(c * phase, n=n, axis=-1))
            tvs = _tv(img, n_points)
            better = tv > tvs
            np.copyto(best, img, where=better)
            np.copyto(shift, s, where=better)
            np.minimum(tv, tvs, out=tv)
    total = sp + sn
    idx = np.nonzero(total)
    out = x.copy()
    out[idx] = (isp[idx] - isn[idx]) / total[idx] * sn[idx] + isn[idx]
    return out


def _unring_2d(stack: np.ndarray, n_points: int, g0, g1, exact: bool, shifts) -> np.ndarray:
    """dipy's _gibbs_removal_2d on a stack of slices (B, M, N)."""
    along1 = _unring_1d(stack, n_points, exact, shifts)
    flipped = np.swapaxes(stack, 1, 2).copy()
    along0 = np.swapaxes(_unring_1d(flipped, n_points, exact, shifts), 1, 2)
    c1 = sfft.fftshift(sfft.fft2(along1), axes=(1, 2))
    c0 = sfft.fftshift(sfft.fft2(along0), axes=(1, 2))
    return np.abs(sfft.ifft2(c1 * g1 + c0 * g0)).astype(np.float32)


def gibbs_removal(
    data: np.ndarray,
    slice_axis: int = 2,
    n_points: int = 3,
    threads: int = 1,
    exact: bool = False,
    shifts: str = "kellner",
    chunk: int = 32,
) -> tuple[np.ndarray, GibbsReport]:
    """Remove Gibbs ringing from a 3D or 4D array; returns (new float32 array, report).

    With ``shifts="dipy", exact=True`` the output is dipy's. The default
    real-FFT path is about twice as fast and stays within 2% of the image
    maximum of the exact one (tested). The default shift range is Kellner's
    (see `SHIFTS`): half the work of dipy's and less blurring.
    """
    if data.ndim not in (3, 4):
        raise ValueError(f"Gibbs removal needs a 3D or 4D array, got {data.ndim}D")
    vol = np.moveaxis(np.asarray(data, np.float32), slice_axis, 0)
    if data.ndim == 4:
        vol = np.moveaxis(vol, 3, 1)  # (slices, volumes, M, N)
    lead = vol.shape[:-2]
    stack = np.ascontiguousarray(vol.reshape(-1, *vol.shape[-2:]))
    g0, g1 = _weights(stack.shape[1:])
    out = np.empty_like(stack)

    def work(start: int) -> None:
        part = stack[start : start + chunk]
        out[start : start + chunk] = _unring_2d(part, n_points, g0, g1, exact, SHIFTS[shifts])

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(work, range(0, len(stack), chunk)))
    out = out.reshape(*lead, *stack.shape[1:])
    if data.ndim == 4:
        out = np.moveaxis(out, 1, 3)
    out = np.moveaxis(out, 0, slice_axis)
    return np.ascontiguousarray(out), GibbsReport(slice_axis, n_points, len(stack), shifts)
