"""Generate the corpus: plan, write dataset-level files, write every image
through the batch runner, then assemble the truth table.

Layout under OUT::

    ds900001/ ... ds90000N/      BIDS datasets (raw), derivatives/labels inside
    truth/images.parquet         one row per written file (schema.SYNTH_TRUTH)
    truth/masks/, truth/dwi/     true anatomy/anonymization masks, FA/MD/brain mask
    truth/rows/                  per-file rows (make generation resumable)

A re-run with the same configuration rewrites nothing that is already right:
finished images are skipped by the batch runner and every other file goes
through `write_if_changed`, so mtimes stay put and a re-crawl sees no change.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from openmind_curate.atomic import write_if_changed
from openmind_curate.errors import ConflictError
from openmind_curate.jobs import JobOptions, run_batch
from openmind_curate.jobs.runner import BatchResult
from openmind_curate.schema import SYNTH_TRUTH, rows_to_table, validate
from openmind_curate.synth.head import head_model
from openmind_curate.synth.participants import participants_json, participants_tsv
from openmind_curate.synth.plan import DatasetPlan, SynthConfig, plan_corpus
from openmind_curate.synth.write import WriteJob, write_spec

TRUTH_TABLE = "truth/images.parquet"


class SynthResult(NamedTuple):
    """What `generate` made. `truth` is None when a file failed: the truth
    table describes a whole corpus, so it is written only once every file is."""

    truth: pa.Table | None
    batch: BatchResult


def _participant_truth(plan: DatasetPlan) -> dict[tuple[str, str | None], dict[str, Any]]:
    out = {}
    for s in plan.subjects:
        base = dict(
            participants_style=plan.style,
            age=s.age,
            age_raw=s.age_raw,
            sex=s.sex,
            handedness=s.handedness,
            weight=s.weight,
            bmi=s.bmi,
            health_status=s.health_status,
        )
        out[(s.label, None)] = base
        for ses, age in s.session_ages.items():
            out[(s.label, ses)] = {**base, "age": age, "age_raw": f"{age:g}"}
    return out


def write_dataset_files(plan: DatasetPlan, root: Path) -> None:
    ds = root / plan.dataset_id
    files = dict(plan.files)
    files["participants.tsv"] = participants_tsv(plan.subjects, bom=plan.style == "coded")
    doc = participants_json(plan.style)
    if doc:
        files["participants.json"] = doc
    for rel, text in files.items():
        write_if_changed(ds / rel, text)


def _check_config(root: Path, cfg: SynthConfig) -> None:
    """Resuming is only safe into a corpus made with the same config. A field
    added since the corpus was made counts as its default value."""
    path = root / "truth" / "config.json"
    wanted = json.dumps(asdict(cfg), sort_keys=True)
    if path.exists():
        try:
            made = {**asdict(SynthConfig()), **json.loads(path.read_text())}
        except json.JSONDecodeError:
            made = None  # not ours to overwrite either
        if made != asdict(cfg):
            raise ConflictError(
                f"{root} holds a corpus generated with another configuration "
                f"({path.read_text()}); use an empty folder or the same options"
            )
    write_if_changed(path, wanted)


def generate(
    out: str | Path, cfg: SynthConfig = SynthConfig(), options: JobOptions | None = None
) -> SynthResult:
    """Write the corpus under `out`; returns the truth table and the batch result.

    Re-running with the same config skips files already written. When a file
    fails, the batch result names it and no truth table is written.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    _check_config(root, cfg)
    plans = plan_corpus(cfg)
    for plan in plans:
        write_dataset_files(plan, root)
    jobs = [WriteJob(spec, str(root)) for plan in plans for spec in plan.images]
    head_model()  # build or load once here, so forked workers inherit it
    options = options or JobOptions(description="synth")
    result = run_batch(write_spec, jobs, options, outputs=WriteJob.outputs)
    if not result.ok:
        return SynthResult(None, result)

    people = {p.dataset_id: _participant_truth(p) for p in plans}
    rows = []
    for job in jobs:
        row = json.loads(job.row_path.read_text())
        spec = job.spec
        who = people[spec.dataset_id]
        row.update(who.get((spec.subject, spec.session)) or who[(spec.subject, None)])
        rows.append(row)
    table = rows_to_table(rows, SYNTH_TRUTH)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_if_changed(root / TRUTH_TABLE, sink.getvalue().to_pybytes())
    return SynthResult(table, result)


def load_truth(root: str | Path) -> pa.Table:
    """The corpus's truth table, validated like every table a reader takes in."""
    return validate(pq.read_table(Path(root) / TRUTH_TABLE), SYNTH_TRUTH)
