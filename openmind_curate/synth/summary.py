"""A compact description of a generated corpus, from its truth table."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class CorpusSummary:
    counts: pd.DataFrame  # per dataset: subjects, images, "T1w 2, T2w 2, ..."
    degradations: dict[str, int]
    n_files: int
    n_images: int
    n_subjects: int
    size_mb: float


def summarize(truth: pd.DataFrame) -> CorpusSummary:
    images = truth[truth["kind"] == "image"]
    rows = []
    for ds, group in images.groupby("dataset_id"):
        per_mod = group["modality"].value_counts()
        rows.append(
            {
                "dataset_id": ds,
                "subjects": group["subject"].nunique(),
                "images": len(group),
                "modalities": ", ".join(f"{m} {n}" for m, n in per_mod.items()),
            }
        )
    counts = pd.DataFrame(rows)
    # Degradations count images: a `_defacemask` file records its image's
    # defacing but is not itself a defaced image.
    degradations = {
        "Rician noise > 2%": int((images["noise_level"] > 0.02).sum()),
        "blur": int((images["blur_fwhm_mm"] > 0).sum()),
        "ghosting": int((images["ghost_amplitude"] > 0).sum()),
        "Gibbs (k-space cut)": int((images["gibbs_keep"] < 1).sum()),
        "bias field": int((images["bias_strength"] > 0).sum()),
        "defaced": int(images["deface"].notna().sum()),
        "skull-stripped": int(images["skull_stripped"].sum()),
        "cropped FOV": int((images["fov_crop"] > 0).sum()),
        **{
            f"corrupt: {k}": int((images["corruption"] == k).sum())
            for k in sorted(images["corruption"].dropna().unique())
        },
    }
    return CorpusSummary(
        counts=counts,
        degradations=degradations,
        n_files=len(truth),
        n_images=len(images),
        n_subjects=truth[["dataset_id", "subject"]].drop_duplicates().shape[0],
        size_mb=float(truth["size_bytes"].sum()) / 1e6,
    )
