"""The contrastive methods' crop augmentations, from batchgenerators (v2).

nnssl's SimCLR and VoCo trainers augment every crop independently with
nnU-Net's intensity pipeline plus mirroring and 90-degree rotation, written
for batchgenerators v1 (`SimCLRTransform`, `VocoTransform`). This is the
same list, with the same probabilities and ranges, built from
batchgeneratorsv2's classes (which ship with nnunetv2):

====================  ===========================================  ==========
transform             parameters (nnssl / batchgenerators v1)      p / sample
====================  ===========================================  ==========
Gaussian noise        variance (0, 0.1), one value for all channels  0.1
Gaussian blur         sigma (0.5, 1), per channel (p 0.5), one       0.2
                      sigma for all axes
brightness (mult.)    multiplier uniform in (0.75, 1.25)             0.15
contrast              factor (0.75, 1.25), range preserved           0.15
low resolution        zoom (0.5, 1), all axes alike, per channel     0.1
                      (p 0.5)
gamma, inverted       gamma (0.7, 1.5), statistics retained          0.1
gamma                 gamma (0.7, 1.5), statistics retained          0.3
mirror                each spatial axis with p 0.5                   1
rotation              90, 180 or 270 degrees in the plane of         1
                      axes (0, 1)
====================  ===========================================  ==========

The contrast and gamma factors are drawn below 1 or above 1 with equal
chance (`BGContrast`, v1's rule). batchgenerators draws from Python's,
NumPy's and torch's global generators; `augment` seeds them from the given
seed and restores them afterwards (`base.seeded_globals`), so a view's
augmentation is a function of its seed only.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from openmind_curate.train.methods.base import seeded_globals


@lru_cache(maxsize=1)
def crop_pipeline():
    """nnssl's SimCLR/VoCo crop augmentations as a batchgeneratorsv2 composition."""
    from batchgeneratorsv2.transforms.intensity.brightness import (
        MultiplicativeBrightnessTransform,
    )
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
    from batchgeneratorsv2.transforms.spatial.low_resolution import (
        SimulateLowResolutionTransform,
    )
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.rot90 import Rot90Transform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    def gamma(p_invert: float, p: float) -> RandomTransform:
        t = GammaTransform(
            gamma=BGContrast((0.7, 1.5)),
            p_invert_image=p_invert,
            synchronize_channels=False,
            p_per_channel=1,
            p_retain_stats=1,
        )
        return RandomTransform(t, apply_probability=p)

    return ComposeTransforms(
        [
            RandomTransform(
                GaussianNoiseTransform(
                    noise_variance=(0, 0.1), p_per_channel=1, synchronize_channels=True
                ),
                apply_probability=0.1,
            ),
            RandomTransform(
                GaussianBlurTransform(
                    blur_sigma=(0.5, 1.0),
                    synchronize_channels=False,
                    synchronize_axes=True,
                    p_per_channel=0.5,
                ),
                apply_probability=0.2,
            ),
            RandomTransform(
                MultiplicativeBrightnessTransform(
                    multiplier_range=(0.75, 1.25), synchronize_channels=False, p_per_channel=1
                ),
                apply_probability=0.15,
            ),
            RandomTransform(
                ContrastTransform(
                    contrast_range=BGContrast((0.75, 1.25)),
                    preserve_range=True,
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=0.15,
            ),
            RandomTransform(
                SimulateLowResolutionTransform(
                    scale=(0.5, 1.0),
                    synchronize_channels=False,
                    synchronize_axes=True,
                    ignore_axes=None,
                    allowed_channels=None,
                    p_per_channel=0.5,
                ),
                apply_probability=0.1,
            ),
            gamma(p_invert=1, p=0.1),
            gamma(p_invert=0, p=0.3),
            MirrorTransform(allowed_axes=(0, 1, 2)),
            Rot90Transform(
                num_axis_combinations=1, num_rot_per_combination=(1, 2, 3), allowed_axes={0, 1}
            ),
        ]
    )


def augment(crop: torch.Tensor, seed: int) -> torch.Tensor:
    """`crop` (C, X, Y, Z) augmented by `crop_pipeline`, drawn from `seed`
    alone; the input is left untouched and the global generators restored.
    The rotation is in the plane of axes 0 and 1, so those must be equal."""
    with seeded_globals(seed):
        out = crop_pipeline()(image=crop.detach().clone().float())["image"]
    return out.contiguous()
