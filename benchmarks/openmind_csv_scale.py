"""build-manifest on the released OpenMind CSV, from the shell, against a pandas peer.

Most users start from the OpenMind release's ``openneuro_metadata.csv``
(113,921 rows). This writes a synthetic file in that layout
(`openmind_csv.COLUMNS`: Table 10's modality mix, 800 datasets, ~34k
subjects, FA/MD maps derived from a DWI, masks, the metadata columns filled
the way the release fills them, IQS as group means with full float digits,
~5% of groups unscored), then runs, alternately, each `--repeats` times:

- ours: ``curate build-manifest --index openneuro_metadata.csv --iqs-max 2.5``
  in a child process (interpreter start-up and imports included);
- the peer: a child ``python -c`` that imports pandas, reads the same CSV,
  keeps ``image_quality_score <= 2.5`` and writes parquet.

CPU time is the child's user + system time (``resource.getrusage(
RUSAGE_CHILDREN)`` before and after each run); wall time is printed beside it.
The figure is the median over the repeats; the ratio is ours / peer.

    python benchmarks/openmind_csv_scale.py [--rows 113921] [--repeats 5] [--seed 0]

Target (issue 17): ours <= 1.5x the peer's CPU time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from manifest_scale import N_SUBJECTS, TABLE_10  # noqa: E402 - the same corpus shape

N_DATASETS = 800
TARGET = 1.5
PEER = """
import sys
import pandas as pd
df = pd.read_csv(sys.argv[1])
df[df["image_quality_score"] <= 2.5].to_parquet(sys.argv[2])
"""


def _choice(rng: np.random.Generator, values: list[str], n: int, known: float) -> np.ndarray:
    """`values` drawn at random, empty where unknown (a fraction 1 - `known`)."""
    out = np.array(values, dtype=object)[rng.integers(0, len(values), n)]
    out[rng.random(n) >= known] = ""
    return out


def _number(rng: np.random.Generator, low: float, high: float, n: int, known: float) -> list:
    values = np.round(rng.uniform(low, high, n), 2).astype(str).astype(object)
    values[rng.random(n) >= known] = ""
    return values


def fake_csv(path: Path, n: int, seed: int) -> None:
    """`n` rows in the release's layout (paths relative to its OpenMind/ folder)."""
    from openmind_curate.manifest.openmind_csv import COLUMNS

    rng = np.random.default_rng(seed)
    names = list(TABLE_10)
    weights = np.array([TABLE_10[m] for m in names], float)
    modality = rng.choice(len(names), size=n, p=weights / weights.sum())
    mods = np.array(names, dtype=object)[modality]
    n_sub = max(1, round(N_SUBJECTS * n / 113921))
    n_ds = max(1, min(N_DATASETS, n_sub))
    sub_ds = np.sort(rng.integers(0, n_ds, n_sub))
    subject = rng.integers(0, n_sub, n)
    ds = sub_ds[subject]
    ds_ids = np.array([f"ds{d:06d}" for d in range(n_ds)], dtype=object)[ds]
    session = rng.integers(0, 3, n)
    derived = np.isin(mods, ["FA", "MD"])
    # IQS: one score per dataset x modality (a mean of rated images' means), ~5% unscored
    group = ds * len(names) + modality
    g_iqs = (
        1 + rng.integers(0, 13, n_ds * len(names)) / 3 + rng.integers(0, 4, n_ds * len(names)) / 7
    )
    g_iqs = np.minimum(g_iqs, 5.0)
    g_unrated = rng.random(n_ds * len(names)) < 0.05
    iqs = np.where(g_unrated[group], "", g_iqs[group].astype(str))
    race = ["white", "asian", "black or african american", "hispanic"]
    health = ["healthy", "patient", "control"]
    columns = {
        "modality": mods,
        "image_quality_score": iqs,
        "is_brain_extract": np.where(rng.random(n) < 0.05, "True", "False"),
        "age": _number(rng, 5, 90, n, 0.7),
        "sex": _choice(rng, ["male", "female", "M", "F"], n, 0.7),
        "handedness": _choice(rng, ["right", "left", "R"], n, 0.3),
        "race": _choice(rng, race, n, 0.2),
        "weight": _number(rng, 40, 120, n, 0.1),
        "bmi": _number(rng, 17, 35, n, 0.05),
        "health_status": _choice(rng, health, n, 0.5),
        "manufacturer": _choice(rng, ["Siemens", "GE", "Philips"], n, 0.9),
        "model_name": _choice(rng, ["Prisma_fit", "TrioTim", "Skyra", "DISCOVERY MR750"], n, 0.8),
        "phase_encoding_direction": _choice(rng, ["j-", "j", "i", "i-"], n, 0.6),
        "magnetic_field_strength": _choice(rng, ["3.0", "1.5", "7.0"], n, 0.9),
        "repetition_time": _number(rng, 0.5, 9, n, 0.9),
        "echo_time": _number(rng, 0.002, 0.1, n, 0.9),
    }
    with open(path, "w") as fh:
        fh.write(",".join(COLUMNS) + "\n")
        for i in range(n):
            d, s, e, m = ds_ids[i], f"{subject[i]:05d}", session[i], mods[i]
            ses_dir, ses_ent = (f"ses-{e:02d}/", f"ses-{e:02d}_") if e else ("", "")
            if derived[i]:
                stem = f"{d}/sub-{s}/{ses_dir}dwi/sub-{s}_{ses_ent}run-{i}_dwi_00000"
                image, source = f"{stem}/{m}.nii.gz", f"{d}_{i // 2 * 2:08x}dwi"
            else:
                stem = f"{d}/sub-{s}/{ses_dir}anat/sub-{s}_{ses_ent}run-{i}_{m}"
                image, source = f"{stem}.nii.gz", ""
            row = {
                "image_path": image,
                "unique_id": f"{d}_{i:08x}",
                "anon_mask_path": f"{stem}_anon_mask.nii.gz",
                "anat_mask_path": f"{stem}_anat_mask.nii.gz",
                "derived_from": source,
                **{k: v[i] for k, v in columns.items()},
            }
            fh.write(",".join(_quoted(row[c]) for c in COLUMNS) + "\n")


