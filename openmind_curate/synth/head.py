"""The whole-head model, re-exported for the generator.

The model moved to `openmind_curate.headmodel` so that production code (the
mask template is placed with it) does not import the generator.
"""

from openmind_curate.headmodel import (
    BIT_BRAIN,
    BIT_FACE,
    BIT_HEAD,
    LAYERS,
    MODEL_VERSION,
    HeadModel,
    build_head_model,
    cache_dir,
    head_model,
)

__all__ = [
    "BIT_BRAIN",
    "BIT_FACE",
    "BIT_HEAD",
    "LAYERS",
    "MODEL_VERSION",
    "HeadModel",
    "build_head_model",
    "cache_dir",
    "head_model",
]
