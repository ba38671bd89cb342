"""`curate fetch` with the HTTP layer faked (responses) and the transfer faked.

The payloads copy the shape of OpenNeuro's GraphQL answers (snapshot ->
files with filename/size/urls/directory). The live download path is not
exercised here: there is no network.
"""

from __future__ import annotations

import json

import pytest
import responses
from typer.testing import CliRunner

from openmind_curate.bids.crawl import CrawlOptions, crawl
from openmind_curate.bids.fetch import GRAPHQL_URL, FetchError, fetch, wanted
from openmind_curate.cli import app
from openmind_curate.jobs import JobOptions

FILES = {
    "CHANGES": 120,
    "README": 900,
    "dataset_description.json": 300,
    "participants.json": 200,
    "participants.tsv": 80,
    "acq-mprage_T1w.json": 400,
    "dwi.bval": 50,
    "dwi.bvec": 150,
    "task-facerecognition_bold.json": 500,
    "sub-01/sub-01_sessions.tsv": 40,
    "sub-01/ses-mri/sub-01_ses-mri_scans.tsv": 60,
    "sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.nii.gz": 5000,
    "sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.json": 100,
    "sub-01/ses-mri/dwi/sub-01_ses-mri_dwi.nii.gz": 9000,
    "sub-01/ses-mri/dwi/sub-01_ses-mri_dwi.bval": 60,
    "sub-01/ses-mri/func/sub-01_ses-mri_task-facerecognition_run-01_bold.nii.gz": 70000,
    "sub-01/ses-meg/meg/sub-01_ses-meg_task-facerecognition_run-01_meg.fif": 90000,
    "derivatives/freesurfer/sub-01/mri/T1.mgz": 8000,
    "sourcedata/sub-01/dicom.zip": 99999,
    "stimuli/face.png": 500,
}
WANTED = {
    "CHANGES",
    "README",
    "dataset_description.json",
    "participants.json",
    "participants.tsv",
    "acq-mprage_T1w.json",
    "dwi.bval",
    "dwi.bvec",
    "task-facerecognition_bold.json",
    "sub-01/sub-01_sessions.tsv",
    "sub-01/ses-mri/sub-01_ses-mri_scans.tsv",
    "sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.nii.gz",
    "sub-01/ses-mri/anat/sub-01_ses-mri_acq-mprage_T1w.json",
    "sub-01/ses-mri/dwi/sub-01_ses-mri_dwi.nii.gz",
    "sub-01/ses-mri/dwi/sub-01_ses-mri_dwi.bval",
}


def _payload(tag: str, latest: bool = False) -> dict:
    files = [
        {
            "id": f"{i:040x}",
            "filename": name,
            "size": size,
            "directory": False,
            "urls": [f"https://s3.amazonaws.com/openneuro.org/ds000117/{name}?versionId=abc"],
        }
        for i, (name, size) in enumerate(FILES.items())
    ]
    files.append({"id": "d" * 40, "filename": "sub-01", "size": 0, "directory": True, "urls": []})
    snap = {"id": f"ds000117:{tag}", "tag": tag, "files": files}
    if latest:
        return {"data": {"dataset": {"id": "ds000117", "latestSnapshot": snap}}}
    return {"data": {"snapshot": snap}}


