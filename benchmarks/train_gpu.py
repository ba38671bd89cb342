"""Pre-training on one GPU as `curate train` runs it, in at most ~5 minutes.

NOT YET RUN ON A GPU in this version (written and run on a CPU-only machine,
where it prints "no CUDA device" and exits 0; `--smoke` runs the method
phases on the CPU with the tiny networks, to check the script itself).

0. Every method at the paper's patch and batch (the method's recipe), in
   priority order (`METHOD_PHASES`: MAE, S3D, SimCLR and VoCo on ResEnc-L,
   then MAE on Primus-M, then the rest), each time-boxed (`--per-method`
   seconds): steps/s of the trainer's own step (the method's CPU `prepare`
   included, data handed over on the CPU as the loader does) and the peak
   GPU memory; an OOM is reported as such. Each result is written to the
   JSON file as soon as it is measured.

Then the MAE deep-dive:

ResEnc-L at 160^3, bf16 autocast, the trainer's own step (`trainer.make_step`:
block masking, zero fill, forward, masked L2, backward, grad clip 12, SGD
Nesterov), at global batch 8: what a single-GPU `curate train` puts on one card.

1. Memory probe: the peak GPU memory of one step at batch 8 with --accumulate
   1, 2 and 4 (OOM reported as such), the per-sample and fixed costs that
   follow from them (to check `trainer.ACCUMULATE_COST_GIB`, a guess until
   this runs) and what --accumulate auto picks on this card.
2. steps/s at batch 8 with the fewest micro-batches that fit (the headline),
   data already on the GPU, without torch.compile.
3. The patch loader's patches/s with 8 worker processes (`make_loader` on a
   store this script makes: synthetic 1 mm heads through `curate
   preprocess`'s function), each worker's host memory and the first batch's
   latency; then the training step fed by it: the fraction of the step the
   GPU waits on data.
4. steps/s with torch.compile (inductor), in a child process given what is
   left of the budget (its warm-up counted inside it).
5. nnU-Net fine-tuning steps/s (`finetune_steps_per_s`): `curate finetune`'s Sawtooth trainer on
   ResEnc-L at batch 2 and 160^3, with nnU-Net's own data loading and augmentation.

Bare GPU hosts: the host may have Python and torch and nothing else, and no
network. Bring the wheels along in a folder that travels with the repository
(kept out of git), made on a machine with network for the host's Python
(here 3.11) and platform. The ResEnc-L path imports blosc2 (which needs
ndindex, msgpack, pydantic, rich, threadpoolctl and httpx[http2] since 4.x),
dynamic-network-architectures, nibabel, SimpleITK, pandas, pyarrow, scipy and
rich; let pip resolve their dependencies for the target, and add the network
package without its (torch-pulling) dependencies::

    pip download blosc2 nibabel SimpleITK pandas pyarrow scipy rich -d wheels/ \\
        --python-version 3.11 --platform manylinux2014_x86_64 --only-binary=:all:
    pip download "dynamic-network-architectures>=0.4.4,<0.5" einops --no-deps \\
        -d wheels/ --python-version 3.11 --platform manylinux2014_x86_64 \\
        --only-binary=:all:

then run from the repository root::

    python benchmarks/train_gpu.py --wheels wheels/ [--budget 300] [--json out.json]

`--wheels` installs the folder's wheels one at a time (`pip install
--no-index --no-deps`), skipping those already installed, and reports each
(installed / already present / failed: reason) and goes on. Before measuring,
every import the script needs is tried, and what is missing is reported on one
line (exit 1 on a GPU host). The results are printed and, with `--json` (or
when $OUT is set: $OUT/train_gpu.json), written as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PATCH, BATCH, WORKERS = 160, 8, 8
#: (method, architecture) by priority: what the paper's findings rest on first.
METHOD_PHASES = (
    ("mae", "resenc-l"),
    ("s3d", "resenc-l"),
    ("simclr", "resenc-l"),
    ("voco", "resenc-l"),
    ("mae", "primus-m"),
    ("models-genesis", "resenc-l"),
    ("volume-fusion", "resenc-l"),
    ("swinunetr", "resenc-l"),
    ("simmim", "primus-m"),
    ("simclr", "primus-m"),
    ("voco", "primus-m"),
    ("volume-fusion", "primus-m"),
    ("models-genesis", "primus-m"),
    ("swinunetr", "primus-m"),
)
PROBE_ACCUMULATE = (1, 2, 4)
#: Every import the measurements make: third-party first, then this package's
#: modules (whose own imports, such as rich through `atomic`, are tried with them).
NEEDED = (
    "torch",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "nibabel",
    "SimpleITK",
    "rich",
    "blosc2",
    "dynamic_network_architectures",
    "openmind_curate.train.trainer",
    "openmind_curate.train.loader",
    "openmind_curate.train.preprocess",
    "openmind_curate.train.store",
    "openmind_curate.nifti_io",
)


def say(text: str) -> None:
    print(text, flush=True)


# --- what the host lacks ----------------------------------------------------------


def _wheel_name(wheel: Path) -> tuple[str, str]:
    """(distribution name, version) from a wheel's file name."""
    name, version = wheel.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def _installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_wheels(folder: Path) -> dict[str, str]:
    """Each wheel of `folder` not installed yet, one `pip install --no-index
    --no-deps` at a time: one that does not fit this host fails alone. Returns
    {wheel: "installed" | "already present (version)" | "failed: reason"}."""
    report: dict[str, str] = {}
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        say(f"wheels: none in {folder}")
    for wheel in wheels:
        name, _ = _wheel_name(wheel)
        have = _installed_version(name)
        if have is not None:
            report[wheel.name] = f"already present ({have})"
        else:
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
            done = subprocess.run([*cmd, str(wheel)], capture_output=True, text=True)
            lines = [x for x in (done.stderr or done.stdout).splitlines() if x.strip()]
            reason = lines[-1].strip() if lines else f"exit {done.returncode}"
            report[wheel.name] = "installed" if done.returncode == 0 else f"failed: {reason}"
        say(f"wheel {wheel.name}: {report[wheel.name]}")
    importlib.invalidate_caches()
    return report


