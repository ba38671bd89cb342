"""Re-running `generate` on a finished corpus rewrites nothing that is already
right, so the next incremental crawl sees every dataset as unchanged."""

from __future__ import annotations

import os
from pathlib import Path

from openmind_curate.atomic import write_if_changed
from openmind_curate.bids.crawl import CrawlOptions, crawl
from openmind_curate.jobs import JobOptions
from openmind_curate.synth import SynthConfig, generate

CFG = SynthConfig(n_datasets=2, n_subjects=1, voxel_scale=3)
JOBS = JobOptions(workers=2, progress=False)


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """mtime_ns of every file and folder under `root`, and each file's bytes."""
    out = {".": (root.stat().st_mtime_ns, None)}
    for p in root.rglob("*"):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


def test_write_if_changed_keeps_identical_files(tmp_path):
    path = tmp_path / "a" / "b.json"
    assert write_if_changed(path, '{"x": 1}')  # missing: written, folder made
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert not write_if_changed(path, b'{"x": 1}')  # same bytes: untouched
    assert path.stat().st_mtime_ns == 1_000_000_000
    assert write_if_changed(path, '{"x": 2}')  # different: replaced
    assert path.read_text() == '{"x": 2}' and path.stat().st_mtime_ns != 1_000_000_000
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temp left behind


def test_resume_leaves_a_finished_corpus_untouched(tmp_path):
    root, index = tmp_path / "corpus", tmp_path / "index" / "images.parquet"
    truth, first = generate(root, CFG, JOBS)
    assert first.ok and len(first.done) == len(first.results) > 0
    crawled = crawl([root], index, CrawlOptions(), JOBS)
    assert crawled.n_datasets == CFG.n_datasets and crawled.n_unchanged == 0
    before = _snapshot(root)
    assert any(k.endswith("participants.tsv") for k in before)
    assert any(k.endswith("dataset_description.json") for k in before)

    again, second = generate(root, CFG, JOBS)
    assert len(second.skipped) == len(second.results)  # no image regenerated
    after = _snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], f"a resumed run touched {changed}"
    assert again.equals(truth)

    recrawl = crawl([root], index, CrawlOptions(), JOBS)
    assert recrawl.n_unchanged == recrawl.n_datasets == CFG.n_datasets
    assert recrawl.n_headers_read == 0

    # A damaged or missing small file is restored, and only its dataset changes.
    ds = sorted(p for p in root.iterdir() if p.name.startswith("ds"))[0]
    sidecar = next(p for p in sorted(ds.rglob("*.json")) if p.name != "dataset_description.json")
    good = sidecar.read_bytes()
    sidecar.write_bytes(good + b" ")
    (ds / "participants.tsv").unlink()
    generate(root, CFG, JOBS)
    assert sidecar.read_bytes() == good
    assert (ds / "participants.tsv").read_bytes() == before[f"{ds.name}/participants.tsv"][1]
    last = crawl([root], index, CrawlOptions(), JOBS)
    assert last.n_unchanged == CFG.n_datasets - 1
