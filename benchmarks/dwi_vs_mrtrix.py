"""DWI pipeline speed and accuracy: openmind-curate against MRtrix3, one input, one run.

Generates a realistic series (100x116x94 at 2 mm, 5 b0 + 60 directions, SNR 20,
up to 2 degrees / 2 mm of motion, a bias field) with known FA and MD, then:

- ours: the full pipeline (MP-PCA, Gibbs, motion correction with b-vector
  rotation, N4, mask, WLS tensor), in a child process so its peak memory is
  its own;
- MRtrix3 (Debian's `mrtrix3`, installed with apt-get when missing):
  dwidenoise, mrdegibbs, dwi2mask, dwi2tensor, tensor2metric; it has no
  motion correction in this chain.

Both get the same cores (``--threads``, default 2). Prints wall time per step,
the ratio, and each tool's FA and MD error against the truth in white matter
(true FA > 0.4, inside the true brain and the tool's own mask).

    python benchmarks/dwi_vs_mrtrix.py [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from openmind_curate.synth.phantom import dwi_phantom

_OURS = """
import json, resource, sys, numpy as np, nibabel as nib
from threadpoolctl import threadpool_limits
from openmind_curate.dwi.pipeline import run_pipeline, DwiConfig
d = sys.argv[1]; threads = int(sys.argv[2])
img = nib.load(d + "/dwi.nii.gz")
data = np.asanyarray(img.dataobj, dtype=np.float32)
bvals, bvecs = np.loadtxt(d + "/dwi.bval"), np.loadtxt(d + "/dwi.bvec")
with threadpool_limits(1):
    res = run_pipeline(data, img.affine, bvals, bvecs, DwiConfig(threads=threads))
nib.save(nib.Nifti1Image(res.fa, img.affine), d + "/ours_fa.nii.gz")
nib.save(nib.Nifti1Image(res.md, img.affine), d + "/ours_md.nii.gz")
nib.save(nib.Nifti1Image(res.mask, img.affine), d + "/ours_mask.nii.gz")
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": res.seconds, "rss_mb": rss}))
"""


def ensure_mrtrix() -> None:
    if shutil.which("dwidenoise"):
        return
    print("installing Debian's mrtrix3 ...", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "mrtrix3"], check=True)


def run_mrtrix(d: Path, threads: int) -> dict[str, float]:
    nt = ["-nthreads", str(threads), "-quiet", "-force"]
    grad = ["-fslgrad", str(d / "dwi.bvec"), str(d / "dwi.bval")]
    steps = {
        "convert": ["mrconvert", str(d / "dwi.nii.gz"), str(d / "dwi.mif"), *grad],
        "dwidenoise": ["dwidenoise", str(d / "dwi.mif"), str(d / "den.mif")],
        "mrdegibbs": ["mrdegibbs", str(d / "den.mif"), str(d / "deg.mif"), "-axes", "0,1"],
        "dwi2mask": ["dwi2mask", str(d / "deg.mif"), str(d / "mask.mif")],
        "dwi2tensor": [
            "dwi2tensor",
            str(d / "deg.mif"),
            str(d / "dt.mif"),
            "-mask",
            str(d / "mask.mif"),
        ],
        "tensor2metric": [
            "tensor2metric",
            str(d / "dt.mif"),
            "-fa",
            str(d / "mr_fa.nii"),
            "-adc",
            str(d / "mr_md.nii"),
        ],
        "mask export": ["mrconvert", str(d / "mask.mif"), str(d / "mr_mask.nii")],
    }
    seconds = {}
    for name, cmd in steps.items():
        start = time.perf_counter()
        subprocess.run([*cmd, *nt], check=True)
        seconds[name] = time.perf_counter() - start
    return seconds


def errors(d: Path, prefix: str, ext: str, fa_true, md_true, brain) -> tuple[float, float]:
    fa = nib.load(d / f"{prefix}_fa{ext}").get_fdata()
    md = nib.load(d / f"{prefix}_md{ext}").get_fdata()
    mask = nib.load(d / f"{prefix}_mask{ext}").get_fdata() > 0
    wm = brain & (fa_true > 0.4) & mask
    fa_err = float(np.median(np.abs(fa[wm] - fa_true[wm])))
    md_err = float(np.median(np.abs(md[wm] / md_true[wm] - 1)))
    return fa_err, md_err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work in (and keep) this folder")
    parser.add_argument("--skip-mrtrix", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = args.keep or Path(tmp)
        d.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        ph = dwi_phantom()
        nib.save(nib.Nifti1Image(ph.data, ph.affine), d / "dwi.nii.gz")
        np.savetxt(d / "dwi.bval", np.atleast_2d(ph.bvals), fmt="%g")
        np.savetxt(d / "dwi.bvec", ph.bvecs_fsl, fmt="%.6f")
        rot, shift = np.abs(ph.rotations_deg).max(), np.abs(ph.translations_mm).max()
        print(
            f"series {ph.data.shape}, 2 mm, SNR 20, max motion {rot:.1f} deg / {shift:.1f} mm"
            f"; generated in {time.perf_counter() - start:.0f} s"
        )
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _OURS, str(d), str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        ours_wall = time.perf_counter() - start
        ours = json.loads(proc.stdout.strip().splitlines()[-1])
        ours_err = errors(d, "ours", ".nii.gz", ph.fa, ph.md, ph.brain)
        mr, mr_err = {}, (float("nan"), float("nan"))
        if not args.skip_mrtrix:
            ensure_mrtrix()
            mr = run_mrtrix(d, args.threads)
            mr_err = errors(d, "mr", ".nii", ph.fa, ph.md, ph.brain)
    print(f"\n{'step':<16}{'openmind-curate':>16}   {'MRtrix3 step':<16}{'MRtrix3':>10}")
    ours_steps, mr_steps = list(ours["seconds"].items()), list(mr.items())
    for i in range(max(len(ours_steps), len(mr_steps))):
        a = ours_steps[i] if i < len(ours_steps) else ("", None)
        b = mr_steps[i] if i < len(mr_steps) else ("", None)
        fa_ = f"{a[1]:14.1f} s" if a[1] is not None else " " * 16
        fb = f"{b[1]:8.1f} s" if b[1] is not None else ""
        print(f"{a[0]:<16}{fa_}   {b[0]:<16}{fb:>10}")
    mr_total = sum(mr.values())
    print(f"{'total (wall)':<16}{ours_wall:14.1f} s   {'total':<16}{mr_total:8.1f} s")
    if mr:
        print(
            f"ratio: MRtrix3 / openmind-curate = {mr_total / ours_wall:.2f}x "
            "(ours includes loading, motion correction and N4)"
        )
    print(f"WM FA median abs error: ours {ours_err[0]:.4f}   MRtrix3 {mr_err[0]:.4f}")
    print(f"WM MD median rel error: ours {ours_err[1]:.4f}   MRtrix3 {mr_err[1]:.4f}")
    print(f"peak memory (ours, one series): {ours['rss_mb']:.0f} MB (target < 4096 MB)")


if __name__ == "__main__":
    main()