def _quoted(value: object) -> str:
    text = str(value)
    return f'"{text}"' if "," in text else text


def child_cpu(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process run to completion."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=113921)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    curate = Path(sys.executable).parent / "curate"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = work / "openneuro_metadata.csv"
        t = time.perf_counter()
        fake_csv(csv, args.rows, args.seed)
        print(
            f"{csv.name}: {args.rows} rows, {csv.stat().st_size / 2**20:.1f} MiB, "
            f"written in {time.perf_counter() - t:.1f} s"
        )
        ours_cmd = [str(curate), "build-manifest", "--index", str(csv), "--iqs-max", "2.5"]
        peer_cmd = [sys.executable, "-c", PEER, str(csv), str(work / "peer.parquet")]
        child_cpu(ours_cmd, work)  # warm the page cache for both
        runs: dict[str, list[tuple[float, float]]] = {"ours": [], "peer": []}
        for _ in range(args.repeats):
            runs["ours"].append(child_cpu(ours_cmd, work))
            runs["peer"].append(child_cpu(peer_cmd, work))
        med = {
            k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v))
            for k, v in runs.items()
        }
        print(
            f"ours: curate build-manifest --index {csv.name} --iqs-max 2.5: "
            f"{med['ours'][0]:.2f} CPU-s ({med['ours'][1]:.2f} s wall)"
        )
        print(
            f"peer: pandas read_csv + filter + to_parquet: {med['peer'][0]:.2f} CPU-s "
            f"({med['peer'][1]:.2f} s wall)"
        )
        ratio = med["ours"][0] / med["peer"][0]
        verdict = "met" if ratio <= TARGET else "NOT met"
        print(
            f"ratio (CPU): {ratio:.2f}x  [target <= {TARGET}x: {verdict}; median of "
            f"{args.repeats} alternating runs each]"
        )


if __name__ == "__main__":
    main()