def missing_imports(modules: tuple[str, ...] = NEEDED) -> list[str]:
    """The modules whose import fails, once each: the module a failed import
    lacks, with the one that needed it when that is not itself in `modules`
    (``httpx (for blosc2)``)."""
    lacking: dict[str, str] = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            lacks = getattr(exc, "name", None) or str(exc)
            lacking.setdefault(lacks, module)
    return [m if m == by or m in modules else f"{m} (for {by})" for m, by in lacking.items()]


# --- the training step ------------------------------------------------------------


def make_step(accumulate: int, compile_backend: str = ""):
    """The trainer's step for ResEnc-L at PATCH^3 and global batch BATCH on this
    GPU (bf16): (resolved config, step(batch, step_no) -> loss)."""
    from openmind_curate.train.trainer import TrainConfig, make_step

    out = tempfile.mkdtemp(prefix="omc-train-bench-run-")
    config = TrainConfig(
        out=out,
        arch="resenc-l",
        patch=PATCH,
        global_batch=BATCH,
        amp="bf16",
        compile=compile_backend,
        accumulate=accumulate,
        progress=False,
    )
    return make_step(config)


def gpu_batch(step_no: int = 0) -> dict:
    import torch

    image = torch.randn(BATCH, 1, PATCH, PATCH, PATCH, device="cuda")
    return {"image": image, "anon": torch.zeros_like(image), "index": list(range(BATCH))}


