"""Crawl speed: openmind-curate's crawler against pybids' BIDSLayout, same corpus, one run.

Generates a corpus of real (small) NIfTI files with sidecars and participants
tables (default 300 datasets, 30,000 images), then times:

- our crawl (all cores given, default 2), header reads, inheritance and
  participants join included, with its peak memory (main process + workers);
- a no-change re-crawl of the whole corpus;
- pybids ``BIDSLayout(validate=False, index_metadata=True)`` plus
  ``get_metadata()`` per image (what our index holds), on the same corpus
  (``--pybids-datasets N`` limits it to the first N datasets for a quick run).

    python benchmarks/crawl_vs_pybids.py [--datasets 300] [--images 30000] [--workers 2]

Targets (docs/design/index.md, issue 3): >= 30x pybids, >= 3,000 images/s on 2 cores,
peak memory < 1 GiB, no-change re-crawl < 2 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SUFFIXES = (("anat", "T1w"), ("anat", "T2w"), ("anat", "FLAIR"), ("dwi", "dwi"), ("anat", "PDw"))


def _nifti_bytes(shape: tuple[int, ...], seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 500, shape).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.2, 1.0]))
    buf = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": buf})
    img.to_file_map(file_map)
    import gzip

    return gzip.compress(buf.getvalue(), mtime=0)


def make_corpus(root: Path, n_datasets: int, n_images: int) -> None:
    per_ds = max(1, n_images // n_datasets)
    n_sub = max(1, per_ds // len(SUFFIXES))
    blobs = {
        s: _nifti_bytes((8, 8, 6) if s != "dwi" else (8, 8, 6, 7), i)
        for i, (_, s) in enumerate(SUFFIXES)
    }
    for d in range(n_datasets):
        ds = root / f"ds{d:06d}"
        ds.mkdir(parents=True)
        (ds / "dataset_description.json").write_text('{"Name": "bench", "BIDSVersion": "1.9.0"}')
        (ds / "T1w.json").write_text(json.dumps({"RepetitionTime": 2.3, "Manufacturer": "X"}))
        (ds / "dwi.bval").write_text("0 1000 1000 1000 1000 1000 1000\n")
        (ds / "dwi.bvec").write_text("\n".join(["0 1 0 0 0.7 0.7 0"] * 3) + "\n")
        lines = ["participant_id\tage\tsex\thandedness"]
        lines += [f"sub-{s:03d}\t{20 + s % 50}\t{'MF'[s % 2]}\tR" for s in range(n_sub)]
        (ds / "participants.tsv").write_text("\n".join(lines) + "\n")
        written = 0
        for s in range(n_sub):
            for datatype, suffix in SUFFIXES:
                if written >= per_ds:
                    break
                folder = ds / f"sub-{s:03d}" / datatype
                folder.mkdir(parents=True, exist_ok=True)
                stem = f"sub-{s:03d}_{suffix}"
                (folder / f"{stem}.nii.gz").write_bytes(blobs[suffix])
                (folder / f"{stem}.json").write_text(json.dumps({"EchoTime": 0.003 + s * 1e-5}))
                written += 1


_OURS = """
import json, resource, sys, time
from openmind_curate.bids.crawl import crawl, CrawlOptions
from openmind_curate.jobs import JobOptions
root, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
jobs = JobOptions(workers=workers, progress=False)
t = time.perf_counter()
r = crawl([root], out, CrawlOptions(), jobs)
first = time.perf_counter() - t
t = time.perf_counter()
again = crawl([root], out, CrawlOptions(), jobs)
second = time.perf_counter() - t
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
print(json.dumps(dict(images=r.n_images, seconds=first, recrawl=second,
                      unchanged=again.n_unchanged, datasets=r.n_datasets, rss_mb=rss)))
"""


def run_ours(root: Path, out: Path, workers: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _OURS, str(root), str(out), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_pybids(root: Path, n_datasets: int | None) -> tuple[int, float]:
    from bids import BIDSLayout, BIDSLayoutIndexer

    images, start = 0, time.perf_counter()
    for ds in sorted(root.iterdir())[:n_datasets]:
        indexer = BIDSLayoutIndexer(validate=False, index_metadata=True)
        layout = BIDSLayout(ds, validate=False, indexer=indexer)
        files = layout.get(extension=[".nii", ".nii.gz"])
        for f in files:  # what our index holds: each image's inherited metadata
            f.get_metadata()
        images += len(files)
    return images, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=300)
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--pybids-datasets",
        type=int,
        default=None,
        help="give pybids only the first N datasets [default: all]",
    )
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "corpus"
        if not root.exists():
            t = time.perf_counter()
            make_corpus(root, args.datasets, args.images)
            print(
                f"generated {args.images} images in {args.datasets} datasets "
                f"in {time.perf_counter() - t:.0f} s"
            )
        ours = run_ours(root, Path(tmp) / "index" / "images.parquet", args.workers)
        n_pybids, t_pybids = run_pybids(root, args.pybids_datasets)
    our_rate = ours["images"] / ours["seconds"]
    their_rate = n_pybids / t_pybids
    print(f"cores: {os.cpu_count()}, workers: {args.workers}")
    print(
        f"openmind-curate  {ours['images']:7d} images  {ours['seconds']:7.2f} s  "
        f"{our_rate:8.0f} images/s   peak RSS {ours['rss_mb']:.0f} MB"
    )
    subset = f"first {args.pybids_datasets} datasets" if args.pybids_datasets else "all datasets"
    print(
        f"pybids           {n_pybids:7d} images  {t_pybids:7.2f} s  {their_rate:8.0f} images/s"
        f"   ({subset}, validate=False, metadata indexed)"
    )
    print(f"ratio            {our_rate / their_rate:.1f}x   (target >= 30x)")
    print(
        f"no-change re-crawl of {ours['datasets']} datasets: {ours['recrawl']:.2f} s "
        f"({ours['unchanged']} unchanged; target < 2 s)"
    )


if __name__ == "__main__":
    main()
