"""build-manifest at the corpus's scale: a 113,921-row index, `--iqs-max 2.5`.

Generates an index with the paper's modality mix (appendix Table 10; the
counts are scaled to the row count and rounded, so they are approximate),
800 datasets, ~34k subjects, IQS per dataset x modality (a few groups
unrated), masks for most images and 1% 4D DWI series, written as a real
index file through `openmind_curate.index` (paths stored relative to it).
Then times:

- the build in-process (`manifest.build.build`: read, filter, split, write
  parquet + sidecar), best of 3; then once each: the nnssl export, the
  OpenMind CSV export of every row, and that CSV read back as `--index`;
- the whole command from the shell (`curate build-manifest --iqs-max 2.5`,
  interpreter start-up included), best of 3, and ``import openmind_curate.cli``
  alone;
- the peer: plain pandas read + filter + to_parquet of the same index;
- the dataset report (`openmind_curate.report.write_report`).

The released OpenMind CSV, and the whole command's CPU time against a pandas
peer, are `benchmarks/openmind_csv_scale.py`'s.

    python benchmarks/manifest_scale.py [--rows 113921] [--seed 0]

Targets (docs/design/index.md, issue 12): build < 1 s in-process, < 1.5 s from the shell,
report < 30 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

#: Paper appendix Table 10, images per modality (OpenMind: 113,921 in all).
TABLE_10 = {
    "T1w": 42732,
    "T2w": 22999,
    "FA": 13407,
    "MD": 13407,
    "FLAIR": 5583,
    "MP2RAGE": 2859,
    "sbref": 1795,
    "ADC": 1757,
    "TRACE": 1715,
    "UNIT1": 927,
    "inplaneT2": 892,
    "SWI": 784,
    "UNIT1_denoised": 724,
    "minIP": 687,
    "PET": 653,
    "T1map": 557,
    "inplaneT1": 529,
    "angio": 488,
    "PDw": 473,
    "T2starw": 409,
    "FLASH": 307,
    "T2map": 106,
    "T2starmap": 76,
    "DWI": 55,
}
N_DATASETS, N_SUBJECTS = 800, 34191


def fake_index(n: int, seed: int) -> pa.Table:
    """An image index of `n` rows (schema.IMAGE_INDEX, absolute paths under
    /corpus) with Table 10's modality mix, scaled to `n`."""
    from openmind_curate.schema import IMAGE_INDEX

    rng = np.random.default_rng(seed)
    names = list(TABLE_10)
    weights = np.array([TABLE_10[m] for m in names], float)
    modality = rng.choice(len(names), size=n, p=weights / weights.sum())
    n_sub = max(1, round(N_SUBJECTS * n / 113921))
    n_ds = max(1, min(N_DATASETS, n_sub))
    sub_ds = np.sort(rng.integers(0, n_ds, n_sub))
    subject = rng.integers(0, n_sub, n)
    ds = sub_ds[subject]
    session = rng.integers(0, 3, n)
    mods = np.array(names, dtype=object)[modality]
    ds_ids = np.array([f"ds{d:06d}" for d in range(n_ds)], dtype=object)[ds]
    subj = np.array([f"{s:05d}" for s in range(n_sub)], dtype=object)[subject]
    ses = np.where(session == 0, None, np.array(["", "01", "02"], dtype=object)[session])
    rows = np.arange(n)
    path = [
        f"sub-{s}/{'ses-' + e + '/' if e else ''}anat/sub-{s}_run-{r}_{m}.nii.gz"
        for s, e, r, m in zip(subj, ses, rows, mods, strict=True)
    ]
    root = [f"/corpus/data/{d}" for d in ds_ids]
    iqs, iqs_image = _scores(rng, ds * len(names) + modality, n_ds * len(names))
    has_mask = rng.random(n) < 0.95
    mask = [
        f"/corpus/masks/{d}/{p[:-7]}_desc-{{}}_mask.nii.gz"
        for d, p in zip(ds_ids, path, strict=True)
    ]
    n_volumes = np.where((mods == "DWI") | (rng.random(n) < 0.01), 65, 1).astype(np.int32)
    spacing = rng.choice([1.0, 1.0, 0.8, 1.2, 2.0, 3.0], size=(n, 3)).astype(np.float32)
    ids = [f"{i:016x}" for i in rng.permutation(n * 4)[:n]]
    header = np.where(rng.random(n) < 0.01, "corrupt", "ok")
    columns = {
        "image_id": ids,
        "dataset_id": ds_ids.tolist(),
        "subject": subj.tolist(),
        "session": ses.tolist(),
        "run": [str(r) for r in rows],
        "datatype": ["anat"] * n,
        "suffix": mods.tolist(),
        "extension": [".nii.gz"] * n,
        "modality": mods.tolist(),
        "is_derivative": np.isin(mods, ["FA", "MD"]).tolist(),
        "root": root,
        "path": path,
        "size_bytes": rng.integers(1_000_000, 30_000_000, n).tolist(),
        "mtime_ns": [1_700_000_000_000_000_000] * n,
        "header_status": header.tolist(),
        "shape": pa.array([[176, 256, 256]] * n, pa.list_(pa.int32())),
        "spacing": pa.array(list(spacing), pa.list_(pa.float32())),
        "n_volumes": n_volumes,
        "dtype": ["int16"] * n,
        "age": np.where(rng.random(n) < 0.7, rng.uniform(5, 90, n), np.nan),
        "sex": np.where(rng.random(n) < 0.7, rng.choice(["M", "F"], n), None).tolist(),
        "anat_mask_path": [
            m.format("anatomy") if h else None for m, h in zip(mask, has_mask, strict=True)
        ],
        "anon_mask_path": [
            m.format("anonymization") if h else None for m, h in zip(mask, has_mask, strict=True)
        ],
        "is_brain_extracted": (rng.random(n) < 0.05).tolist(),
        "iqs": iqs,
        "iqs_image": iqs_image,
        "iqs_predicted": np.clip(iqs + rng.normal(0, 0.2, n), 1, 5),
    }
    arrays = []
    for field in IMAGE_INDEX:
        values = columns.get(field.name)
        if values is None:
            arrays.append(pa.nulls(n, field.type))
        elif isinstance(values, pa.Array):
            arrays.append(values)
        else:
            arrays.append(pa.array(values, field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=IMAGE_INDEX)


def _scores(rng: np.random.Generator, group: np.ndarray, n_groups: int):
    """IQS: one score per dataset x modality group, ~5% of groups unrated;
    a tenth of the images rated themselves (iqs_image)."""
    g_iqs = np.round(rng.uniform(1.0, 4.5, n_groups), 2)
    g_unrated = rng.random(n_groups) < 0.05
    iqs = np.where(g_unrated[group], np.nan, g_iqs[group])
    n = len(group)
    iqs_image = np.where(rng.random(n) < 0.1, np.clip(iqs + rng.normal(0, 0.3, n), 1, 5), np.nan)
    return iqs, iqs_image


def write_index(folder: Path, n: int, seed: int) -> Path:
    from openmind_curate import index

    p = folder / "index" / "images.parquet"
    with index.locked(p):
        index.write(p, fake_index(n, seed))
    return p


def best(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def time_build(work: Path, index_path: Path):
    """The build in-process (best of 3), then the exports and the CSV read back."""
    from openmind_curate.manifest import build as B
    from openmind_curate.manifest import filters as F

    out = work / "manifests" / "bench.parquet"
    result = None

    def ours() -> None:
        nonlocal result
        result = B.build(index_path, F.Filters(iqs_max=2.5), out, command=[])

    t_build = best(ours)
    print(
        f"build (in-process): {t_build:.3f} s  -> {result.table.num_rows} images kept, "
        f"{result.split.val_subjects} val subjects  [target < 1 s]"
    )
    everything = F.Filters(header_status=None, keep_4d=True)
    for fmt, name, kept_by in (
        ("nnssl", "n/pretrain_data.json", F.Filters(iqs_max=2.5)),
        ("openmind-csv", "om.csv", everything),
    ):
        t = time.perf_counter()
        B.build(index_path, kept_by, work / "manifests" / name, fmt=fmt, command=[])
        print(
            f"  --format {fmt} ({'--iqs-max 2.5' if kept_by.iqs_max else 'every row'}): "
            f"{time.perf_counter() - t:.2f} s"
        )
    t = time.perf_counter()
    back = B.build(
        work / "manifests" / "om.csv",
        F.Filters(iqs_max=2.5),
        work / "manifests" / "from-csv.parquet",
        command=[],
    )
    print(
        f"  --index <OpenMind CSV of {back.total} rows> --iqs-max 2.5: "
        f"{time.perf_counter() - t:.2f} s"
    )
    return t_build, result


def time_shell(work: Path) -> None:
    """The whole command from the shell, and the interpreter's share of it."""
    curate = Path(sys.executable).parent / "curate"

    def shell() -> None:
        subprocess.run(
            [str(curate), "build-manifest", "--iqs-max", "2.5"],
            cwd=work,
            check=True,
            capture_output=True,
        )

    t_shell = best(shell)
    print(
        f"curate build-manifest --iqs-max 2.5 (shell, start-up included): {t_shell:.3f} s"
        "  [target < 1.5 s]"
    )
    t_import = best(
        lambda: subprocess.run([sys.executable, "-c", "import openmind_curate.cli"], check=True)
    )
    t_python = best(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
    print(
        f"  of which: python start-up {t_python:.3f} s, import openmind_curate.cli "
        f"{t_import - t_python:.3f} s"
    )


def time_peer(work: Path, index_path: Path, t_build: float) -> None:
    import pandas as pd

    peer_out = work / "peer.parquet"

    def peer() -> None:
        df = pd.read_parquet(index_path)
        keep = (df["header_status"] == "ok") & (df["n_volumes"].fillna(1) <= 1)
        keep &= df["iqs"] <= 2.5
        df[keep].to_parquet(peer_out)

    t_peer = best(peer)
    print(
        f"peer: pandas read + filter + to_parquet: {t_peer:.3f} s; ours / peer = "
        f"{t_build / t_peer:.2f}x (ours also validates, makes paths portable, splits "
        "by subject, hashes the input and writes the sidecar)"
    )


def time_report(work: Path, index_path: Path, manifest) -> None:
    from openmind_curate import index as store
    from openmind_curate.report import write_report

    frame = store.read_frame(index_path)
    t = time.perf_counter()
    page = write_report(frame, work / "report", manifest=manifest.to_pandas())
    print(f"report: {time.perf_counter() - t:.1f} s -> {page.name}  [target < 30 s]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=113921)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        index_path = write_index(work, args.rows, args.seed)
        size = index_path.stat().st_size / 2**20
        print(
            f"index: {args.rows} rows, {size:.1f} MiB, generated and written in "
            f"{time.perf_counter() - t:.1f} s"
        )
        t_build, result = time_build(work, index_path)
        time_shell(work)
        time_peer(work, index_path, t_build)
        time_report(work, index_path, result.table)


if __name__ == "__main__":
    main()
