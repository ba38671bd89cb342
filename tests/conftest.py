"""Shared fixtures: the generated corpus (built once per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from openmind_curate.jobs import JobOptions
from openmind_curate.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]
BIDS_EXAMPLES = REPO.parent / "shared" / "testdata" / "bids-examples"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """The default-size generated corpus and its truth table."""
    root = tmp_path_factory.mktemp("corpus")
    truth, result = generate(root, SynthConfig(), JobOptions(workers=2, progress=False))
    assert result.ok, result.summary()
    return root, truth.to_pandas()


@pytest.fixture(scope="session")
def bids_examples() -> Path:
    if not BIDS_EXAMPLES.is_dir():
        pytest.skip(f"bids-examples not present at {BIDS_EXAMPLES} (only in the CI workplace)")
    return BIDS_EXAMPLES


@pytest.fixture(autouse=True)
def _single_blas_thread(monkeypatch):
    # Two cores: keep BLAS from oversubscribing next to the worker pools.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


@pytest.fixture(scope="session")
def dask_cluster():
    """A real two-worker Dask LocalCluster (processes, one thread each)."""
    from dask.distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    yield cluster
    cluster.close()
