"""The MAE trainer (openmind_curate.train.trainer) on the tiny network at 32^3, CPU.

The data come from `FakeBatches`, an in-memory source with the loader's batch
contract (random volumes with a bright sphere on a smooth pattern, a pure
function of (seed, step, global sample index)), so these tests do not depend on
the store. The resume test continues in a fresh process; the DDP test runs two
gloo ranks under torchrun.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

from openmind_curate.errors import InputError  # noqa: E402
from openmind_curate.train import models  # noqa: E402
from openmind_curate.train.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from openmind_curate.train.trainer import (  # noqa: E402
    TrainConfig,
    auto_accumulate,
    make_step,
    train,
)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


class FakeBatches:
    """`batches(step, rank, world)`: the rank's share of a global batch."""

    def __init__(
        self, global_batch: int = 2, patch: int = 32, seed: int = 0, anon: bool = False
    ) -> None:
        self.global_batch, self.patch, self.seed, self.anon = global_batch, patch, seed, anon

    def volume(self, step: int, g: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.patch
        rng = np.random.default_rng([self.seed, step, g])
        z, y, x = np.mgrid[:p, :p, :p].astype(np.float32)
        c = rng.uniform(p * 0.3, p * 0.7, 3)
        sphere = ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < (p * 0.2) ** 2
        vol = 2.0 * sphere + np.sin(z / 3.0) + rng.normal(0, 0.1, (p, p, p))
        anon = np.zeros((p, p, p), np.float32)
        if self.anon:
            anon[:, :, : p // 4] = 1.0  # a "defaced" slab
        return vol.astype(np.float32), anon

    def __call__(self, step: int, rank: int = 0, world: int = 1) -> dict:
        share = self.global_batch // world
        index = list(range(rank * share, (rank + 1) * share))
        vols, anons = zip(*(self.volume(step, g) for g in index), strict=True)
        return {
            "image": torch.from_numpy(np.stack(vols))[:, None],
            "anon": torch.from_numpy(np.stack(anons))[:, None],
            "case_id": [f"case{g}" for g in index],
            "index": index,
        }


def tiny(out: Path, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        arch="tiny",
        patch=32,
        global_batch=2,
        epochs=2,
        iters_per_epoch=4,
        params={"mask_block": 8},
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


@pytest.fixture(autouse=True)
def _one_thread():
    # bit-exact comparisons across processes: the same intra-op thread count everywhere
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def run_script(
    code: str, *, torchrun: int = 0, script_dir: Path | None = None, timeout: int = 120
) -> None:
    script = textwrap.dedent(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{TESTS}:{REPO}"}
    if torchrun:
        path = script_dir / "ranks.py"  # torchrun runs a file
        path.write_text(script)
        exe = [sys.executable, "-m", "torch.distributed.run"]  # = torchrun
        cmd = [*exe, "--standalone", f"--nproc-per-node={torchrun}", str(path)]
    else:
        cmd = [sys.executable, "-c", script]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_loss_falls_and_run_files(tmp_path):
    val = [FakeBatches(2, seed=99)(0)]
    result = train(
        tiny(tmp_path / "run", epochs=3, iters_per_epoch=10, val_every=2), FakeBatches(2), val
    )
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first, last = np.mean([r["loss"] for r in log[:5]]), np.mean([r["loss"] for r in log[-5:]])
    assert last < first, (first, last)
    assert [r["step"] for r in log] == list(range(30))
    assert {"step", "epoch", "loss", "lr", "seconds"} <= set(log[0])
    # validation every 2 epochs and at the end; PolyLR per epoch: 1e-2 * (1 - e / 3) ** 0.9
    assert [r["step"] for r in log if "val_loss" in r] == [19, 29]
    assert [log[i]["lr"] for i in (0, 9, 10, 20)] == pytest.approx(
        [1e-2, 1e-2, 1e-2 * (2 / 3) ** 0.9, 1e-2 * (1 / 3) ** 0.9]
    )
    assert result.complete and result.steps == 30 and result.val_loss == log[-1]["val_loss"]
    png = (tmp_path / "run" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_encoder_export_reloads_with_identical_weights(tmp_path):
    train(tiny(tmp_path / "run", epochs=1, iters_per_epoch=2), FakeBatches(2))
    model, meta = models.build_from_encoder(tmp_path / "run" / "encoder.pt", out_channels=3)
    trained = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    enc = {k.removeprefix("encoder."): v for k, v in trained.items() if k.startswith("encoder.")}
    got = model.encoder.state_dict()
    assert got.keys() == enc.keys()
    assert all(torch.equal(got[k], enc[k]) for k in enc)
    assert (meta.arch, meta.patch_size, meta.spacing) == ("tiny", (32, 32, 32), (1.0, 1.0, 1.0))
    assert meta.normalization == "zscore" and meta.method == "mae"
    assert meta.extra["complete"] and meta.extra["steps"] == 2


def test_resume_in_a_fresh_process_is_bit_exact(tmp_path):
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(tiny(straight), FakeBatches(2), [FakeBatches(2, seed=9)(0)])
    first = train(tiny(halves, stop_after=4), FakeBatches(2), [FakeBatches(2, seed=9)(0)])
    assert first.steps == 4 and not first.complete
    assert load_checkpoint(halves / "checkpoint.pt")["step"] == 4
    run_script(f"""
        import torch
        torch.set_num_threads(1)
        from test_trainer import FakeBatches, tiny
        from openmind_curate.train.trainer import train
        r = train(tiny({str(halves)!r}, resume=True), FakeBatches(2),
                  [FakeBatches(2, seed=9)(0)])
        assert r.resumed_from == 4 and r.steps == 8 and r.complete, r
    """)
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(halves / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    mom_a, mom_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(mom_a[k]["momentum_buffer"], mom_b[k]["momentum_buffer"]) for k in mom_a)
    assert losses(straight) == losses(halves) and len(losses(halves)) == 8

    def vals(run: Path) -> list[float | None]:
        return [json.loads(x).get("val_loss") for x in (run / "log.jsonl").read_text().splitlines()]

    assert vals(straight) == vals(halves)
    assert vals(halves)[3] is not None and vals(halves)[7] is not None  # both epoch ends


def half_batch_grads(fake: FakeBatches, world: int) -> dict[str, torch.Tensor]:
    """Step 0's gradients as DDP should make them: each rank's share through the
    trainer's initial network, the mean over the shares, in this process."""
    from openmind_curate.train.mae import apply_mask, batch_masks, mae_loss

    torch.manual_seed(0)  # the trainer's seed and initial weights
    net = models.build("tiny")
    total: dict[str, torch.Tensor] = {}
    for rank in range(world):
        batch = fake(0, rank, world)
        mask = batch_masks((32, 32, 32), batch["index"], 0, 0, block=8)
        net.zero_grad()
        mae_loss(net(apply_mask(batch["image"], mask)), batch["image"], mask).backward()
        for k, p in net.named_parameters():
            if p.grad is not None:
                total[k] = total.get(k, 0) + p.grad / world
    return total


def test_ddp_two_ranks_match_one_process(tmp_path):
    """Step 0's averaged gradients of 2 gloo ranks (2 samples each) against one
    process with the same global batch of 4.

    Tolerance: max |diff| <= 2e-4 * max |grad| over all parameters (measured here
    5.9e-5). The residue is not DDP's: a Conv3d weight gradient summed over a
    batch of 4 differs in float32 rounding from the sum of two batches of 2 (the
    same 1.4e-5 appears in one process). Against that mean of per-share
    gradients, DDP agrees to <= 1e-6 * max |grad|. The ranks then run a global
    batch of 8 with --accumulate 2 (DDP's no_sync for the first micro-batch of
    2 on each rank): the mean of the 4 micro-batches' gradients, to the same 1e-6.
    """
    one: dict[str, torch.Tensor] = {}

    def keep(step, net):
        params = models.unwrap(net).named_parameters()
        one.update({k: p.grad.detach().clone() for k, p in params if p.requires_grad})

    train(
        tiny(tmp_path / "one", global_batch=4, epochs=1, iters_per_epoch=1),
        FakeBatches(4),
        after_backward=keep,
    )
    grads = tmp_path / "ddp-grads.pt"
    run_script(
        f"""
        import os
        import torch
        torch.set_num_threads(1)
        import torch.distributed as dist
        from test_trainer import FakeBatches, tiny
        from openmind_curate.train import models
        from openmind_curate.train.trainer import train
        dist.init_process_group("gloo")  # one group for both runs (train leaves it open)
        got = {{}}
        def keep(step, net):
            assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
            got.update({{k: p.grad.detach().clone()
                        for k, p in models.unwrap(net).named_parameters() if p.requires_grad}})
            got["__world__"] = torch.tensor(dist.get_world_size())
        r = train(tiny({str(tmp_path / "two")!r}, global_batch=4, epochs=1,
                       iters_per_epoch=1), FakeBatches(4), after_backward=keep)
        if os.environ["RANK"] == "0":
            torch.save(got, {str(grads)!r})
        got.clear()
        r = train(tiny({str(tmp_path / "acc")!r}, global_batch=8, epochs=1,
                       iters_per_epoch=1, accumulate=2), FakeBatches(8), after_backward=keep)
        if os.environ["RANK"] == "0":
            torch.save(got, {str(tmp_path / "acc-grads.pt")!r})
        dist.destroy_process_group()
    """,
        torchrun=2,
        script_dir=tmp_path,
    )
    two = torch.load(grads)
    assert int(two.pop("__world__")) == 2
    assert two.keys() == one.keys()
    scale = max(float(g.abs().max()) for g in one.values())
    worst = max(float((two[k] - one[k]).abs().max()) for k in one)
    assert worst <= 2e-4 * scale, (worst, scale)
    shares = half_batch_grads(FakeBatches(4), world=2)
    assert shares.keys() == one.keys()
    assert max(float((two[k] - shares[k]).abs().max()) for k in one) <= 1e-6 * scale
    # the logged loss is the mean over the ranks: the one-process batch loss
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    acc = torch.load(tmp_path / "acc-grads.pt")
    assert int(acc.pop("__world__")) == 2
    micro = half_batch_grads(FakeBatches(8), world=4)  # shares of 2: the micro-batches
    assert max(float((acc[k] - micro[k]).abs().max()) for k in one) <= 1e-6 * scale


def test_accumulated_step_equals_the_whole_batch_step(tmp_path):
    """Global batch 4 in 2 micro-batches of 2 against one batch of 4: the
    gradient is the mean of the two halves' gradients (a known answer,
    `half_batch_grads`: the halves are the micro-batches), the whole batch's
    to float32 summation order (the tolerance of the DDP test), and the
    parameters after the step agree to 1e-6."""
    grads: dict[int, dict[str, torch.Tensor]] = {}

    def keeper(n: int):
        def keep(step, net):
            params = models.unwrap(net).named_parameters()
            grads[n] = {k: p.grad.detach().clone() for k, p in params if p.requires_grad}

        return keep

    for n in (1, 2):
        config = tiny(
            tmp_path / f"acc{n}", global_batch=4, epochs=1, iters_per_epoch=1, accumulate=n
        )
        result = train(config, FakeBatches(4), after_backward=keeper(n))
        assert result.accumulate == n
    one, two = grads[1], grads[2]
    scale = max(float(g.abs().max()) for g in one.values())
    halves = half_batch_grads(FakeBatches(4), world=2)
    assert two.keys() == one.keys() == halves.keys()
    assert max(float((two[k] - halves[k]).abs().max()) for k in one) <= 1e-6 * scale
    assert max(float((two[k] - one[k]).abs().max()) for k in one) <= 2e-4 * scale
    a = load_checkpoint(tmp_path / "acc1" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "acc2" / "checkpoint.pt")["model"]
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two code paths, really taken
    assert losses(tmp_path / "acc2") == pytest.approx(losses(tmp_path / "acc1"), rel=1e-6)


def test_accumulated_resume_is_bit_exact(tmp_path):
    """The resume pattern above with 2 micro-batches of 2 a step, stopped
    mid-epoch (in this process: the fresh process is the test above's)."""
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    acc = dict(global_batch=4, accumulate=2, epochs=1, iters_per_epoch=4)
    train(tiny(straight, **acc), FakeBatches(4))
    first = train(tiny(halves, stop_after=2, **acc), FakeBatches(4))
    assert first.steps == 2 and first.accumulate == 2
    done = train(tiny(halves, resume=True, **acc), FakeBatches(4))
    assert done.resumed_from == 2 and done.complete
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(halves / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    mom_a, mom_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(mom_a[k]["momentum_buffer"], mom_b[k]["momentum_buffer"]) for k in mom_a)
    assert losses(straight) == losses(halves) and len(losses(halves)) == 4


def test_accumulate_auto_rule_and_refusals(tmp_path):
    gib = 2**30
    # ResEnc-L at 160^3 (16 GiB a sample, 4 GiB fixed, 90% of the free memory usable)
    assert auto_accumulate(8, 80 * gib, "resenc-l", 160) == 2  # 68 GiB: 4 a micro-batch
    assert auto_accumulate(8, 40 * gib, "resenc-l", 160) == 4  # 32 GiB: 2
    assert auto_accumulate(8, 24 * gib, "resenc-l", 160) == 8  # 17.6 GiB: 1
    assert auto_accumulate(8, 10 * gib, "resenc-l", 160) == 8  # nothing fits: 1 a micro-batch
    assert auto_accumulate(6, 40 * gib, "resenc-l", 160) == 3  # a divisor of the batch
    assert auto_accumulate(8, 24 * gib, "resenc-l", 80) == 1  # 2 GiB a sample at 80^3
    assert auto_accumulate(8, 1 * gib, "tiny", 32) == 1  # not in the table: fits
    auto = train(tiny(tmp_path / "auto", epochs=1, iters_per_epoch=1), FakeBatches(2))
    assert auto.accumulate == 1  # auto on a CPU
    assert json.loads((tmp_path / "auto" / "config.json").read_text())["accumulate"] == 1
    with pytest.raises(InputError, match=r"--accumulate 3 does not divide the batch of each rank"):
        train(tiny(tmp_path / "three", accumulate=3), FakeBatches(2))


def test_make_step_is_the_trainers_step(tmp_path):
    """The benchmark's step (`make_step`) is the one `train` runs: the same first loss."""
    config, step = make_step(tiny(tmp_path / "bench"))
    assert config.accumulate == 1  # auto on a CPU
    first = step(FakeBatches(2)(0), 0)
    train(tiny(tmp_path / "run", epochs=1, iters_per_epoch=1), FakeBatches(2))
    assert first == losses(tmp_path / "run")[0]
    assert not (tmp_path / "bench" / "checkpoint.pt").exists()  # no run files


def test_checkpoint_atomic_on_failure_and_config_mismatch_refused(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny(run, epochs=1, iters_per_epoch=2, stop_after=1), FakeBatches(2))
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):  # a checkpoint is not overwritten
        train(tiny(run, epochs=1, iters_per_epoch=2), FakeBatches(2))
    with pytest.raises(CheckpointError, match=r"different configuration \(lr: 0\.01 -> 0\.02\)"):
        train(tiny(run, epochs=1, iters_per_epoch=2, lr=0.02, resume=True), FakeBatches(2))

    import openmind_curate.train.checkpoint as ckpt

    real_save = torch.save

    def dies_mid_write(obj, fh, *a, **kw):
        real_save(obj, fh, *a, **kw)
        fh.truncate(100)  # a partial file on disk, then the crash
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.torch, "save", dies_mid_write)
    with pytest.raises(OSError, match="simulated"):
        train(tiny(run, epochs=1, iters_per_epoch=2, resume=True), FakeBatches(2))
    assert (run / "checkpoint.pt").read_bytes() == before  # the old one, whole
    assert sorted(p.name for p in run.iterdir() if "tmp" in p.name) == []  # no partial file
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tiny(tmp_path / "empty", resume=True), FakeBatches(2))


def test_anon_aware_all_anonymized_trains_with_zero_loss(tmp_path):
    class AllAnon(FakeBatches):
        def __call__(self, step, rank=0, world=1):
            batch = super().__call__(step, rank, world)
            batch["anon"] = torch.ones_like(batch["image"])
            return batch

    result = train(tiny(tmp_path / "run", epochs=1, iters_per_epoch=2, anon_aware=True), AllAnon(2))
    assert losses(tmp_path / "run") == [0.0, 0.0] and result.loss == 0.0
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    assert all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
    # a slab anonymized: the loss ignores it (differs from the plain loss)
    train(
        tiny(tmp_path / "slab", epochs=1, iters_per_epoch=1, anon_aware=True),
        FakeBatches(2, anon=True),
    )
    train(tiny(tmp_path / "plain", epochs=1, iters_per_epoch=1), FakeBatches(2, anon=True))
    assert losses(tmp_path / "slab") != losses(tmp_path / "plain")


def test_bf16_autocast_and_compile_on_cpu(tmp_path):
    """--amp bf16 (CPU autocast) runs with finite losses. torch.compile is tested
    with the "eager" backend: inductor's CPU warm-up takes ~40 s on this machine's
    2 cores (the CLI's --compile uses inductor); the checkpoint holds unwrapped keys."""
    result = train(
        tiny(tmp_path / "bf16", epochs=1, iters_per_epoch=2, amp="bf16", compile="eager"),
        FakeBatches(2),
    )
    assert result.complete and np.isfinite(losses(tmp_path / "bf16")).all()
    keys = load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")["model"].keys()
    assert keys == models.build("tiny").state_dict().keys()


# --- the CLI ---------------------------------------------------------------------


def cli(args: list[str]):
    import typer
    from typer.testing import CliRunner

    from openmind_curate.cli import train as cli_train

    app = typer.Typer()
    cli_train.register(app)
    app.command("noop", hidden=True)(lambda: None)  # two commands: `train` stays a subcommand
    return CliRunner().invoke(app, ["train", *args], env={"COLUMNS": "200"})


def test_cli_resenc_l_on_a_cpu_is_a_clear_message(tmp_path, monkeypatch):
    from openmind_curate.cli import train as cli_train

    manifest = tmp_path / "iqs-le-2.5.parquet"
    manifest.write_bytes(b"")  # never read: the device check comes first
    monkeypatch.setattr(cli_train, "_cuda", lambda: False)
    result = cli(["--manifest", str(manifest)])
    assert result.exit_code == 2, result.output
    assert "needs a CUDA GPU" in result.output and "--arch tiny" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "iqs-le-2.5.store").exists()


def test_cli_input_errors(tmp_path, monkeypatch):
    from openmind_curate.cli import train as cli_train

    monkeypatch.setattr(cli_train, "_cuda", lambda: False)
    missing = cli(["--manifest", str(tmp_path / "none.parquet"), "--arch", "tiny"])
    assert missing.exit_code == 2 and "file not found" in missing.output
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"")
    base = ["--manifest", str(manifest), "--arch", "tiny", "--out", str(tmp_path / "run")]
    bad_patch = cli([*base, "--patch", "30"])
    assert bad_patch.exit_code == 2 and "multiple of 4" in bad_patch.output
    for bad in ("0", "x"):
        refused = cli([*base, "--patch", "32", "--accumulate", bad])
        assert refused.exit_code == 2 and "whole number >= 1, or auto" in refused.output
    no_store = cli([*base, "--patch", "32", "--store", str(tmp_path / "nostore")])
    assert no_store.exit_code == 2 and "curate preprocess" in no_store.output
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    taken = cli([*base, "--patch", "32"])
    assert taken.exit_code == 2 and "--resume" in taken.output


