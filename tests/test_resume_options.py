"""Resume knows its options (issue 10): an output made with other options is
recomputed on the next run, not reported as skipped; `keep_existing` keeps it.

The DWI stage on dipy's small_64D (10x10x10, 65 volumes) with the fast
options (no denoising, motion or bias correction), once without Gibbs removal
and then with it, as ``curate dwi FILE --no-gibbs`` then ``curate dwi FILE``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from dipy.data import get_fnames

from openmind_curate import __version__
from openmind_curate.dwi import run as dwi_run
from openmind_curate.dwi.pipeline import DwiConfig
from openmind_curate.jobs import JobOptions, options_hash
from openmind_curate.jobs.stage import is_current as mask_is_current
from openmind_curate.jobs.stage import is_current as metrics_is_current
from openmind_curate.masks.compute import MaskConfig
from openmind_curate.masks.run import MaskJob
from openmind_curate.quality.metrics import MetricsConfig
from openmind_curate.quality.run import MetricsJob

FAST = DwiConfig(denoise=None, motion=False, bias=False)
OPTIONS = JobOptions(workers=1, progress=False)


@pytest.fixture()
def series(tmp_path) -> Path:
    nii, bval, bvec = (Path(f) for f in get_fnames(name="small_64D"))
    folder = tmp_path / "in"
    folder.mkdir()
    for src, ext in ((nii, ".nii"), (bval, ".bval"), (bvec, ".bvec")):
        shutil.copy(src, folder / f"sub-01_dwi{ext}")
    return folder / "sub-01_dwi.nii"


def _run(series: Path, out: Path, config: DwiConfig, options: JobOptions = OPTIONS):
    jobs = dwi_run.jobs_for_files([series], out, config)
    batch, lines = dwi_run.run_jobs(jobs, options)
    assert batch.ok, batch.summary()
    record = json.loads(jobs[0].record.read_text())
    return batch, lines[0], record, jobs[0]


def test_dwi_rerun_with_other_options_recomputes_and_keep_existing_keeps(series, tmp_path):
    out = tmp_path / "out"
    no_gibbs = replace(FAST, gibbs=False)
    first, line, record, job = _run(series, out, no_gibbs)
    assert (len(first.done), first.recomputed, line["status"]) == (1, [], "done")
    assert record["options_hash"] == options_hash(no_gibbs)
    assert record["version"] == __version__
    sidecar = json.loads(job.path("FA").with_suffix("").with_suffix(".json").read_text())
    assert sidecar["OptionsHash"] == record["options_hash"]
    assert sidecar["Parameters"]["gibbs"] is False

    same, line, _, _ = _run(series, out, no_gibbs)  # same options: plain resume
    assert (len(same.skipped), same.recomputed, line["status"]) == (1, [], "skipped")

    kept, line, kept_record, _ = _run(series, out, FAST, replace(OPTIONS, keep_existing=True))
    assert (len(kept.skipped), kept.recomputed, line["status"]) == (1, [], "skipped")
    assert kept_record == record

    redone, line, new_record, job = _run(series, out, FAST)  # Gibbs removal back on
    assert (len(redone.done), line["status"]) == (1, "done")
    assert redone.recomputed == [str(series.resolve())]
    assert "1 recomputed: options changed" in redone.summary()
    assert new_record["options_hash"] == options_hash(FAST) != record["options_hash"]
    sidecar = json.loads(job.path("FA").with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Parameters"]["gibbs"] is True


def test_dwi_records_from_before_options_hashes_count_as_current(series, tmp_path):
    """An upgrade must not recompute a corpus whose records carry no hash."""
    out = tmp_path / "out"
    _, _, record, job = _run(series, out, FAST)
    old = {k: v for k, v in record.items() if k not in ("options_hash", "version")}
    job.record.write_text(json.dumps(old))
    batch, line, _, _ = _run(series, out, replace(FAST, gibbs=False))
    assert (len(batch.skipped), batch.recomputed, line["status"]) == (1, [], "skipped")


def test_dwi_thread_count_does_not_change_the_hash(series, tmp_path):
    out = tmp_path / "out"
    _run(series, out, FAST)
    batch, _, _, _ = _run(series, out, replace(FAST, threads=3))
    assert (len(batch.skipped), batch.recomputed) == (1, [])


@pytest.mark.parametrize("stage", ["masks", "metrics"])
def test_masks_and_metrics_markers_compare_their_config(tmp_path, stage):
    """Each stage's `current` hook reads its marker's hash against its config."""
    if stage == "masks":
        job = MaskJob("id", "img.nii.gz", str(tmp_path), "img")
        marker, other = job.path("record"), replace(job, config=MaskConfig(working_mm=6.0))
        is_current = mask_is_current
    else:
        job = MetricsJob("id", "ds", "img.nii.gz", "img.nii.gz", "T1w", str(tmp_path))
        marker, other = job.part, replace(job, config=MetricsConfig(artifact_z=3.0))
        is_current = metrics_is_current
    marker.write_text(json.dumps({"options_hash": options_hash(job.config)}))
    assert is_current(job)
    assert not is_current(other)
    marker.write_text(json.dumps({"image_id": "id"}))  # an older release
    assert is_current(other)


def test_the_command_line_says_what_it_recomputed_and_keeps_on_request(series, tmp_path):
    from typer.testing import CliRunner

    from openmind_curate.cli import app

    fast = ["--denoise", "none", "--no-motion", "--no-bias", "-j", "1"]
    base = ["dwi", str(series), "--out", str(tmp_path / "out"), *fast]

    def run(*extra: str) -> str:
        result = CliRunner().invoke(app, [*base, *extra, "-q"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    assert "1 done" in run("--no-gibbs")
    assert "1 skipped" in run("--no-gibbs")
    assert "1 skipped" in run("--keep-existing")  # Gibbs on now, but the old output is kept
    out = run()
    assert "1 done" in out and "1 recomputed: options changed" in out


def test_an_output_of_a_changed_input_is_redone_not_skipped(series, tmp_path):
    out = tmp_path / "out"
    _run(series, out, FAST)
    st = series.stat()
    os.utime(series, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file was replaced
    again, line, record, _ = _run(series, out, FAST)
    assert (len(again.done), line["status"]) == (1, "done")
    assert record["source_mtime_ns"] == series.stat().st_mtime_ns
    assert len(_run(series, out, FAST)[0].skipped) == 1  # and now it is current
