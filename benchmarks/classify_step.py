"""Classification fine-tuning: the trainer loop's step beside a bare PyTorch step.

Target: the loop (`train.trainer`, through which `curate finetune --task
classification` trains) costs at most 5% more per optimizer step than the
bare loop a classification framework runs: forward, cross-entropy, backward
per micro-batch, then AdamW.

Both train the same classifier (`finetune.classification.network`: the
architecture's encoder, pooled features, a linear head) on the same random
volumes with the same accumulation, from the same initial weights. Ours:
`trainer.make_step` (the loop's step: the method's loss, per-micro-batch
device moves, DDP's no_sync, the schedule, the clip and the loss's
all-reduce; no checkpoint or log writes, which happen once an epoch). Peer:
the bare loop above. The first steps warm up and are not timed; the two
alternate, step for step, so machine noise hits both alike.

    python benchmarks/classify_step.py                      # CPU: tiny, 32^3, 4 x 2
    python benchmarks/classify_step.py --arch resenc-l --resize 160,192,192 \\
        --batch 4 --accumulate 4 --amp bf16                 # a GPU: the paper's RSN volumes
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from openmind_curate.finetune.classification.method import Classify  # registers it
from openmind_curate.train import nnssl
from openmind_curate.train.trainer import TrainConfig, make_step


def _batch(n: int, shape: tuple[int, ...], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 1, *shape, generator=g),
        "label": torch.randint(0, 2, (n,), generator=g),
        "index": list(range(n)),
        "case_id": [str(i) for i in range(n)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="tiny")
    ap.add_argument("--resize", default="32,32,32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accumulate", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--amp", default="none", choices=["none", "bf16"])
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.resize.split(","))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = {"classes": 2, "resize": shape, "architecture": nnssl.architecture(args.arch)}
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            out=out,
            arch=args.arch,
            method=Classify.name,
            params=params,
            global_batch=args.batch * args.accumulate,
            accumulate=args.accumulate,
            iters_per_epoch=10**6,
            schedule="cosine",
            amp=args.amp,
        )
        config, ours_step = make_step(config)
        torch.manual_seed(0)
        model = config.method_object().build().to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        dtype = torch.bfloat16 if args.amp == "bf16" else None

        def bare_step(batch: dict) -> None:
            opt.zero_grad(set_to_none=True)
            for k in range(args.accumulate):
                part = slice(k * args.batch, (k + 1) * args.batch)
                x = batch["image"][part].to(device, non_blocking=True)
                y = batch["label"][part].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = F.cross_entropy(model(x).float(), y) / args.accumulate
                loss.backward()
            opt.step()

        batches = [_batch(config.global_batch, shape, s) for s in range(4)]
        times: dict[str, list[float]] = {"ours": [], "bare": []}
        for step in range(args.warmup + args.steps):
            for name in ("ours", "bare"):
                batch = batches[step % len(batches)]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                ours_step(batch, step) if name == "ours" else bare_step(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
    ours, bare = (statistics.median(times[n]) for n in ("ours", "bare"))
    print(
        f"{args.arch} {shape} batch {args.batch} x {args.accumulate} on {device}"
        f" ({torch.get_num_threads()} threads), median of {args.steps} steps:"
    )
    print(f"  ours (trainer loop) {ours * 1e3:8.1f} ms/step")
    print(f"  bare PyTorch loop   {bare * 1e3:8.1f} ms/step")
    print(f"  ratio ours/bare     {ours / bare:8.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
