"""Time the default test corpus against its targets (< 60 s, < 300 MB).

There is no peer tool for this one; the script reports our figures and the
budget. Run from the repository root:

    python benchmarks/synth_time.py [--workers 2] [--cold]

--cold rebuilds the cached head model first, as on a fresh machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from openmind_curate.jobs import JobOptions
from openmind_curate.synth import SynthConfig, generate
from openmind_curate.synth.head import cache_dir, head_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="rebuild the head-model cache")
    args = parser.parse_args()
    if args.cold:
        for f in cache_dir().glob("head-model-*.npz"):
            f.unlink()
        head_model.cache_clear()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        truth, _ = generate(tmp, SynthConfig(), JobOptions(workers=args.workers, progress=False))
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 1e6
    print(f"files        {truth.num_rows}")
    print(f"time         {seconds:6.1f} s   (target < 60 s, {seconds / 60:.2f} of budget)")
    print(f"size         {size:6.0f} MB  (target < 300 MB, {size / 300:.2f} of budget)")


if __name__ == "__main__":
    main()
