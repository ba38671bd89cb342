"""A trained fold on its held-out images: predictions, metrics, and the classifier file."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from openmind_curate.atomic import atomic_write_bytes, atomic_write_text
from openmind_curate.finetune.classification import metrics, volumes
from openmind_curate.train.trainer import TrainConfig

FORMAT = "openmind-curate-classifier/1"


def load_trained(tc: TrainConfig) -> torch.nn.Module:
    """The classifier with the weights of the fold's last checkpoint, in eval
    mode (built without reading the pre-trained checkpoint again: its weights
    are overwritten by the fold's)."""
    tc = tc.resolved()
    bare = replace(tc, params={**tc.params, "pretrained": ""})
    model = bare.method_object().build()
    blob = torch.load(Path(tc.out) / "checkpoint.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    return model.eval()


def predict(
    model: torch.nn.Module, root: Path, case_ids: list[str], batch: int, device: str = ""
) -> np.ndarray:
    """Softmax probabilities (n, K) of the volumes, `batch` at a time, in float32."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(dev)
    out = []
    with torch.no_grad():
        for start in range(0, len(case_ids), batch):
            paths = [volumes.array_path(root, c) for c in case_ids[start : start + batch]]
            x = volumes.load_batch(paths).to(dev)
            out.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
    return np.concatenate(out)


def evaluate(
    tc: TrainConfig,
    classes: list[str],
    held: pd.DataFrame,
    root: Path,
    batch: int,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Predict fold `tc`'s held-out images; write its predictions, metrics,
    confusion matrix and classifier (with `meta`) beside its checkpoint."""
    fold_dir = Path(tc.out)
    model = load_trained(tc)
    probs = predict(model, root, list(held["case_id"]), batch, tc.device)
    scores = metrics.scores(held["label_index"].to_numpy(), probs, classes)
    table = held[["case_id", "path", "subject", "label"]].assign(
        predicted=[classes[i] for i in probs.argmax(axis=1)],
        **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)},
    )
    atomic_write_text(fold_dir / "predictions.csv", table.to_csv(index=False))
    atomic_write_text(fold_dir / "metrics.json", json.dumps(scores, indent=1) + "\n")
    metrics.plot_confusion(
        scores["confusion"],
        classes,
        fold_dir / "confusion.png",
        f"{fold_dir.name}: balanced accuracy {scores['balanced_accuracy']:.3f}",
    )
    save_classifier(model, fold_dir / "classifier.pt", {**meta, "classes": classes})
    return scores


def save_classifier(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> Path:
    """The classifier's weights with what rebuilds and feeds it (`meta`:
    classes, architecture, resize, spacing, frozen), atomically."""
    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, **meta, "model": state}, buf)
    return atomic_write_bytes(path, buf.getvalue())