def write_manifest(tmp: Path) -> Path:
    """Three 40^3 1 mm volumes (2 train, 1 val; one with an anonymization mask)
    in a schema-valid parquet manifest."""
    from openmind_curate.manifest.writers import write_parquet
    from openmind_curate.nifti_io import save_nifti
    from openmind_curate.schema import MANIFEST, rows_to_table

    rows = []
    for i, split in enumerate(["train", "train", "val"]):
        vol = FakeBatches(1, patch=40, seed=i).volume(0, 0)[0] + 3.0
        save_nifti(vol, np.eye(4), tmp / f"sub-{i}_T1w.nii.gz")
        anon = None
        if i == 0:
            face = np.zeros((40, 40, 40), np.float32)
            face[:, :8] = 1
            save_nifti(face, np.eye(4), tmp / "sub-0_anon.nii.gz")
            anon = str(tmp / "sub-0_anon.nii.gz")
        rows.append(
            {
                "image_id": f"img{i}",
                "dataset_id": "ds000001",
                "subject": f"{i:02d}",
                "suffix": "T1w",
                "extension": ".nii.gz",
                "modality": "T1w",
                "is_derivative": False,
                "root": str(tmp),
                "path": f"sub-{i}_T1w.nii.gz",
                "size_bytes": 1,
                "header_status": "ok",
                "group_n_rated": 0,
                "split": split,
                "anat_mask_path": None,
                "anon_mask_path": anon,
            }
        )
    (tmp / "manifests").mkdir()
    path = tmp / "manifests" / "iqs-le-2.5.parquet"
    write_parquet(rows_to_table(rows, MANIFEST), path)
    return path


