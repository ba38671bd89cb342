"""The whole-head model's one-time build says so, and the cache is then used."""

from __future__ import annotations

import logging

import numpy as np

from openmind_curate import headmodel


def test_first_build_is_announced_then_cached(tmp_path, monkeypatch, caplog):
    maps = [np.zeros((2, 2, 2), np.float32) for _ in range(3)]
    labels = [np.zeros((2, 2, 2), np.uint8) for _ in range(2)]
    tiny = headmodel.HeadModel(np.eye(4), *maps, *labels)
    built = []
    monkeypatch.setenv("OPENMIND_CURATE_CACHE", str(tmp_path))
    monkeypatch.setattr(headmodel, "build_head_model", lambda: built.append(1) or tiny)
    headmodel.head_model.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="openmind_curate"):
            headmodel.head_model()
            headmodel.head_model.cache_clear()
            headmodel.head_model()  # from the disk cache: no second build, no message
    finally:
        headmodel.head_model.cache_clear()
    assert built == [1]
    notices = [r.getMessage() for r in caplog.records if "whole-head model" in r.getMessage()]
    assert len(notices) == 1 and str(tmp_path) in notices[0]
