"""quality/viewer.py: known-answer slices, orientation, window presets, the unit cache."""

from __future__ import annotations

import hashlib
import threading
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from openmind_curate.quality import viewer

SHAPE = (10, 12, 8)  # x, y, z


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _frame(rows: list[tuple[str, Path, str, str | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            dict(image_id=i, root=str(p.parent), path=p.name, modality=m, derived_from=d)
            for i, p, m, d in rows
        ]
    )


@pytest.fixture(scope="module")
def bright(tmp_path_factory) -> dict:
    """A RAS volume with one bright voxel at a known place, and a LAS copy of it
    (x flipped in the array, the affine saying so): the same head on disk twice."""
    folder = tmp_path_factory.mktemp("viewer")
    data = np.full(SHAPE, 10.0, np.float32)
    data[7, 3, 5] = 1000.0  # right of centre, posterior, superior
    ras = np.diag([1.0, 1.0, 1.0, 1.0])
    las = ras.copy()
    las[0, 0], las[0, 3] = -1.0, SHAPE[0] - 1  # voxel x -> world -(x) + 9: same world grid
    return {
        "data": data,
        "ras": _save(folder / "ras.nii.gz", data, ras),
        "las": _save(folder / "las.nii.gz", data[::-1].copy(), las),
        "folder": folder,
    }


def _peak(img: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(img), img.shape))  # type: ignore


def test_bright_voxel_lands_where_expected(bright):
    vol, raw = viewer.load_volume(bright["ras"], "T1w")
    assert raw == bright["ras"].read_bytes() and vol.data.dtype == np.float32
    level, width = 505.0, 990.0  # 10 -> 0, 1000 -> 255
    sag, cor, ax = viewer.slices(vol, (7, 3, 5), level, width)
    assert (sag.dtype, sag.shape, cor.shape, ax.shape) == (np.uint8, (8, 12), (8, 10), (12, 10))
    nx, ny, nz = SHAPE
    # sagittal: superior up, nose (anterior, +y) left; coronal: superior up, subject's left
    # (-x) left; axial: anterior up, subject's left left
    assert _peak(sag) == (nz - 1 - 5, ny - 1 - 3)
    assert _peak(cor) == (nz - 1 - 5, 7)
    assert _peak(ax) == (ny - 1 - 3, 7)
    assert sag.max() == 255 and sag.min() == 0