class FakeDownloader:
    """Writes the requested files at their listed sizes; can die part-way."""

    def __init__(self, fail_after: int | None = None):
        self.calls: list[dict] = []
        self.fail_after = fail_after

    def __call__(self, *, dataset, tag, target_dir, include):
        from pathlib import Path

        self.calls.append(dict(dataset=dataset, tag=tag, include=list(include)))
        for n, pattern in enumerate(include):
            if self.fail_after is not None and n == self.fail_after:
                partial = Path(target_dir) / pattern.lstrip("/")
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_bytes(b"x" * (FILES[pattern.lstrip("/")] // 2))
                raise ConnectionError("connection reset by peer")
            path = Path(target_dir) / pattern.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * FILES[pattern.lstrip("/")])


def test_include_rules_pick_metadata_and_chosen_datatypes():
    assert {p for p in FILES if wanted(p, ("anat", "dwi"))} == WANTED
    assert not wanted("sub-01/ses-mri/anat/.DS_Store", ("anat",))


@responses.activate
def test_dry_run_lists_files_and_sizes_and_downloads_nothing(tmp_path):
    responses.post(GRAPHQL_URL, json=_payload("1.0.5"))
    fake = FakeDownloader()
    result = fetch("ds000117", tmp_path, tag="1.0.5", dry_run=True, downloader=fake)
    assert {f.path for f in result.plan.todo} == WANTED
    assert result.plan.bytes_todo == sum(FILES[p] for p in WANTED)
    assert fake.calls == [] and not any(tmp_path.iterdir())
    sent = json.loads(responses.calls[0].request.body)["query"]
    assert 'snapshot(datasetId: "ds000117", tag: "1.0.5")' in sent


@responses.activate
def test_fetch_pins_the_latest_tag_and_records_it(tmp_path):
    responses.post(GRAPHQL_URL, json=_payload("2.0.0", latest=True))
    fake = FakeDownloader()
    result = fetch("ds000117", tmp_path, downloader=fake)
    assert result.complete
    assert fake.calls[0]["tag"] == "2.0.0"
    assert sorted(fake.calls[0]["include"]) == sorted("/" + p for p in WANTED)
    record = json.loads((tmp_path / "ds000117/.openmind/fetch.json").read_text())
    assert record == {
        "dataset": "ds000117",
        "tag": "2.0.0",
        "datatypes": ["anat", "dwi"],
        "complete": True,
    }
    # The crawler carries the pinned tag into the index.
    (tmp_path / "ds000117/dataset_description.json").write_text('{"Name": "x"}')
    index = crawl(
        [tmp_path], tmp_path / "i.parquet", CrawlOptions(), JobOptions(workers=1, progress=False)
    ).index.to_pandas()
    assert set(index["snapshot_tag"]) == {"2.0.0"} and len(index) == 2


@responses.activate
def test_interrupted_fetch_resumes_with_only_the_missing_files(tmp_path):
    responses.post(GRAPHQL_URL, json=_payload("1.0.5"))
    dying = FakeDownloader(fail_after=5)
    with pytest.raises(ConnectionError):
        fetch("ds000117", tmp_path, tag="1.0.5", downloader=dying)
    record = json.loads((tmp_path / "ds000117/.openmind/fetch.json").read_text())
    assert record["complete"] is False and record["tag"] == "1.0.5"
    done_first = {p.lstrip("/") for p in dying.calls[0]["include"][:5]}
    partial = dying.calls[0]["include"][5].lstrip("/")

    fake = FakeDownloader()
    result = fetch("ds000117", tmp_path, tag="1.0.5", downloader=fake)
    asked = {p.lstrip("/") for p in fake.calls[0]["include"]}
    assert asked == WANTED - done_first and partial in asked  # the half file again
    assert result.complete
    for p in WANTED:
        assert (tmp_path / "ds000117" / p).stat().st_size == FILES[p]
    # Nothing left: a third run does not call the downloader at all.
    again = FakeDownloader()
    assert fetch("ds000117", tmp_path, tag="1.0.5", downloader=again).complete
    assert again.calls == []


@responses.activate
def test_refuses_to_mix_snapshots(tmp_path):
    responses.post(GRAPHQL_URL, json=_payload("1.0.5"))
    fetch("ds000117", tmp_path, tag="1.0.5", downloader=FakeDownloader())
    responses.replace(responses.POST, GRAPHQL_URL, json=_payload("1.1.0"))
    with pytest.raises(FetchError, match="holds snapshot 1.0.5.*refusing to mix in 1.1.0"):
        fetch("ds000117", tmp_path, tag="1.1.0", downloader=FakeDownloader())


@responses.activate
def test_api_errors_name_the_dataset(tmp_path):
    responses.post(GRAPHQL_URL, json={"errors": [{"message": "Snapshot not found"}], "data": None})
    with pytest.raises(FetchError, match="ds999999: OpenNeuro API error: Snapshot not found"):
        fetch("ds999999", tmp_path, tag="9.9.9", downloader=FakeDownloader())
    responses.replace(responses.POST, GRAPHQL_URL, status=502)
    with pytest.raises(FetchError, match="ds000117: OpenNeuro answered HTTP 502"):
        fetch("ds000117", tmp_path, tag="1.0.5", downloader=FakeDownloader())


@responses.activate
def test_cli_dry_run(tmp_path):
    responses.post(GRAPHQL_URL, json=_payload("1.0.5"))
    result = CliRunner().invoke(
        app,
        ["fetch", "ds000117:1.0.5", "--dest", str(tmp_path), "--dry-run"],
        env={"COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    assert "snapshot 1.0.5" in result.output
    assert f"would download {len(WANTED)} files" in result.output
    assert not any(tmp_path.iterdir())