def test_cli_trains_on_the_default_store(tmp_path, monkeypatch):
    """`curate train` end to end on the tiny network: the manifest preprocessed
    into <manifest stem>.store, the store's loader, validation on its val split.
    --compile is only checked to be accepted (torch.compile patched to its
    "eager" backend: inductor's CPU warm-up is ~40 s here)."""
    pytest.importorskip("blosc2")
    from openmind_curate.cli import train as cli_train

    monkeypatch.setattr(cli_train, "_cuda", lambda: False)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, backend=None: real_compile(m, backend="eager"))
    manifest = write_manifest(tmp_path)
    run = tmp_path / "run"
    args = [
        "--manifest",
        str(manifest),
        "--arch",
        "tiny",
        "--patch",
        "32",
        "--batch",
        "2",
        "--mask-block",
        "8",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "3",
        "--out",
        str(run),
        "--loader-workers",
        "0",
        "--val-patches",
        "2",
        "--anon-aware",
        "--amp",
        "bf16",
        "--compile",
        "-q",
    ]
    result = cli(args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "manifests" / "iqs-le-2.5.store" / "store.parquet").is_file()
    assert "done: 3 of 3 steps" in result.output
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2] and "val_loss" in log[-1]
    assert all(np.isfinite(r["loss"]) for r in log)
    for name in ("checkpoint.pt", "encoder.pt", "nnssl_checkpoint.pth", "loss.png", "config.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["amp"] == "bf16" and config["anon_aware"] and config["data"]
    # resuming a finished run changes nothing; another seed is refused
    again = cli([*args, "--resume"])
    assert again.exit_code == 0 and "done: 3 of 3 steps" in again.output, again.output
    other = cli([*args, "--resume", "--seed", "1"])
    assert other.exit_code == 2 and "seed: 0 -> 1" in other.output, other.output


def test_sigterm_checkpoints_at_the_step_end_and_resume_finishes(tmp_path):
    import signal

    def term_at_1(step, net):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    stopped = train(tiny(run), FakeBatches(2), after_backward=term_at_1)
    assert stopped.signal == signal.SIGTERM and stopped.steps == 2 and not stopped.complete
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    done = train(tiny(run, resume=True), FakeBatches(2))
    assert done.complete and done.resumed_from == 2 and len(losses(run)) == 8


def test_cli_under_torchrun_two_ranks_logs_the_one_process_losses(tmp_path, monkeypatch):
    """`torchrun -m openmind_curate.cli train` (2 gloo ranks, the store's loader with
    a worker process each) against one process: the same patches and masks per
    global sample, so the logged (rank-averaged) losses agree to rel 1e-5."""
    pytest.importorskip("blosc2")
    from openmind_curate.cli import train as cli_train

    monkeypatch.setattr(cli_train, "_cuda", lambda: False)
    manifest = write_manifest(tmp_path)
    args = [
        "--arch",
        "tiny",
        "--patch",
        "32",
        "--batch",
        "4",
        "--mask-block",
        "8",
        "--epochs",
        "1",
        "--iters-per-epoch",
        "3",
        "--val-patches",
        "4",
        "-q",
    ]
    one = cli(
        [
            "--manifest",
            str(manifest),
            "--out",
            str(tmp_path / "one"),
            "--loader-workers",
            "0",
            *args,
        ]
    )
    assert one.exit_code == 0, one.output
    store = tmp_path / "manifests" / "iqs-le-2.5.store"
    exe = [sys.executable, "-m", "torch.distributed.run"]  # = torchrun
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            *exe,
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "openmind_curate.cli",
            "train",
            "--manifest",
            str(manifest),
            "--store",
            str(store),
            "--out",
            str(tmp_path / "two"),
            "--loader-workers",
            "1",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("done: 3 of 3 steps") == 1  # rank 0 speaks
    a = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-5)


def test_resume_with_the_store_loader_is_bit_exact(tmp_path):
    """The real loader (augmentation on, one worker process) keeps resume exact:
    its batches are a pure function of the step (checked end to end here)."""
    pytest.importorskip("blosc2")
    from openmind_curate.jobs import JobOptions
    from openmind_curate.train import loader as L
    from openmind_curate.train import preprocess as P
    from openmind_curate.train.store import open_store

    P.preprocess(
        write_manifest(tmp_path), tmp_path / "store", options=JobOptions(workers=1, progress=False)
    )
    store = open_store(tmp_path / "store")
    lcfg = L.LoaderConfig(patch=32, global_batch=2, seed=0, spatial_prob=1.0)

    def stream(start, rank, world):
        return L.make_loader(store, lcfg, start, rank, world, workers=1)

    train(tiny(tmp_path / "straight", anon_aware=True), stream=stream)
    train(tiny(tmp_path / "halves", anon_aware=True, stop_after=3), stream=stream)
    train(tiny(tmp_path / "halves", anon_aware=True, resume=True), stream=stream)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "halves" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "straight") == losses(tmp_path / "halves")
