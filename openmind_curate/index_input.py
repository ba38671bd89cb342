"""The image index as a stage's input: checked before any work.

A stage given an index without a single image stops with a message rather
than writing an empty result; a stage that will add to the index proves, before
hours of work, that it can write and lock it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from openmind_curate import index as store
from openmind_curate import preflight
from openmind_curate.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

#: The index every command reads unless given `--index`.
DEFAULT_INDEX = Path("index/images.parquet")


def read_images(index: str | os.PathLike[str]) -> pd.DataFrame:
    """The index through the store (absolute paths), refused if it holds no image."""
    frame = store.read_frame(index)
    if frame.empty:
        raise InputError(
            f"index {index} holds no images: nothing to do (did `curate crawl` find any dataset?)"
        )
    return frame


def check_writable(index: str | os.PathLike[str]) -> None:
    """The index's folder is writable and its lock can be taken (within 30 s)."""
    preflight.output_file(Path(index), "--index")
    with store.locked(index, timeout=30):
        pass