def _free_gpu() -> None:
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def probe_one(accumulate: int) -> dict:
    """Peak memory of the first step (cuDNN's autotuning included) and of the
    second (steady state: momentum buffers exist) at batch BATCH."""
    import torch

    _free_gpu()
    torch.cuda.reset_peak_memory_stats()
    try:
        _, step = make_step(accumulate)
        batch = gpu_batch()
        t0 = time.perf_counter()
        step(batch, 0)
        first = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(batch, 1)
        torch.cuda.synchronize()
        return {
            "first_step_peak_gib": round(first / 2**30, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "two_steps_s": round(time.perf_counter() - t0, 2),
        }
    except torch.cuda.OutOfMemoryError as exc:
        return {"oom": str(exc).splitlines()[0][:200]}
    finally:
        step = batch = None  # noqa: F841 - drop the model before the next probe
        _free_gpu()


def phase_probe() -> dict:
    """`probe_one` for each of PROBE_ACCUMULATE; the costs they imply; auto's pick."""
    import torch

    from openmind_curate.train.trainer import ACCUMULATE_COST_GIB, auto_accumulate

    out: dict = {f"accumulate_{n}": probe_one(n) for n in PROBE_ACCUMULATE}
    peaks = {n: out[f"accumulate_{n}"].get("peak_gib") for n in PROBE_ACCUMULATE}
    fit = [n for n in PROBE_ACCUMULATE if peaks[n] is not None]
    if len(fit) >= 2:  # peak = fixed + (BATCH / n) * per_sample: two points give both
        a, b = fit[0], fit[1]
        per_sample = (peaks[a] - peaks[b]) / (BATCH / a - BATCH / b)
        out["per_sample_gib"] = round(per_sample, 2)
        out["fixed_gib"] = round(peaks[a] - BATCH / a * per_sample, 2)
    per_sample_assumed, fixed_assumed = ACCUMULATE_COST_GIB["resenc-l"]
    out["assumed_gib"] = {"per_sample": per_sample_assumed, "fixed": fixed_assumed}
    free, total = torch.cuda.mem_get_info()
    out["auto_picks"] = auto_accumulate(BATCH, free, "resenc-l", PATCH)
    out["fits"] = fit[0] if fit else None
    out["gpu_total_gib"] = round(total / 2**30, 1)
    return out


def time_steps(step, warmup: int, steps: int, max_s: float) -> dict:
    import torch

    batch = gpu_batch()
    t0 = time.perf_counter()
    for i in range(warmup):
        step(batch, i)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0, n = time.perf_counter(), 0
    while n < steps and (n < 3 or time.perf_counter() - t0 < max_s):
        step(batch, warmup + n)
        n += 1
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {
        "warmup_s": round(warm, 2),
        "steps": n,
        "steps_per_s": round(n / dt, 3),
        "step_ms": round(1000 * dt / n, 1),
    }


def phase_eager(accumulate: int) -> dict:
    import torch

    _free_gpu()
    torch.cuda.reset_peak_memory_stats()
    _, step = make_step(accumulate)
    out = time_steps(step, warmup=2, steps=15, max_s=30)
    out["accumulate"] = accumulate
    out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def phase_compile_child(budget: float, accumulate: int) -> None:
    """Run in a child process: print one JSON line."""
    import torch

    t0 = time.perf_counter()
    torch.cuda.reset_peak_memory_stats()
    _, step = make_step(accumulate, "inductor")
    out = time_steps(step, warmup=2, steps=15, max_s=max(5.0, budget - 60))  # warm-up: compile
    out["accumulate"] = accumulate
    out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(out), flush=True)


# --- every method ------------------------------------------------------------------


