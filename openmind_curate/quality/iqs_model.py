"""Beyond the paper: a per-image IQS predicted from the automatic metrics.

The paper's IQS is one score per dataset x modality, from two rated images.
`fit_predict` learns the raters' per-image score (``iqs_image``) from the
`curate metrics` columns, so every image gets its own estimate
(``iqs_predicted``, clipped to [1, 5]); the paper's score is never replaced.

Validation is group-wise: GroupKFold by dataset_id, so no dataset is in both
the training and the held-out fold, as for a dataset nobody has rated yet.
On the held-out images it reports the Spearman correlation and the mean
absolute error against the raters, beside the same for a **baseline** that
stands for the dataset-level score: the mean ``iqs_image`` of the training
folds' rated images of the same modality (DWI-derived maps and their DWI form
one kind, ``DWI-derived``), or the training folds' overall mean for a
modality they lack. (The paper's own group score, the mean of the other rated
images of the same dataset x modality, is not available to it: with folds by
dataset that group is never in the training folds.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from openmind_curate.schema import DWI_DERIVED_GROUP, MODALITIES

#: Metrics columns the model may use (those of `schema.METRICS` that are numbers).
METRIC_FEATURES = (
    "snr_dietrich",
    "cnr_otsu",
    "contrast",
    "efc",
    "fber",
    "fwhm_mm",
    "ghost_ratio",
    "artifact_fraction",
    "inu_range",
    "noise_sigma",
    "air_zero_fraction",
    "head_litres",
    "fov_border_fraction",
    "nonfinite_voxels",
    "constant_slices",
    "corrupted",
)
#: The image's kind (modality, or DWI-derived), a categorical feature.
KIND = "kind"
KINDS = (*MODALITIES, DWI_DERIVED_GROUP)
MIN_IMAGES = 10
MIN_DATASETS = 2
MAX_FOLDS = 5


@dataclass
class ModelResult:
    """Per-image predictions (index image_id; empty when `skipped`), the
    held-out metrics and the features used."""

    predictions: pd.Series
    cv: dict[str, float] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)
    skipped: str | None = None  # why no model was fitted


def kind_of(table: pd.DataFrame) -> pd.Series:
    """The group kind of each row of an IQS table: what follows ``<dataset_id>/``
    in group_key (the modality, or DWI-derived)."""
    n = table["dataset_id"].astype(str).str.len() + 1
    return pd.Series(
        [k[i:] for k, i in zip(table["group_key"], n, strict=True)], index=table.index, dtype=object
    )


def design(metrics: pd.DataFrame, kinds: pd.Series) -> tuple[pd.DataFrame, list[str]]:
    """Feature matrix indexed by image_id: the numeric metrics present, plus the
    image's kind as a categorical column (its values are not comparable across kinds)."""
    m = metrics.drop_duplicates("image_id").set_index("image_id")
    cols = [c for c in METRIC_FEATURES if c in m.columns and m[c].notna().any()]
    x = m[cols].apply(pd.to_numeric, errors="coerce").astype(float)
    x[KIND] = pd.Categorical(kinds.reindex(x.index), categories=list(KINDS))
    return x, [*cols, KIND]


def _model(n_rows: int, seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor

    leaf = int(min(20, max(3, n_rows // 10)))  # a few dozen rated images still split
    return HistGradientBoostingRegressor(
        max_iter=200,
        learning_rate=0.05,
        min_samples_leaf=leaf,
        categorical_features="from_dtype",
        random_state=seed,
    )


def baseline(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """The dataset-level stand-in (module docstring): per held-out row, the training
    rows' mean target of the same kind, else the training rows' mean."""
    by_kind = train.groupby(KIND, observed=True)["target"].mean()
    overall = float(train["target"].mean())
    return test[KIND].astype(object).map(by_kind).astype(float).fillna(overall).to_numpy()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # undefined for a constant series
    return float(spearmanr(a, b).statistic)


def cross_validate(x: pd.DataFrame, y: pd.Series, datasets: pd.Series, seed: int = 0):
    """Out-of-fold predictions of the model and of the baseline, GroupKFold by dataset."""
    from sklearn.model_selection import GroupKFold

    folds = GroupKFold(n_splits=min(MAX_FOLDS, datasets.nunique()))
    pred, base = np.full(len(y), np.nan), np.full(len(y), np.nan)
    frame = x[[KIND]].assign(target=y.to_numpy())
    for train, test in folds.split(x, y, groups=datasets):
        model = _model(len(train), seed).fit(x.iloc[train], y.iloc[train])
        pred[test] = model.predict(x.iloc[test])
        base[test] = baseline(frame.iloc[train], frame.iloc[test])
    return np.clip(pred, 1, 5), base, folds.get_n_splits()


def fit_predict(metrics: pd.DataFrame, table: pd.DataFrame, seed: int = 0) -> ModelResult:
    """Learn iqs_image from the metrics and predict it for every image with metrics.

    `metrics`: `curate metrics` rows (image_id and metric columns). `table`: the
    IQS table (`iqs.compute_iqs(...).table`): image_id, dataset_id, group_key,
    iqs_image. Too few rated images with metrics (< MIN_IMAGES, or from fewer
    than MIN_DATASETS datasets) give no model and say why.
    """
    kinds = pd.Series(kind_of(table).to_numpy(), index=table["image_id"])
    x, features = design(metrics, kinds)
    rated = table.dropna(subset=["iqs_image"])
    rated = rated[rated["image_id"].isin(x.index)].drop_duplicates("image_id")
    n, n_ds = len(rated), rated["dataset_id"].nunique()
    empty = pd.Series(dtype=float, name="iqs_predicted")
    if n < MIN_IMAGES or n_ds < MIN_DATASETS:
        why = (
            f"{n} rated image(s) with metrics from {n_ds} dataset(s); the model needs "
            f"at least {MIN_IMAGES} from {MIN_DATASETS} datasets"
        )
        return ModelResult(empty, {}, features, skipped=why)
    xr = x.loc[rated["image_id"]]
    y = rated["iqs_image"].astype(float).reset_index(drop=True)
    datasets = rated["dataset_id"].reset_index(drop=True)
    pred, base, n_folds = cross_validate(xr, y, datasets, seed)
    truth = y.to_numpy()
    cv = dict(
        n_images=float(n),
        n_datasets=float(n_ds),
        n_folds=float(n_folds),
        spearman=_spearman(pred, truth),
        mae=float(np.mean(np.abs(pred - truth))),
        baseline_spearman=_spearman(base, truth),
        baseline_mae=float(np.mean(np.abs(base - truth))),
    )
    model = _model(n, seed).fit(xr, y)
    out = pd.Series(np.clip(model.predict(x), 1, 5), index=x.index, name="iqs_predicted")
    return ModelResult(out, cv, features)
