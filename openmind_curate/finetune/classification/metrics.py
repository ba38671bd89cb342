"""The paper's classification metrics, by scikit-learn, and the confusion matrix as a PNG.

Balanced accuracy is the mean recall over the classes. Average precision is
the area under the precision-recall curve of each class's probability: of
the positive class for two classes, the mean over the classes ("macro") for
more. A class absent from a held-out fold has no positives there and no
average precision; the macro mean is over the classes present, and the
result says which were absent.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from openmind_curate.atomic import atomic_path


def scores(truth: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Balanced accuracy, average precision and the confusion matrix (rows:
    truth, columns: prediction) of class indices `truth` and probabilities
    `probs` (n, K)."""
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, confusion_matrix

    truth = np.asarray(truth, dtype=int)
    probs = np.asarray(probs, dtype=float)
    k = len(classes)
    pred = probs.argmax(axis=1)
    present = [c for c in range(k) if (truth == c).any()]
    if k == 2:
        ap = float(average_precision_score(truth == 1, probs[:, 1])) if len(present) == 2 else None
        per_class = {classes[1]: ap}
    else:
        per_class = {
            classes[c]: float(average_precision_score(truth == c, probs[:, c]))
            if c in present
            else None
            for c in range(k)
        }
        found = [v for v in per_class.values() if v is not None]
        ap = float(np.mean(found)) if found else None
    with warnings.catch_warnings():  # classes missing from a held-out fold
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        balanced = float(balanced_accuracy_score(truth, pred))
    return {
        "balanced_accuracy": balanced,
        "average_precision": ap,
        "average_precision_per_class": per_class,
        "absent_classes": [classes[c] for c in range(k) if c not in present],
        "confusion": confusion_matrix(truth, pred, labels=list(range(k))).tolist(),
        "n": int(len(truth)),
    }


def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str
) -> Path:
    """The confusion matrix as a PNG (scikit-learn's display), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(classes)
    fig = Figure(figsize=(2.2 + 0.6 * k, 1.8 + 0.6 * k), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=list(classes)).plot(
        ax=ax, colorbar=False, cmap="Blues"
    )
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
