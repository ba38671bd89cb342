"""The preprocessed training store (written by `curate preprocess`, read by the loader).

Layout::

    STORE/store.parquet                one row per manifest image (`STORE_INDEX`)
    STORE/store.json                   spacing, orientation, normalization, clipping, version
    STORE/cases/<case_id>/image.b2nd   float32, z-scored, cropped to the nonzero region
    STORE/cases/<case_id>/anat.b2nd    uint8 {0,1}, the anatomy mask on the same grid
    STORE/cases/<case_id>/anon.b2nd    uint8 {0,1}, only when the manifest had an
                                       anonymization mask
    STORE/cases/<case_id>/anat_points.npy  int16 (n, 3): up to `N_POINTS` anatomy voxels,
                                       so anatomy-centred sampling reads no whole mask
    STORE/cases/<case_id>/case.json    the case's record; the completion marker

Arrays are (D, H, W) = ITK's (z, y, x) order of an image reoriented to LPS
(`sitk.DICOMOrient(img, "LPS")`): axis 0 runs inferior -> superior, axis 1
anterior -> posterior, axis 2 right -> left. A case folder is written under a
temporary name and renamed, so a case folder with its ``case.json`` is complete.
A rejected case has only ``case.json`` (status and reason).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from openmind_curate.errors import DataError
from openmind_curate.schema import STORE_INDEX  # noqa: F401 - the store's table, defined in schema

if TYPE_CHECKING:
    import pandas as pd

STORE_VERSION = 1
INDEX_FILE = "store.parquet"
META_FILE = "store.json"
CASES_DIR = "cases"
RECORD_FILE = "case.json"
POINTS_FILE = "anat_points.npy"
#: Anatomy voxels kept per case for anatomy-centred sampling.
N_POINTS = 10_000
ARRAYS = {"image": "image.b2nd", "anat": "anat.b2nd", "anon": "anon.b2nd"}


class StoreError(DataError):
    """A store that cannot be read; names the folder and why."""


@dataclass
class Case:
    """One case (or a patch of it): arrays in (D, H, W)."""

    image: np.ndarray
    anat: np.ndarray
    anon: np.ndarray | None


def case_dir(root: str | os.PathLike[str], case_id: str) -> Path:
    return Path(root) / CASES_DIR / case_id


def record_path(root: str | os.PathLike[str], case_id: str) -> Path:
    return case_dir(root, case_id) / RECORD_FILE


def patch_bounds(
    shape: tuple[int, ...], start: tuple[int, ...], size: tuple[int, ...]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of the patch ``start .. start + size`` inside a volume of
    `shape`: (slices into the volume, slices into the patch). Empty slices
    where they do not overlap."""
    src, dst = [], []
    for n, s, k in zip(shape, start, size, strict=True):
        lo, hi = max(0, s), min(n, s + k)
        if hi <= lo:
            lo = hi = 0
            src.append(slice(0, 0))
            dst.append(slice(0, 0))
            continue
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    return tuple(src), tuple(dst)


class Store:
    """A preprocessed store; see the module docstring. Picklable (loader workers):
    open array handles are per process and reopened after a fork."""

    #: Open blosc2 arrays kept per process (3 per case).
    MAX_OPEN = 192

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(os.path.abspath(path))
        index = self.path / INDEX_FILE
        if not index.is_file():
            raise StoreError(
                f"no store at {self.path}: {INDEX_FILE} missing (run `curate preprocess`)"
            )
        import pyarrow.parquet as pq

        try:
            self.index = pq.read_table(index).to_pandas()
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"cannot read {index}: {exc}") from None
        try:
            self.meta: dict[str, Any] = json.loads((self.path / META_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {self.path / META_FILE}: {exc}") from None
        if int(self.meta.get("version", STORE_VERSION)) > STORE_VERSION:
            raise StoreError(f"store {self.path} was written by a newer openmind-curate: upgrade")
        ok = self.index[self.index["status"] == "ok"]
        self._cases = ok.sort_values("case_id", kind="stable").reset_index(drop=True)
        self._has_anon = dict(zip(ok["case_id"], ok["has_anon"].astype(bool), strict=True))
        self._shapes = {
            c: tuple(int(v) for v in s) for c, s in zip(ok["case_id"], ok["shape"], strict=True)
        }
        self._open: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._pid = os.getpid()
        self._points: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"], state["_points"] = OrderedDict(), OrderedDict()
        return state

    @property
    def cases(self) -> pd.DataFrame:
        """The cases with status "ok", sorted by case_id."""
        return self._cases

    def has_anon(self, case_id: str) -> bool:
        return self._has_anon[case_id]

    def shape(self, case_id: str) -> tuple[int, int, int]:
        return self._shapes[case_id]  # type: ignore[return-value]

    def _array(self, case_id: str, kind: str):
        import blosc2

        if os.getpid() != self._pid:  # a forked loader worker: no shared handles
            self._open.clear()
            self._pid = os.getpid()
        key = (case_id, kind)
        arr = self._open.get(key)
        if arr is None:
            if case_id not in self._shapes:
                raise KeyError(f"no case {case_id!r} with status ok in {self.path}")
            path = case_dir(self.path, case_id) / ARRAYS[kind]
            # One decompression thread: a blosc2 thread pool started in this
            # process would deadlock the loader's forked workers.
            arr = blosc2.open(str(path), mode="r", dparams=blosc2.DParams(nthreads=1))
            self._open[key] = arr
            while len(self._open) > self.MAX_OPEN:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(key)
        return arr

    def load(self, case_id: str) -> Case:
        """A whole case."""
        image = self._array(case_id, "image")[...]
        anat = self._array(case_id, "anat")[...]
        anon = self._array(case_id, "anon")[...] if self.has_anon(case_id) else None
        return Case(
            np.asarray(image, np.float32),
            np.asarray(anat, np.uint8),
            None if anon is None else np.asarray(anon, np.uint8),
        )

    def read_patch(
        self, case_id: str, start: tuple[int, int, int], size: tuple[int, int, int]
    ) -> Case:
        """The patch ``start .. start + size`` (start may be negative, the end
        past the volume): 0 (image and masks) outside the volume."""
        size = tuple(int(s) for s in size)
        start = tuple(int(s) for s in start)
        src, dst = patch_bounds(self.shape(case_id), start, size)
        inside = all(s.stop > s.start for s in src)

        def read(kind: str, dtype: type) -> np.ndarray:
            out = np.zeros(size, dtype)
            if inside:
                out[dst] = self._array(case_id, kind)[src]
            return out

        anon = read("anon", np.uint8) if self.has_anon(case_id) else None
        return Case(read("image", np.float32), read("anat", np.uint8), anon)

    def anat_points(self, case_id: str) -> np.ndarray:
        """Up to `N_POINTS` anatomy voxel coordinates (n, 3) of the case (cached)."""
        pts = self._points.get(case_id)
        if pts is None:
            pts = np.load(case_dir(self.path, case_id) / POINTS_FILE)
            self._points[case_id] = pts
            while len(self._points) > 4096:
                self._points.popitem(last=False)
        return pts


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open the store written by `curate preprocess` at `path`."""
    return Store(path)
