"""The per-image IQS model: learns a known function of the metrics (and beats
the dataset-level baseline there), refuses too little data, and `curate iqs
--model` names a bad metrics file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from openmind_curate.quality.iqs_model import baseline, fit_predict, kind_of


def _synthetic(n_datasets=8, per_dataset=15, seed=0):
    """IQS = 1 + 4 * clip(noise_sigma) with image-level spread inside each
    dataset, so a dataset's mean says little about one image."""
    rng = np.random.default_rng(seed)
    rows, metrics = [], []
    for d in range(n_datasets):
        for i in range(per_dataset):
            image = f"d{d}_i{i}"
            noise = rng.uniform(0, 1)
            target = 1 + 4 * noise
            rows.append(
                dict(image_id=image, dataset_id=f"ds{d}", group_key=f"ds{d}/T1w", iqs_image=target)
            )
            metrics.append(
                dict(
                    image_id=image,
                    noise_sigma=noise,
                    efc=rng.normal(),
                    snr_dietrich=rng.normal(10, 2),
                    corrupted=False,
                )
            )
    unrated = dict(image_id="new", dataset_id="ds_new", group_key="ds_new/T1w", iqs_image=None)
    metrics.append(
        dict(image_id="new", noise_sigma=0.5, efc=0.0, snr_dietrich=10.0, corrupted=False)
    )
    return pd.DataFrame(metrics), pd.DataFrame([*rows, unrated])


def test_learns_a_known_function_and_beats_the_baseline():
    metrics, table = _synthetic()
    res = fit_predict(metrics, table)
    assert res.skipped is None
    assert res.cv["n_datasets"] == 8 and res.cv["n_folds"] == 5
    assert res.cv["spearman"] > 0.9
    assert res.cv["mae"] < 0.5 * res.cv["baseline_mae"]
    assert "noise_sigma" in res.features and "kind" in res.features
    assert set(res.predictions.index) == set(metrics["image_id"])  # unrated images too
    assert res.predictions.between(1, 5).all()
    assert res.predictions["new"] == pytest.approx(3.0, abs=0.5)  # 1 + 4 * 0.5


def test_predictions_are_clipped_to_1_5():
    metrics, table = _synthetic()
    metrics.loc[metrics["image_id"] == "new", "noise_sigma"] = 50.0
    res = fit_predict(metrics, table)
    assert 1.0 <= res.predictions["new"] <= 5.0


def test_too_few_rated_images_gives_no_model():
    metrics, table = _synthetic(n_datasets=3, per_dataset=3)  # 9 rated images
    res = fit_predict(metrics, table)
    assert res.skipped and "9 rated image(s)" in res.skipped and res.predictions.empty


def test_one_dataset_gives_no_model():
    metrics, table = _synthetic(n_datasets=1, per_dataset=30)
    res = fit_predict(metrics, table)
    assert res.skipped and "1 dataset(s)" in res.skipped and res.predictions.empty


def test_rated_images_without_metrics_do_not_count():
    metrics, table = _synthetic()
    res = fit_predict(metrics[metrics["image_id"] == "new"], table)
    assert res.skipped and "0 rated image(s)" in res.skipped


def test_baseline_is_the_training_mean_per_kind_else_overall():
    train = pd.DataFrame(dict(kind=["T1w", "T1w", "T2w"], target=[1.0, 3.0, 4.0]))
    test = pd.DataFrame(dict(kind=["T1w", "T2w", "FLAIR"]))
    # T1w: (1+3)/2 = 2; T2w: 4; FLAIR absent from training: (1+3+4)/3 = 8/3
    assert baseline(train, test).tolist() == pytest.approx([2.0, 4.0, 8 / 3])


def test_kind_is_the_group_key_after_the_dataset():
    table = pd.DataFrame(dict(dataset_id=["a/b", "c"], group_key=["a/b/DWI-derived", "c/T1w"]))
    assert kind_of(table).tolist() == ["DWI-derived", "T1w"]


def test_constant_target_reports_nan_spearman_not_an_error():
    metrics, table = _synthetic()
    table.loc[table["iqs_image"].notna(), "iqs_image"] = 2.0
    res = fit_predict(metrics, table)
    assert np.isnan(res.cv["spearman"]) and res.cv["mae"] == pytest.approx(0.0, abs=1e-6)
