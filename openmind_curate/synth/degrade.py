"""Known degradations, as pure functions of an image (and a random generator).

Order matters and follows acquisition: object-level effects (bias field,
blur) first, then k-space effects (Gibbs truncation, ghosting), then thermal
noise in the magnitude image (Rician), then post-processing by the data
provider (defacing, skull stripping). Each function's parameter is what the
truth table records.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def bias_field(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field exp(strength * p(x)), p a random quadratic
    scaled to [-1, 1] over the volume; max/min ratio is exp(2 * strength)."""
    coords = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij", sparse=True)
    c = rng.normal(size=9)
    x, y, z = coords
    p = c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * y * z + c[5] * x * z
    p = p + c[6] * x**2 + c[7] * y**2 + c[8] * z**2
    p = p - (p.max() + p.min()) / 2
    p = p / max(np.abs(p).max(), 1e-9)
    return np.exp(strength * p).astype(np.float32)


def blur(image: np.ndarray, fwhm_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Gaussian blur with the given full width at half maximum."""
    if fwhm_mm <= 0:
        return image
    sigma = [fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / s for s in spacing]
    return ndimage.gaussian_filter(image, sigma).astype(np.float32)


def gibbs_truncate(image: np.ndarray, keep_fraction: float, axis: int) -> np.ndarray:
    """Keep only the central `keep_fraction` of k-space along `axis` (zero-fill
    the rest): the partial-Fourier / low-matrix acquisition that causes ringing."""
    if keep_fraction >= 1:
        return image
    k = np.fft.fftshift(np.fft.fft(image, axis=axis), axes=axis)
    n = image.shape[axis]
    keep = int(round(n * keep_fraction / 2))
    mask = np.zeros(n, bool)
    mask[n // 2 - keep : n // 2 + keep] = True
    shape = [1] * image.ndim
    shape[axis] = n
    k *= mask.reshape(shape)
    return np.abs(np.fft.ifft(np.fft.ifftshift(k, axes=axis), axis=axis)).astype(np.float32)


def ghost(image: np.ndarray, amplitude: float, axis: int) -> np.ndarray:
    """N/2 ghosting from a phase error on every other phase-encoding line.

    A phase error phi on odd lines gives a ghost shifted by half the field of
    view with relative amplitude |sin(phi / 2)| = `amplitude`.
    """
    if amplitude <= 0:
        return image
    phi = 2 * np.arcsin(min(amplitude, 1.0))
    k = np.fft.fft(image, axis=axis)
    n = image.shape[axis]
    phase = np.where(np.arange(n) % 2 == 1, np.exp(1j * phi), 1.0)
    shape = [1] * image.ndim
    shape[axis] = n
    k *= phase.reshape(shape)
    return np.abs(np.fft.ifft(k, axis=axis)).astype(np.float32)


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise of std `sigma` per channel.

    In the background this is Rayleigh: mean sigma*sqrt(pi/2), E[x^2] = 2 sigma^2.
    """
    if sigma <= 0:
        return image
    real = image + rng.normal(0, sigma, image.shape).astype(np.float32)
    imag = rng.normal(0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag)


def deface(
    image: np.ndarray, face: np.ndarray, method: str, spacing: tuple[float, ...]
) -> np.ndarray:
    """Remove the face zone: ``zero`` (pydeface-style) or ``blur`` (heavy blur
    confined to the zone, as face-blurring tools do)."""
    out = image.copy()
    if method == "zero":
        out[face] = 0
    elif method == "blur":
        out[face] = blur(image, 12.0, spacing)[face]
    else:
        raise ValueError(f"unknown defacing method {method!r}")
    return out