def method_batch(crop: tuple[int, int, int], batch: int) -> dict:
    """A CPU batch with the loader's keys (smooth noise; the step's cost does
    not depend on the values)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    image = torch.randn(batch, 1, *crop, generator=gen)
    return {
        "image": image,
        "anat": torch.ones_like(image),
        "anon": torch.zeros_like(image),
        "case_id": [f"c{i}" for i in range(batch)],
        "index": list(range(batch)),
    }


def phase_method(method: str, arch: str, max_s: float, smoke: bool = False) -> dict:
    """steps/s and peak memory of `method` on `arch` at its recipe's patch and
    batch (smoke: the tiny network at 32^3 on the CPU, two steps)."""
    import torch

    from openmind_curate.train.methods.registry import TINY_PARAMS
    from openmind_curate.train.trainer import TrainConfig, make_step

    cuda = torch.cuda.is_available() and not smoke
    if cuda:
        _free_gpu()
        torch.cuda.reset_peak_memory_stats()
    tiny = {"resenc-l": "tiny", "primus-m": "tiny-primus"}
    config = TrainConfig(
        out=tempfile.mkdtemp(prefix="omc-method-bench-"),
        method=method,
        arch=tiny[arch] if smoke else arch,
        params=TINY_PARAMS.get(method, {}) if smoke else {},
        patch=32 if smoke else None,
        global_batch=4 if smoke else None,
        amp="bf16" if cuda else "none",
        accumulate=1,
        progress=False,
        device="" if cuda else "cpu",
    )
    out: dict = {"method": method, "arch": config.arch}
    step = batch = None
    try:
        resolved, step = make_step(config)
        crop = resolved.method_object().crop()
        out.update(patch=resolved.patch, crop=list(crop), batch=resolved.global_batch)
        batch = method_batch(crop, resolved.global_batch)
        t0, n, first = time.perf_counter(), 0, None
        while n < (2 if smoke else 12) and (n < 3 or time.perf_counter() - t0 < max_s):
            loss = step(batch, n)
            if cuda:
                torch.cuda.synchronize()
            if n == 0:  # warm-up (cuDNN autotuning): not timed
                first, t0 = time.perf_counter() - t0, time.perf_counter()
            n += 1
        timed = max(n - 1, 1)
        out.update(
            first_step_s=round(first or 0.0, 2),
            steps_per_s=round(timed / (time.perf_counter() - t0), 3),
            loss=round(float(loss), 4),
        )
        if cuda:
            out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    except Exception as exc:  # noqa: BLE001 - one phase's failure is its result
        oom = cuda and isinstance(exc, torch.cuda.OutOfMemoryError)
        out["oom" if oom else "error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    finally:
        step = batch = None  # noqa: F841 - free the model before the next phase
        if cuda:
            _free_gpu()
    return out


def run_method_phases(results: dict, left, per_method: float, path: Path | None, smoke: bool):
    """`phase_method` for each of METHOD_PHASES while the budget lasts,
    written to `path` after each one."""
    results["methods"] = []
    for method, arch in METHOD_PHASES:
        if left() < per_method + 30 and not smoke:
            results["methods"].append({"method": method, "arch": arch, "skipped": "budget"})
            continue
        got = phase_method(method, arch, per_method, smoke)
        results["methods"].append(got)
        say(f"method {method} on {arch}: {got}")
        if path:
            path.write_text(json.dumps(results, indent=1))


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


def phase_fed(store_path: Path, accumulate: int, steps: int, max_s: float) -> dict:
    import torch

    from openmind_curate.train.loader import LoaderConfig, make_loader
    from openmind_curate.train.store import open_store

    store = open_store(store_path)
    cfg = LoaderConfig(patch=PATCH, global_batch=BATCH, seed=0)
    _free_gpu()
    _, step = make_step(accumulate)
    it = make_loader(store, cfg, 0, 0, 1, WORKERS, pin_memory=True)
    wait = total = 0.0
    n = 0
    t_start = time.perf_counter()
    for i in range(3 + steps):
        t0 = time.perf_counter()
        batch = next(it)
        batch["image"] = batch["image"].cuda(non_blocking=True)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        step(batch, i)  # the loss is read back: the step has finished
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


# --- fine-tuning ------------------------------------------------------------------


def finetune_steps_per_s(
    budget_s: float, arch: str = "resenc-l", patch: int = 160, device: str = "cuda"
) -> dict:
    """nnU-Net v2 fine-tuning steps/s of a pre-trained ResEnc-L on this GPU.

    What `curate finetune` runs: the Sawtooth trainer at nnU-Net's batch 2 and
    the checkpoint's recommended 160^3 patch, bf16 autocast, nnU-Net's data
    loading and augmentation in its worker processes, torch.compile off (its
    warm-up would eat the budget). The data: 2 synthetic 192^3 volumes laid
    out as an nnU-Net raw dataset, planned and preprocessed for a random-weight
    ResEnc-L checkpoint in nnssl's layout. Steps are timed after 5 warm-up
    steps, for at most half of `budget_s`; the peak GPU memory is reported.
    (`arch`, `patch`, `device`: a CPU smoke run at toy sizes.)"""
    import shutil
    import tempfile

    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    if importlib.util.find_spec("nnunetv2") is None:
        return {"skipped": "nnunetv2 is not installed (bring its wheels with --wheels)"}
    os.environ["nnUNet_compile"] = "f"
    from openmind_curate.finetune import dataset, run
    from openmind_curate.train import models, nnssl

    work = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    try:
        size = max(96, patch + patch // 5)
        data = dataset.write_toy_dataset(work / "Dataset777_Bench", n_cases=2, n=size)
        ckpt = work / "nnssl_checkpoint.pth"
        meta = models.EncoderMeta(arch, (patch,) * 3, (1.0, 1.0, 1.0))
        nnssl.save_checkpoint(models.build(arch), ckpt, meta)
        config = run.FinetuneConfig(data=data, out=work / "run", pretrained=ckpt, folds=("all",))
        run.set_processes()
        prepared = run.prepare(config, run.check(config), lambda _: None)
        settings = run.settings_for(config, prepared.pretrained)
        with run.nnunet_env(prepared.run, None if device == "cuda" else 0):
            trainer = run.make_trainer(prepared, settings, "all", device)
            trainer.on_train_start()
            trainer.on_train_epoch_start()
            for _ in range(5):
                trainer.train_step(next(trainer.dataloader_train))
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start, steps = time.perf_counter(), 0
            while time.perf_counter() - start < budget_s / 2 and steps < 200:
                trainer.train_step(next(trainer.dataloader_train))
                steps += 1
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            trainer.on_train_end()
        return {
            "steps_per_s": round(steps / seconds, 3),
            "steps": steps,
            "batch": trainer.batch_size,
            "patch": patch,
            "peak_gib": None if peak is None else round(peak, 2),
            "trainer": type(trainer).__name__,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- main -------------------------------------------------------------------------


def run_compile(budget: float, accumulate: int) -> dict:
    """`phase_compile_child` in a child process, within `budget` seconds."""
    if budget < 60:
        return {"skipped": f"only {budget:.0f} s left"}
    cmd = [sys.executable, __file__, "--phase", "compile", "--budget", str(budget)]
    try:
        done = subprocess.run(
            [*cmd, "--accumulate", str(accumulate)],
            capture_output=True,
            text=True,
            timeout=budget,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"warm-up and steps exceeded {budget:.0f} s"}
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else {"error": (done.stderr or done.stdout)[-1500:]}


def run_loader_phases(results: dict, accumulate: int, left) -> None:
    with tempfile.TemporaryDirectory(prefix="omc-train-bench-") as tmp:
        try:
            t0 = time.perf_counter()
            store = make_store(Path(tmp))
            results["store_s"] = round(time.perf_counter() - t0, 1)
            results["loader"] = phase_loader(store, seconds=min(20, max(5, left() - 200)))
            say(f"loader: {results['loader']}")
            max_s = min(30, max(5, left() - 160))
            results["fed"] = phase_fed(store, accumulate, steps=30, max_s=max_s)
            say(f"fed by the loader: {results['fed']}")
        except Exception as exc:  # noqa: BLE001 - report and go on to compile
            results["loader_error"] = f"{type(exc).__name__}: {exc}"
            say(f"loader phases failed: {results['loader_error']}")


def summary(results: dict) -> None:
    probe, eager, comp = results["probe"], results.get("eager", {}), results["compile"]
    say("\nsummary")
    for n in PROBE_ACCUMULATE:
        p = probe[f"accumulate_{n}"]
        say(
            f"  batch {BATCH}, accumulate {n}: "
            + (f"OOM ({p['oom']})" if "oom" in p else f"peak {p['peak_gib']} GiB")
        )
    say(f"  --accumulate auto picks {probe['auto_picks']}; fewest that fit {probe['fits']}")
    if "per_sample_gib" in probe:
        say(
            f"  measured {probe['per_sample_gib']} GiB a sample + {probe['fixed_gib']} GiB "
            f"fixed (assumed {probe['assumed_gib']})"
        )
    if "steps_per_s" in eager:
        say(
            f"  steps/s eager     {eager['steps_per_s']}  (batch {BATCH}, accumulate "
            f"{eager['accumulate']}, peak {eager['peak_gpu_mem_gib']} GiB)"
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
    say(f"  fine-tuning       {results['finetune']}")


def preflight_host(args) -> int | None:
    """Wheels, imports and the GPU: an exit code when nothing can be measured."""
    if args.wheels:
        install_wheels(args.wheels)
    missing = missing_imports()
    if "torch" in missing:
        say(f"missing imports: {', '.join(missing)}; nothing measured")
        return 1
    import torch

    if not torch.cuda.is_available():
        note = f" (missing imports: {', '.join(missing)})" if missing else ""
        say(f"no CUDA device: this benchmark needs a GPU; nothing measured{note}")
        return 0
    if missing:
        say(f"missing imports: {', '.join(missing)}; bring their wheels (--wheels, see --help)")
        return 1
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, help="folder of wheels to install when missing")
    ap.add_argument("--budget", type=float, default=300, help="seconds in all (default 300)")
    ap.add_argument(
        "--per-method", type=float, default=20, help="seconds per method phase (default 20)"
    )
    ap.add_argument(
        "--smoke", action="store_true", help="the method phases on the CPU, tiny networks"
    )
    ap.add_argument("--only-methods", action="store_true", help="skip the MAE deep-dive")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--phase", choices=["compile"], help=argparse.SUPPRESS)
    ap.add_argument("--accumulate", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.phase == "compile":
        phase_compile_child(args.budget, args.accumulate)
        return 0
    path = args.json or (
        Path(os.environ["OUT"]) / "train_gpu.json" if os.environ.get("OUT") else None
    )
    left = lambda: args.budget - (time.perf_counter() - t_start)  # noqa: E731
    if args.smoke:
        results: dict = {"device": "cpu (smoke)"}
        run_method_phases(results, left, args.per_method, path, smoke=True)
        bad = [m for m in results["methods"] if "steps_per_s" not in m]
        say(f"smoke: {len(results['methods']) - len(bad)} method phases ran, {len(bad)} failed")
        return 1 if bad else 0
    code = preflight_host(args)
    if code is not None:
        return code
    import torch

    results = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "patch": PATCH,
        "batch": BATCH,
        "amp": "bf16",
    }
    say(f"{results['device']}, torch {torch.__version__}; budget {args.budget:.0f} s")
    run_method_phases(results, left, args.per_method, path, smoke=False)
    if args.only_methods:
        return _finish(results, t_start, path)
    say(f"MAE deep-dive: ResEnc-L, {PATCH}^3, batch {BATCH}, bf16")
    results["probe"] = phase_probe()
    say(f"memory probe: {results['probe']}")
    accumulate = results["probe"]["fits"]
    if accumulate is None:
        results["compile"] = {"skipped": "batch 8 does not fit at accumulate 4"}
    else:
        results["eager"] = phase_eager(accumulate)
        say(f"eager: {results['eager']}")
        _free_gpu()
        run_loader_phases(results, accumulate, left)
        _free_gpu()
        results["compile"] = run_compile(left() - 70, accumulate)
        say(f"compile: {results['compile']}")
    results["finetune"] = finetune_steps_per_s(max(0.0, left() - 10))
    summary(results)
    return _finish(results, t_start, path)


def _finish(results: dict, t_start: float, path: Path | None) -> int:
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    say(f"  total             {results['total_s']} s")
    if path:
        path.write_text(json.dumps(results, indent=1))
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
