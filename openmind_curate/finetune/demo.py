"""The demo's fine-tuning step: nnU-Net from scratch and from the demo's encoder.

Both runs share one planned and preprocessed dataset (the encoder's network
at `PATCH`), so only training and validation are paid twice. Sizes are toy
sizes for a CPU: 2 epochs of 4 iterations (Sawtooth with W = 1: a decoder
epoch, then a whole-network one), test-time mirroring off, 3 mm voxels and a
64^3 patch, which a small network on a CPU computes faster per voxel than
32^3 (measured: 0.16 s vs 0.22 s a window), so sliding-window validation of
a whole head takes seconds. nnU-Net's own per-run costs dominate on a CPU
(process pools for fingerprinting, preprocessing and export).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from openmind_curate.finetune import run

PATCH = (64, 64, 64)
SPACING = 3.0  # mm: a whole head in a few 64^3 windows


def finetune_demo(
    corpus: Path,
    pretrained: Path,
    out: Path,
    *,
    epochs: int = 2,
    iters_per_epoch: int = 4,
    echo: run.Echo = print,
) -> dict[str, Any]:
    """Fine-tune on the corpus's tissue labels from scratch (``OUT/scratch``)
    and from `pretrained` (``OUT/pretrained``, Sawtooth); the Dice of each."""
    run.set_processes()
    tuned = run.FinetuneConfig(
        data=Path(corpus),
        out=Path(out),
        pretrained=Path(pretrained),
        epochs=epochs,
        stage_len=1,
        iters_per_epoch=iters_per_epoch,
        patch=PATCH,
        spacing=SPACING,
        test_time_mirroring=False,
    )
    scratch = replace(tuned, scratch=True)
    prepared = run.prepare(tuned, run.check(tuned), echo)
    result: dict[str, Any] = {}
    for name, config in (("scratch", scratch), ("pretrained", tuned)):
        res = run.train(config, prepared, echo, results=Path(out) / name)
        result[name] = {
            "dice": res.dice,
            "mean_dice": res.mean,
            "epochs": config.epochs,
            "schedule": config.schedule_name,
            "lr": config.learning_rate,
        }
    return result