def test_flipped_affine_gives_the_same_display(bright):
    ras, _ = viewer.load_volume(bright["ras"])
    las, _ = viewer.load_volume(bright["las"])
    np.testing.assert_array_equal(ras.data, las.data)
    for a, b in zip(
        viewer.slices(ras, (7, 3, 5), 505, 990),
        viewer.slices(las, (7, 3, 5), 505, 990),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_oblique_permuted_axes_are_reoriented(tmp_path, bright):
    """Stored as (z, x, y) axes: canonical reorientation puts it back on x, y, z."""
    data = np.transpose(bright["data"], (2, 0, 1)).copy()
    affine = np.zeros((4, 4))
    affine[2, 0] = affine[0, 1] = affine[1, 2] = 1.0
    affine[3, 3] = 1.0
    vol, _ = viewer.load_volume(_save(tmp_path / "zxy.nii", data, affine))
    np.testing.assert_array_equal(vol.data, bright["data"])


def test_anisotropic_spacing_gives_square_pixels(tmp_path):
    data = np.zeros((10, 10, 5), np.float32)
    vol, _ = viewer.load_volume(
        _save(tmp_path / "thick.nii.gz", data, np.diag([1.0, 1.0, 3.0, 1.0]))
    )
    assert vol.spacing == (1.0, 1.0, 3.0)
    sag, cor, ax = viewer.slices(vol, vol.center, 0, 1)
    assert sag.shape == (15, 10) and cor.shape == (15, 10) and ax.shape == (10, 10)


def test_4d_shows_the_first_volume(tmp_path, bright):
    stack = np.stack([bright["data"], bright["data"] * 0 + 3], axis=-1)
    vol, _ = viewer.load_volume(_save(tmp_path / "dwi.nii.gz", stack, np.eye(4)))
    np.testing.assert_array_equal(vol.data, bright["data"])


def test_unreadable_file_is_a_viewer_error(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(viewer.ViewerError, match="bad.nii.gz"):
        viewer.load_volume(bad)


def test_window_presets():
    stats = {
        0.0: -10.0,
        1.0: 2.0,
        5.0: 10.0,
        30.0: 20.0,
        95.0: 90.0,
        99.0: 98.0,
        100.0: 110.0,
    }
    assert viewer.window(stats, "Tissue") == (50.0, 96.0)
    assert viewer.window(stats, "High contrast") == (50.0, 80.0)
    assert viewer.window(stats, "Background noise") == (5.0, 30.0)
    assert viewer.window(stats, "Full range") == (50.0, 120.0)
    assert set(viewer.PRESET_HELP) == set(viewer.PRESETS)  # every preset says what it shows
    level, width = viewer.window(dict.fromkeys(stats, 7.0), "Tissue")  # a flat image
    assert level == 7.0 and width > 0
    with pytest.raises(ValueError, match="unknown window preset"):
        viewer.window(stats, "Bone")
    plane = np.array([[2.0, 50.0, 98.0, 200.0, -5.0]])
    np.testing.assert_array_equal(viewer.to_uint8(plane, 50.0, 96.0), [[0, 127, 255, 255, 0]])


def _unit(data: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> viewer.Unit:
    vol = viewer.Volume("T1w", data, spacing, viewer._percentiles(data))
    return viewer.Unit("u", [vol, vol], "c")


def test_what_the_browser_gets_is_the_volume():
    """Integer voxels travel exactly; float voxels within half a code step; the
    layout (x fastest) and each volume's offset are what rater_panel.js reads."""
    rng = np.random.default_rng(0)
    ints = rng.integers(-100, 3000, (7, 5, 3)).astype(np.float32)
    floats = rng.normal(0.3, 0.1, (7, 5, 3)).astype(np.float32)
    for data, exact in ((ints, True), (floats, False)):
        metas, body = viewer.encode_unit(_unit(data))
        header, back = viewer.unpack_payload(viewer.pack_payload({"volumes": metas}, body))
        assert header["volumes"][1]["offset"] == metas[0]["nbytes"]
        for meta in header["volumes"]:
            out = viewer.decode_volume(meta, back)
            assert out.shape == data.shape and meta["spacing"] == [1.0, 1.0, 2.0]
            error = np.abs(out - data).max()
            assert error == 0 if exact else error <= meta["step"] / 2 + 1e-6
            raw = zlib.decompress(back[meta["offset"] : meta["offset"] + meta["nbytes"]])
            codes = np.frombuffer(raw, "<u2")
            # x fastest: the second code is voxel (1, 0, 0)
            assert codes[1] == round((data[1, 0, 0] - meta["lo"]) / meta["step"])
            lo, hi = meta["windows"]["Tissue"]
            assert (lo + hi) / 2 == pytest.approx(
                viewer.window(_unit(data).volumes[0], "Tissue")[0]
            )


def test_percentiles_ignore_background(bright):
    vol, _ = viewer.load_volume(bright["ras"])
    data = np.zeros((20, 20, 20), np.float32)
    data[5:15, 5:15, 5:15] = np.linspace(100, 200, 1000).reshape(10, 10, 10)
    stats = viewer._percentiles(data)
    assert stats[0.0] == 0.0 and stats[100.0] == 200.0  # full range is the whole volume
    assert 100 < stats[1.0] < 103 and 197 < stats[99.0] < 200  # presets: the nonzero voxels
    assert vol.percentiles[100.0] == 1000.0


def test_load_unit_checksum_and_dwi_order(tmp_path, bright):
    maps = {
        m: _save(tmp_path / f"{m}.nii.gz", bright["data"] * (i + 1), np.eye(4))
        for i, m in enumerate(("T2w", "FA", "MD"))
    }
    index = _frame(
        [("dwi", bright["ras"], "DWI", None), ("img", bright["ras"], "T1w", None)]
        + [(f"map-{m}", p, m, "dwi") for m, p in maps.items()]
    )
    unit = viewer.load_unit(index, "dwi")
    assert unit.labels == ["FA", "MD", "T2w"]  # plan.MAP_ORDER, not the index order
    expected = hashlib.sha256(b"".join(maps[m].read_bytes() for m in ("FA", "MD", "T2w")))
    assert unit.checksum == expected.hexdigest()
    single = viewer.load_unit(index, "img")
    assert single.labels == ["T1w"]
    assert single.checksum == hashlib.sha256(bright["ras"].read_bytes()).hexdigest()
    with pytest.raises(viewer.ViewerError, match="not in the index"):
        viewer.load_unit(index, "../../etc/passwd")


def test_cache_reads_once_and_prefetches(bright, monkeypatch):
    index = _frame(
        [
            ("a", bright["ras"], "T1w", None),
            ("b", bright["las"], "T1w", None),
            ("c", bright["ras"], "T2w", None),
        ]
    )
    loads: list[str] = []
    real_load = nib.load
    gate = threading.Event()

    def counting_load(path, *args, **kwargs):
        loads.append(Path(path).name)
        gate.wait(5)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(viewer.nib, "load", counting_load)
    cache = viewer.UnitCache(index, maxsize=2)
    try:
        cache.prefetch("b")  # in the background: get waits for it, no second read
        assert "b" in cache
        t0 = time.monotonic()
        gate.set()
        b = cache.get("b")
        assert time.monotonic() - t0 < 5 and loads == ["las.nii.gz"]
        a = cache.get("a")
        assert cache.get("a") is a and cache.get("b") is b  # same object, no re-read
        assert cache.get("a").volumes[0].data is a.volumes[0].data
        assert loads == ["las.nii.gz", "ras.nii.gz"]
        cache.get("b")
        cache.get("c")  # evicts the least recently used: "a"
        assert "a" not in cache and "b" in cache and "c" in cache
        cache.prefetch(None)
        with pytest.raises(viewer.ViewerError):
            cache.get("missing")
        assert "missing" not in cache  # a failed load is not kept
    finally:
        cache.close()
