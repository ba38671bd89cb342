"""Anatomy (imaged-head foreground) and anonymization (defaced, blurred or
skull-stripped voxels) masks per image, as uint8 {0,1} NIfTI on the image grid.
"""
