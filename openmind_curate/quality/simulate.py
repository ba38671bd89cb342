"""Simulated raters for the demo: scores from the generator's truth table.

The demo needs ratings so that the later stages (IQS, manifest) have input,
and nobody is there to rate. A simulated rater reads the known degradation
of each unit (noise level, blur, ghost, Gibbs, bias field, FOV crop,
corruption), maps it to the paper's 1-5 scale, and adds a per-rater bias and
per-rating noise. These are NOT human ratings; every one carries
``app_version = "simulated"`` and a comment saying so.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from openmind_curate.ids import stable_int
from openmind_curate.quality import ratings
from openmind_curate.quality.plan import DWI_GROUP

SIMULATED = "simulated"


@dataclass(frozen=True)
class SimulatedRaters:
    bias_sd: float = 0.3  # spread of the raters' personal offsets
    noise_sd: float = 0.45  # spread of one rating around the rater's view
    fov_miss: float = 0.05  # chance of flipping the FOV answer
    seed: int = 0


def latent_scores(truth: pd.Series) -> dict[str, float | None]:
    """The 1-5 score an unbiased, noiseless rater would give (before rounding)."""

    def scale(value: float, worst: float) -> float:
        return 1.0 + 4.0 * float(np.clip(value / worst, 0.0, 1.0))

    if truth["datatype"] == "dwi":  # a DWI unit: its maps' noise follows the series' SNR
        noise = scale(max(0.0, 40.0 - _num(truth["dwi_snr"], 40.0)), 35.0)
        artifact = None
    else:
        noise = scale(max(0.0, _num(truth["noise_level"]) - 0.005), 0.095)
        artifact = max(
            scale(_num(truth["ghost_amplitude"]), 0.3),
            scale(1.0 - _num(truth["gibbs_keep"], 1.0), 0.65),
            scale(_num(truth["bias_strength"]), 0.8),
        )
    return dict(
        noisiness=noise, blurriness=scale(_num(truth["blur_fwhm_mm"]), 8.0), artifact_level=artifact
    )


def _num(value, default: float = 0.0) -> float:
    return default if value is None or pd.isna(value) else float(value)


def simulate(
    engine: Engine,
    truth: pd.DataFrame,
    raters: Collection[str],
    config: SimulatedRaters = SimulatedRaters(),
) -> int:
    """Rate every assignment of `raters` not yet rated, as a simulated rater
    would; other raters' queues are never touched (a real rater added to the
    demo's store must not find simulated ratings under their name).
    Returns the number of ratings saved."""
    by_id = truth.drop_duplicates("image_id").set_index("image_id")
    items = ratings.read_assignments(engine)
    items = items[items["rater_id"].isin(list(raters))]
    done = ratings.read_ratings(engine)[["rater_id", "image_id", "kind"]]
    todo = items.merge(done, how="left", indicator=True)
    todo = todo[todo["_merge"] == "left_only"]
    saved = 0
    for item in todo.itertuples():
        if item.image_id not in by_id.index:
            continue  # not a generated image: a simulated rater has nothing to go on
        rng = np.random.default_rng(
            stable_int(config.seed, item.rater_id, item.image_id, item.kind)
        )
        bias = np.random.default_rng(stable_int(config.seed, item.rater_id)).normal(
            0, config.bias_sd
        )
        t = by_id.loc[item.image_id]
        scores = {
            axis: None
            if value is None
            else int(np.clip(round(value + bias + rng.normal(0, config.noise_sd)), 1, 5))
            for axis, value in latent_scores(t).items()
        }
        if item.group_name == DWI_GROUP:
            scores["artifact_level"] = None
        fov = bool(_num(t["fov_crop"]) > 0.05) != bool(rng.random() < config.fov_miss)
        ratings.save_rating(
            engine,
            dict(
                image_id=item.image_id,
                rater_id=item.rater_id,
                kind=item.kind,
                submission_id=f"{SIMULATED}-{item.rater_id}-{item.image_id}-{item.kind}",
                **scores,
                fov_suboptimal=fov,
                corrupted=pd.notna(t["corruption"]),
                comment="simulated rating (demo)",
                seconds_spent=float(rng.uniform(4, 30)),
                app_version=SIMULATED,
            ),
        )
        saved += 1
    return saved
