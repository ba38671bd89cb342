"""MAE pre-training throughput on one GPU, in at most ~5 minutes.

Reports, for ResEnc-L at 160^3, global batch 2, bf16 autocast (the trainer's
step: block masking, zero fill, forward, masked L2, backward, grad clip 12,
SGD Nesterov):

1. steps/s without torch.compile (data already on the GPU) and the peak GPU
   memory of those steps;
2. the patch loader's patches/s with 8 worker processes (`make_loader` on a
   store this script makes: synthetic 1 mm heads run through `curate
   preprocess`'s function), each worker's host memory (peak RSS, which
   counts the pages shared with the parent after fork, and the largest
   private resident memory seen) and the first batch's latency (worker start);
3. the same training step fed by that loader: the fraction of the step time
   the GPU waits on data (time blocked in the loader plus the host-to-device
   copy, over the whole step time);
4. steps/s with torch.compile (inductor), in a child process given what is
   left of the time budget: its warm-up (compilation) is timed and counted
   inside the budget; a warm-up that does not fit is reported as such.

Without a CUDA device it prints "no CUDA device" and exits 0 (nothing measured).

The GPU machine has no network and may lack blosc2, dynamic-network-
architectures and einops. Bring their wheels along, made on a machine with
network for the GPU machine's Python version (here 3.11) and platform::

    pip download blosc2 dynamic-network-architectures einops --no-deps -d wheels/ \\
        --python-version 3.11 --platform manylinux2014_x86_64 --only-binary=:all:
    # if blosc2's own dependencies are missing there too, add:
    pip download ndindex msgpack numexpr py-cpuinfo --no-deps -d wheels/ \\
        --python-version 3.11 --platform manylinux2014_x86_64 --only-binary=:all:

then run from the repository root::

    python benchmarks/train_gpu.py --wheels wheels/ [--budget 300] [--json out.json]

`--wheels` installs (`pip install --no-index --no-deps`) every wheel in the
folder whose module is missing. The results are printed and, with `--json` (or
when $OUT is set: $OUT/train_gpu.json), written as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PATCH, BATCH, WORKERS = 160, 2, 8
NEEDED = {
    "blosc2": "blosc2",
    "dynamic_network_architectures": "dynamic_network_architectures",
    "einops": "einops",
}


def say(text: str) -> None:
    print(text, flush=True)


def install_wheels(folder: Path) -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if not missing:
        say("wheels: blosc2, dynamic-network-architectures and einops already installed")
        return
    wheels = sorted(str(p) for p in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"missing {', '.join(missing)} and no wheels in {folder}")
    say(f"wheels: installing {len(wheels)} from {folder} (missing: {', '.join(missing)})")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--find-links",
            str(folder),
            *wheels,
        ],
        check=True,
    )
    importlib.invalidate_caches()


# --- the training step ------------------------------------------------------------


def make_step(compile_backend: str | None):
    """(model, step(image, index, step_no) -> loss tensor) for ResEnc-L on cuda."""
    import torch

    from openmind_curate.train import models
    from openmind_curate.train.mae import apply_mask, batch_masks, mae_loss

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = models.build("resenc-l").cuda()
    opt = torch.optim.SGD(
        model.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5
    )
    net = torch.compile(model, backend=compile_backend) if compile_backend else model

    def step(image, index, step_no):
        mask = batch_masks(image.shape[2:], index, step_no, 0, 16, 0.75, device=image.device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            pred = net(apply_mask(image, mask))
        loss = mae_loss(pred.float(), image, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        opt.step()
        return loss

    return model, step


def time_steps(step, warmup: int, steps: int, max_s: float) -> dict:
    import torch

    image = torch.randn(BATCH, 1, PATCH, PATCH, PATCH, device="cuda")
    index = list(range(BATCH))
    t0 = time.perf_counter()
    for i in range(warmup):
        step(image, index, i)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0, n = time.perf_counter(), 0
    while n < steps and (n < 3 or time.perf_counter() - t0 < max_s):
        step(image, index, warmup + n)
        n += 1
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {
        "warmup_s": round(warm, 2),
        "steps": n,
        "steps_per_s": round(n / dt, 3),
        "step_ms": round(1000 * dt / n, 1),
    }


def phase_eager() -> dict:
    import torch

    torch.cuda.reset_peak_memory_stats()
    _, step = make_step(None)
    out = time_steps(step, warmup=3, steps=15, max_s=30)
    out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def phase_compile_child(budget: float) -> None:
    """Run in a child process: print one JSON line."""
    import torch

    t0 = time.perf_counter()
    torch.cuda.reset_peak_memory_stats()
    _, step = make_step("inductor")
    out = time_steps(step, warmup=2, steps=15, max_s=max(5.0, budget - 60))  # warm-up: compile
    out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(out), flush=True)


# --- the loader -------------------------------------------------------------------


def make_store(root: Path, n: int = 12) -> Path:
    """Synthetic 1 mm heads (an ellipsoid with texture) through `preprocess`."""
    import numpy as np
    import pandas as pd

    from openmind_curate.jobs import JobOptions
    from openmind_curate.nifti_io import save_nifti
    from openmind_curate.train import preprocess as P

    shape = (176, 208, 176)
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij")
    rows = []
    for i in range(n):
        rng = np.random.default_rng(i)
        radius = sum((g / r) ** 2 for g, r in zip(grids, rng.uniform(0.75, 0.9, 3), strict=True))
        vol = np.where(radius < 1, 400 + 100 * np.sin(8 * grids[0]) * np.cos(6 * grids[1]), 0)
        vol = (vol + rng.normal(0, 10, shape) * (radius < 1)).astype(np.float32)
        name = f"sub-{i:02d}_T1w.nii"
        save_nifti(vol, np.eye(4), root / name)
        rows.append(
            {
                "image_id": f"img{i:02d}",
                "dataset_id": "ds-bench",
                "subject": f"{i:02d}",
                "split": "val" if i == n - 1 else "train",
                "modality": "T1w",
                "root": str(root),
                "path": name,
                "anat_mask_path": None,
                "anon_mask_path": None,
            }
        )
    workers = min(16, os.cpu_count() or 1)
    res = P.preprocess(
        pd.DataFrame(rows),
        root / "store",
        P.PreprocessConfig(),
        JobOptions(workers=workers, progress=False),
    )
    if not res.batch.ok:
        raise RuntimeError(res.batch.summary())
    return root / "store"


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
    return kids


def _hwm_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _private_kib(pid: int) -> int:
    """Private (unshared) resident memory: what the worker itself costs."""
    total = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


class WorkerMemory:
    """Per child process of this one: peak resident memory (VmHWM, which counts
    the pages inherited from the parent at fork) and the largest private
    resident memory seen (sampled every 0.5 s: the worker's own cost)."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self.private: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in _children(os.getpid()):
                self.peak[pid] = max(self.peak.get(pid, 0), _hwm_kib(pid))
                self.private[pid] = max(self.private.get(pid, 0), _private_kib(pid))
            self._stop.wait(0.5)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        peak = sorted(v for v in self.peak.values() if v)
        private = sorted(v for v in self.private.values() if v)
        if not peak:
            return {}
        return {
            "workers_seen": len(peak),
            "rss_peak_max_mib": round(peak[-1] / 1024, 1),
            "private_max_mib": round(private[-1] / 1024, 1) if private else None,
            "private_median_mib": round(private[len(private) // 2] / 1024, 1) if private else None,
        }


def phase_loader(store_path: Path, seconds: float) -> dict:
    from openmind_curate.train.loader import LoaderConfig, make_loader
    from openmind_curate.train.store import open_store

    store = open_store(store_path)
    cfg = LoaderConfig(patch=PATCH, global_batch=BATCH, seed=0)
    with WorkerMemory() as mem:
        t0 = time.perf_counter()
        it = make_loader(store, cfg, 0, 0, 1, WORKERS, pin_memory=True)
        next(it)
        first = time.perf_counter() - t0
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            next(it)
            n += 1
        dt = time.perf_counter() - t0
        del it
    return {
        "workers": WORKERS,
        "first_batch_s": round(first, 2),
        "patches_per_s": round(n * BATCH / dt, 2),
        "batches": n,
        "worker_memory": mem.summary(),
    }


def phase_fed(store_path: Path, steps: int, max_s: float) -> dict:
    import torch

    from openmind_curate.train.loader import LoaderConfig, make_loader
    from openmind_curate.train.store import open_store

    store = open_store(store_path)
    cfg = LoaderConfig(patch=PATCH, global_batch=BATCH, seed=0)
    _, step = make_step(None)
    it = make_loader(store, cfg, 0, 0, 1, WORKERS, pin_memory=True)
    wait = total = 0.0
    n = 0
    t_start = time.perf_counter()
    for i in range(3 + steps):
        t0 = time.perf_counter()
        batch = next(it)
        image = batch["image"].cuda(non_blocking=True)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        step(image, batch["index"], i)
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= 3:  # after the workers' start and cudnn's autotuning
            wait, total, n = wait + (t1 - t0), total + (t2 - t0), n + 1
            if time.perf_counter() - t_start > max_s:
                break
    del it
    return {
        "steps": n,
        "steps_per_s": round(n / total, 3),
        "gpu_waits_on_data_fraction": round(wait / total, 3),
    }


# --- main -------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, help="folder of wheels to install when missing")
    ap.add_argument("--budget", type=float, default=300, help="seconds in all (default 300)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--phase", choices=["compile"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    t_start = time.perf_counter()

    import torch

    if not torch.cuda.is_available():
        say("no CUDA device: this benchmark needs a GPU; nothing measured")
        return 0
    if args.phase == "compile":
        phase_compile_child(args.budget)
        return 0
    if args.wheels:
        install_wheels(args.wheels)
    results: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "patch": PATCH,
        "batch": BATCH,
        "amp": "bf16",
    }
    left = lambda: args.budget - (time.perf_counter() - t_start)  # noqa: E731

    say(
        f"{results['device']}, torch {torch.__version__}: ResEnc-L MAE, {PATCH}^3, "
        f"batch {BATCH}, bf16; budget {args.budget:.0f} s"
    )
    results["eager"] = phase_eager()
    say(f"eager: {results['eager']}")
    torch.cuda.empty_cache()

    with tempfile.TemporaryDirectory(prefix="omc-train-bench-") as tmp:
        try:
            t0 = time.perf_counter()
            store = make_store(Path(tmp))
            results["store_s"] = round(time.perf_counter() - t0, 1)
            results["loader"] = phase_loader(store, seconds=min(20, max(5, left() - 200)))
            say(f"loader: {results['loader']}")
            results["fed"] = phase_fed(store, steps=30, max_s=min(30, max(5, left() - 160)))
            say(f"fed by the loader: {results['fed']}")
        except Exception as exc:  # noqa: BLE001 - report and go on to compile
            results["loader_error"] = f"{type(exc).__name__}: {exc}"
            say(f"loader phases failed: {results['loader_error']}")
    torch.cuda.empty_cache()

    budget = left() - 10
    if budget < 60:
        results["compile"] = {"skipped": f"only {budget:.0f} s left"}
    else:
        cmd = [sys.executable, __file__, "--phase", "compile", "--budget", str(budget)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            results["compile"] = (
                json.loads(lines[-1][7:])
                if lines
                else {"error": (done.stderr or done.stdout)[-1500:]}
            )
        except subprocess.TimeoutExpired:
            results["compile"] = {"skipped": f"warm-up and steps exceeded {budget:.0f} s"}
    say(f"compile: {results['compile']}")
    results["total_s"] = round(time.perf_counter() - t_start, 1)

    eager, comp = results["eager"], results["compile"]
    say("\nsummary")
    say(
        f"  steps/s eager     {eager['steps_per_s']}  (peak GPU memory "
        f"{eager['peak_gpu_mem_gib']} GiB)"
    )
    if "steps_per_s" in comp:
        say(f"  steps/s compiled  {comp['steps_per_s']}  (warm-up {comp['warmup_s']} s)")
    if "loader" in results:
        ld = results["loader"]
        say(
            f"  loader            {ld['patches_per_s']} patches/s with {WORKERS} workers; "
            f"worker memory {ld['worker_memory']}"
        )
    if "fed" in results:
        say(f"  GPU waits on data {results['fed']['gpu_waits_on_data_fraction']:.1%} of the step")
    say(f"  total             {results['total_s']} s")
    path = args.json or (
        Path(os.environ["OUT"]) / "train_gpu.json" if os.environ.get("OUT") else None
    )
    if path:
        path.write_text(json.dumps(results, indent=1))
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
