"""Anatomy (imaged-head foreground) and anonymization (defaced, blurred or
skull-stripped voxels) masks per image, as uint8 {0,1} NIfTI on the image grid.

`anatomy` and `anonymization` decide each mask on a coarse `grid`, with the
head envelope of `template`; `compute` makes both masks of one image (pure);
`run` makes each image a batch item; `stage` is the Python API behind
`curate masks`.
"""
