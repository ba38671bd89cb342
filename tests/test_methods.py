"""Every pre-training method through the one trainer loop (CPU, tiny networks).

For each method and each tiny architecture of a family it trains: two steps
give a finite loss, a run stopped after one step and resumed equals the
uninterrupted one bit for bit, and the exported encoder (both layouts) loads
into a fine-tuning network of that architecture with every tensor accounted
for. The method's own behaviour (masks, targets, losses) is tested in
``test_method_<name>.py``; this file tests the plug-in contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("dynamic_network_architectures")

from openmind_curate.errors import InputError  # noqa: E402
from openmind_curate.train import models  # noqa: E402
from openmind_curate.train.checkpoint import load_checkpoint  # noqa: E402
from openmind_curate.train.methods import registry  # noqa: E402
from openmind_curate.train.methods.base import parse_params  # noqa: E402
from openmind_curate.train.trainer import EpochLR, TrainConfig, train  # noqa: E402

#: Per method, parameters that shrink its crops to CPU size (the defaults are the paper's).
TINY = registry.TINY_PARAMS
TINY_ARCH = {"resenc": "tiny", "primus": "tiny-primus"}


CASES = [
    (name, TINY_ARCH[fam])
    for name in registry.names()
    for fam in registry.method_class(name).families
]


def fake_batches(crop: tuple[int, int, int], global_batch: int):
    """The loader's batch contract for crops of `crop`: smooth random volumes,
    a pure function of (step, global index)."""

    def batches(step: int, rank: int, world: int) -> dict:
        share = global_batch // world
        index = list(range(rank * share, (rank + 1) * share))
        vols = []
        for g in index:
            rng = np.random.default_rng([7, step, g])
            grids = np.meshgrid(*[np.linspace(0, 3, n) for n in crop], indexing="ij")
            phase = rng.uniform(0, 3, 3)
            vol = sum(np.sin(a + p) for a, p in zip(grids, phase, strict=True))
            vols.append((vol + rng.normal(0, 0.1, crop)).astype(np.float32))
        image = torch.from_numpy(np.stack(vols))[:, None]
        anon = torch.zeros_like(image)
        anon[..., : crop[-1] // 4] = 1.0
        return {
            "image": image,
            "anat": torch.ones_like(image),
            "anon": anon,
            "case_id": [f"case{g}" for g in index],
            "index": index,
        }

    return batches


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def config(out: Path, method: str, arch: str, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        method=method,
        arch=arch,
        params=TINY.get(method, {}),
        patch=32,
        global_batch=4 if registry.method_class(method).contrastive else 2,
        epochs=1,
        iters_per_epoch=2,
        warmup_epochs=0,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def _batches(cfg: TrainConfig):
    cfg = cfg.resolved()
    return fake_batches(cfg.method_object().crop(), cfg.global_batch)


@pytest.mark.parametrize(("method", "arch"), CASES)
def test_two_steps_resume_bit_exact_and_export_loads(tmp_path, method, arch):
    whole = config(tmp_path / "whole", method, arch)
    result = train(whole, _batches(whole))
    log = [json.loads(x) for x in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert result.complete and len(log) == 2
    assert all(np.isfinite(r["loss"]) for r in log), log
    # stopped after one step, resumed: the same weights and losses as the whole run
    part = config(tmp_path / "part", method, arch, stop_after=1)
    train(part, _batches(part))
    resumed = config(tmp_path / "part", method, arch, resume=True)
    train(resumed, _batches(resumed))
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    logged = [
        json.loads(x)["loss"] for x in (tmp_path / "part" / "log.jsonl").read_text().splitlines()
    ]
    assert logged == [r["loss"] for r in log]
    _export_loads(tmp_path / "whole", arch)


def _export_loads(run: Path, arch: str) -> None:
    """Both exported layouts pass the fine-tuning loader's check: every
    encoder tensor of a fresh segmentation network of `arch` is loaded."""
    from openmind_curate.finetune.weights import load_encoder
    from openmind_curate.train.nnssl import read_pretrained

    for name in ("encoder.pt", "nnssl_checkpoint.pth"):
        pretrained = read_pretrained(run / name)
        net = models.build(arch, out_channels=3, patch=32)
        loaded = load_encoder(net, pretrained, in_channels=1)
        assert loaded.tensors == len(models.encoder_state(net)), name
        for key, value in models.encoder_state(net).items():
            assert torch.equal(value, pretrained.encoder[key]), (name, key)
        blob = torch.load(run / name, map_location="cpu", weights_only=True)
        keys = blob.get("encoder") or blob.get("network_weights")
        assert not any("head" in k or "proj_head" in k for k in keys), name


def test_every_method_is_on_the_command_line_with_a_help_line():
    from typing import get_args

    from openmind_curate.cli.train import MethodName, _help

    assert list(get_args(MethodName)) == registry.names()
    text = _help()
    for name in registry.names():
        assert f"  {name} " in text and registry.summary(name) in text


def test_recipes_are_the_papers():
    resenc = TrainConfig(out="x", arch="tiny").resolved()
    assert (resenc.optimizer, resenc.lr, resenc.weight_decay, resenc.momentum) == (
        "sgd",
        1e-2,
        3e-5,
        0.99,
    )
    assert (resenc.patch, resenc.global_batch, resenc.warmup_epochs) == (160, 8, 0)
    primus = TrainConfig(out="x", arch="tiny-primus").resolved()
    assert (primus.optimizer, primus.lr, primus.weight_decay) == ("adamw", 3e-4, 5e-2)
    assert (tuple(primus.betas), primus.eps, primus.warmup_epochs) == ((0.9, 0.98), 1e-8, 50)
    assert (resenc.grad_clip, primus.grad_clip) == (12.0, 1.0)  # nnssl's clipping
    assert primus.params["drop_path"] == 0.2
    mine = TrainConfig(out="x", arch="tiny-primus", lr=1e-4, params={"mask_ratio": 0.6})
    assert mine.resolved().lr == 1e-4 and mine.resolved().params["mask_ratio"] == 0.6


def test_warmup_then_poly():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = EpochLR(opt, epochs=4, iters_per_epoch=2, exponent=1.0, warmup=2)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # nnssl's: 2 warm-up epochs at (e + 1) / 2, then (1 - e / 2) over the 2 epochs left
    assert lrs == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5])


def test_set_parses_names_and_types_and_refuses_unknown_names():
    cls = registry.method_class("mae")
    got = parse_params(cls.Params, ["mask_ratio=0.5", "mask-block=8"], "mae")
    assert (got.mask_ratio, got.mask_block) == (0.5, 8)
    with pytest.raises(InputError, match=r"mae has no such parameter \(it has: .*mask_ratio"):
        parse_params(cls.Params, ["temperature=0.1"], "mae")
    with pytest.raises(InputError, match="not a int"):
        parse_params(cls.Params, ["mask_block=big"], "mae")


def test_a_method_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(InputError, match="does not train tiny-primus"):
        TrainConfig(out="x", arch="tiny-primus", method="s3d").resolved().check()
    with pytest.raises(InputError, match="no such parameter"):
        TrainConfig(out="x", arch="tiny", params={"nope": 1}).resolved()
    with pytest.raises(InputError, match="contrastive"):
        TrainConfig(out="x", arch="tiny", method="simclr", accumulate=2).resolved().check()
    with pytest.raises(InputError, match="has none"):
        TrainConfig(out="x", arch="tiny", method="simclr", anon_aware=True).resolved().check()


@pytest.mark.parametrize("method", ["simclr", "volume-fusion"])
def test_prepare_in_the_loaders_workers_equals_prepare_in_the_loop(tmp_path, method):
    """The store loader runs the method's CPU work in a worker process; the
    run is the one the loop gets when it prepares the same batches itself."""
    pytest.importorskip("blosc2")
    from test_trainer import write_manifest

    from openmind_curate.jobs import JobOptions
    from openmind_curate.train import loader as L
    from openmind_curate.train import preprocess as P
    from openmind_curate.train.store import open_store
    from openmind_curate.train.trainer import PrepareInWorkers

    P.preprocess(
        write_manifest(tmp_path), tmp_path / "store", options=JobOptions(workers=1, progress=False)
    )
    store = open_store(tmp_path / "store")
    cfg = config(tmp_path / "workers", method, "tiny").resolved()
    obj = cfg.method_object()
    lcfg = L.LoaderConfig(
        patch=obj.crop(), global_batch=cfg.global_batch, centre=obj.centre_crop, seed=0
    )

    def stream(start, rank, world):
        prepare = PrepareInWorkers(obj, cfg.seed, False, rank, world)
        return L.make_loader(store, lcfg, start, rank, world, workers=1, prepare=prepare)

    def batches(step, rank, world):
        return L.sample_batch(store, lcfg, step, rank, world)

    train(cfg, stream=stream)
    train(config(tmp_path / "loop", method, "tiny"), batches)
    a = [
        json.loads(x)["loss"]
        for x in (tmp_path / "workers" / "log.jsonl").read_text().split("\n")
        if x
    ]
    b = [
        json.loads(x)["loss"]
        for x in (tmp_path / "loop" / "log.jsonl").read_text().split("\n")
        if x
    ]
    assert a == b and len(a) == 2


def test_cli_trains_a_contrastive_method_on_the_default_store(tmp_path, monkeypatch):
    """`curate train --method simclr` end to end: the crops of --set, a loader
    worker doing the views, the encoder-only export."""
    pytest.importorskip("blosc2")
    from test_trainer import write_manifest
    from typer.testing import CliRunner

    from openmind_curate.cli import app
    from openmind_curate.cli import train as cli_train

    monkeypatch.setattr(cli_train, "_cuda", lambda: False)
    manifest = write_manifest(tmp_path)
    run = tmp_path / "run"
    tiny = registry.TINY_PARAMS["simclr"]
    sets = [f"{k}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in tiny.items()]
    args = ["train", "--manifest", str(manifest), "--method", "simclr", "--arch", "tiny"]
    args += ["--patch", "32", "--batch", "4", "--epochs", "1", "--iters-per-epoch", "2"]
    args += ["--out", str(run), "--loader-workers", "1", "--val-patches", "4", "-q"]
    for item in [*sets, "grad_clip=0.5", "betas=0.9,0.999"]:
        args += ["--set", item]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["method"] == "simclr" and saved["params"]["crop"] == [48, 48, 32]
    assert saved["optimizer"] == "sgd" and saved["global_batch"] == 4
    assert saved["grad_clip"] == 0.5 and saved["betas"] == [0.9, 0.999]  # optimizer settings
    encoder = torch.load(run / "encoder.pt", map_location="cpu", weights_only=True)
    assert encoder["meta"]["method"] == "simclr"
    assert all(k.startswith(("stem.", "stages.")) for k in encoder["encoder"])
    wrong = CliRunner().invoke(app, [*args, "--set", "temperature=hot", "--resume"])
    assert wrong.exit_code == 2 and "--set temperature=hot: not a float" in wrong.output


def test_a_contrastive_batch_shrinks_to_what_the_gpu_holds():
    from openmind_curate.train.pretrain import fit_contrastive_batch
    from openmind_curate.train.trainer import ACCUMULATE_COST_GIB

    said = []
    simclr = TrainConfig(out="x", arch="resenc-l", method="simclr").resolved()
    per_sample, fixed = ACCUMULATE_COST_GIB["resenc-l"]
    share = 2 * 64**3 / 160**3  # two 64^3 views against a 160^3 patch
    # room for exactly 10 samples by the rule: 0.9 * free - fixed = 10 * per_sample * share
    free = int((fixed + 10 * per_sample * share) / 0.9 * 2**30) + 2**20
    got = fit_contrastive_batch(simclr, said.append, free=free)
    assert got.global_batch == 10 and "training with 10" in said[0]
    roomy = fit_contrastive_batch(simclr, said.append, free=2**50)
    assert roomy.global_batch == 32 and len(said) == 1
    mae = TrainConfig(out="x", arch="resenc-l").resolved()
    assert fit_contrastive_batch(mae, said.append, free=2**30) is mae  # not contrastive
    # SwinUNETR pairs samples: the fitted batch stays even (room for 5 -> 4)
    swin = TrainConfig(out="x", arch="resenc-l", method="swinunetr").resolved()
    share = 2 * 160**3 / 160**3
    free = int((fixed + 5 * per_sample * share) / 0.9 * 2**30) + 2**20
    assert fit_contrastive_batch(swin, said.append, free=free).global_batch == 4


def test_the_memory_rule_counts_what_the_network_sees():
    from openmind_curate.train.trainer import auto_accumulate

    gib = 2**30
    voco = TrainConfig(out="x", arch="resenc-l", method="voco").resolved().method_object()
    assert voco.voxels_per_sample() == (16 + 4) * 64**3  # 16 base crops and 4 random ones
    assert not voco.contrastive  # a per-sample loss: it accumulates exactly
    # 20 crops of 64^3 are 1.28 patches of 160^3: 20.5 GiB a sample by the rule
    assert auto_accumulate(8, 80 * gib, "resenc-l", 64, voco.voxels_per_sample()) == 4
    assert auto_accumulate(8, 80 * gib, "resenc-l", 64) == 1  # one 64^3 patch a sample


def test_pairing_methods_refuse_an_odd_batch_per_rank():
    from openmind_curate.train.trainer import _Dist, _setup

    for method in ("volume-fusion", "swinunetr"):
        cfg = TrainConfig(out="x", arch="tiny", method=method, global_batch=6).resolved()
        with pytest.raises(InputError, match="leaves 3 on each"):
            _setup(cfg, _Dist(rank=0, world=2))


def test_projection_head_normalises_each_sample_as_nnssl_does():
    """nnssl's head applies InstanceNorm1d to (b, C) features: torch reads that
    as unbatched rows, so each sample is normalised over its own features."""
    import warnings

    from openmind_curate.train.methods.heads import RowNorm, projection

    x = torch.randn(4, 16) * 3 + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.nn.InstanceNorm1d(16, affine=False, track_running_stats=False)(x)
    assert torch.allclose(RowNorm()(x), ref, atol=1e-6)
    head = projection(16, 8, 5)
    assert [type(m).__name__ for m in head] == [
        "Linear",
        "RowNorm",
        "ReLU",
        "Linear",
        "RowNorm",
        "ReLU",
        "Linear",
    ]
    assert head(x).shape == (4, 5)


@pytest.mark.parametrize(
    ("method", "arch"),
    [c for c in CASES if c[0] in ("mae", "s3d", "simmim", "models-genesis")],
)
def test_anon_aware_reconstruction_ignores_defaced_voxels(method, arch):
    """With every voxel defaced, an anonymization-aware reconstruction loss
    has nothing to score (0, never NaN); without the flag it scores them."""
    from openmind_curate.train.methods.base import StepContext

    cfg = config(Path("x"), method, arch).resolved()
    obj = cfg.method_object()
    torch.manual_seed(0)
    net = obj.build()
    batch = fake_batches(obj.crop(), 2)(0, 0, 1)
    batch["anon"] = torch.ones_like(batch["anon"])
    losses = []
    for aware in (True, False):
        ctx = StepContext(0, 0, torch.device("cpu"), anon_aware=aware)
        losses.append(float(obj.loss(net, obj.prepare(dict(batch), ctx), ctx).detach()))
    assert losses[0] == 0.0 and losses[1] > 0.0, losses


@pytest.mark.parametrize(("method", "arch"), CASES)
def test_every_trained_parameter_gets_a_gradient(method, arch):
    """DDP (find_unused_parameters off) needs a gradient on every trainable
    parameter of the network after one loss; the exported backbone gets
    finite, non-zero gradients and carries no head."""
    from openmind_curate.train.methods.base import StepContext
    from openmind_curate.train.trainer import _freeze_unused_heads

    cfg = config(Path("x"), method, arch).resolved()
    obj = cfg.method_object()
    torch.manual_seed(0)
    net = obj.build()
    for module in net.modules():
        _freeze_unused_heads(module)
    ctx = StepContext(0, 0, torch.device("cpu"))
    batch = fake_batches(obj.crop(), cfg.global_batch)(0, 0, 1)
    obj.loss(net, obj.prepare(batch, ctx), ctx).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    exported = obj.export(net)
    grads = [p.grad for p in exported.parameters() if p.requires_grad]
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    exported_keys = set(models.encoder_state(exported))
    assert exported_keys and not any("head" in k for k in exported_keys)


def test_a_short_run_warms_up_throughout_and_a_long_warmup_given_is_refused():
    short = TrainConfig(out="x", arch="tiny-primus", epochs=2).resolved()
    assert short.warmup_epochs == 2  # Primus-M's 50, cut to the run
    short.check()
    with pytest.raises(InputError, match="--warmup-epochs 5: give 0 .. --epochs"):
        TrainConfig(out="x", arch="tiny-primus", epochs=2, warmup_epochs=5).resolved().check()
