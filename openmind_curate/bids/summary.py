"""Counts that describe an image index: per modality, per dataset, per header status."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class IndexSummary:
    per_modality: pd.DataFrame  # modality, images, datasets, subjects
    per_dataset: pd.DataFrame  # dataset_id, images, subjects, modalities, not ok
    per_status: pd.DataFrame  # header_status, images
    n_images: int
    n_datasets: int
    n_subjects: int


def summarize_index(index: pd.DataFrame) -> IndexSummary:
    subjects = index[["dataset_id", "subject"]].drop_duplicates()
    per_modality = (
        index.groupby("modality")
        .agg(images=("image_id", "size"), datasets=("dataset_id", "nunique"))
        .join(
            index.drop_duplicates(["modality", "dataset_id", "subject"])
            .groupby("modality")
            .size()
            .rename("subjects")
        )
        .sort_values("images", ascending=False)
        .reset_index()
    )
    per_dataset = (
        index.assign(not_ok=index["header_status"] != "ok")
        .groupby("dataset_id")
        .agg(
            images=("image_id", "size"),
            subjects=("subject", "nunique"),
            modalities=("modality", "nunique"),
            not_ok=("not_ok", "sum"),
        )
        .reset_index()
    )
    per_status = index["header_status"].value_counts().rename_axis("header_status")
    return IndexSummary(
        per_modality=per_modality,
        per_dataset=per_dataset,
        per_status=per_status.rename("images").reset_index(),
        n_images=len(index),
        n_datasets=index["dataset_id"].nunique(),
        n_subjects=len(subjects),
    )
