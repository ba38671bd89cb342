"""The `curate` command line, run in-process and as the installed console script."""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer.main
from typer.testing import CliRunner

import openmind_curate
from openmind_curate.cli import app
from openmind_curate.quality import ratings

runner = CliRunner()
STAGES = [
    "bids",
    "dwi",
    "masks",
    "quality",
    "manifest",
    "report",
    "jobs",
    "train",
    "finetune",
    "synth",
]


#: Phrases of a placeholder docstring, not a description of what is there.
FILE_NAME = re.compile(r"\.(json|parquet|csv|tsv|py|nii|gz|html|png|yaml|sqlite)$")
PLACEHOLDER = re.compile(r"\b(will|todo|tbd|placeholder|not yet|coming soon|to be written)\b", re.I)


def _resolves(package: str, name: str) -> bool:
    """A backticked name of a package docstring: a submodule, an attribute of
    the package or of one of its submodules, or an importable module."""
    name = name.removeprefix(f"{package}.")
    head = name.split(".")[0]
    if name.startswith("openmind_curate."):
        try:
            importlib.import_module(name)
            return True
        except ImportError:
            parent, _, attr = name.rpartition(".")
            return hasattr(importlib.import_module(parent), attr)
    module = importlib.import_module(f"openmind_curate.{package}")
    if hasattr(module, head) or importlib.util.find_spec(f"openmind_curate.{package}.{head}"):
        return True
    for info in pkgutil.iter_modules(module.__path__):
        if hasattr(importlib.import_module(f"{module.__name__}.{info.name}"), head):
            return True
    return False


def test_layout_has_every_stage_package_with_a_docstring():
    """Each stage package's docstring is a current map of it: it names every
    one of its modules in backticks, every name it backticks exists, and it
    says what is there, not what will be."""
    found = {m.name for m in pkgutil.iter_modules(openmind_curate.__path__)}
    assert set(STAGES) <= found
    problems = []
    for name in STAGES:
        module = importlib.import_module(f"openmind_curate.{name}")
        doc = module.__doc__ or ""
        if PLACEHOLDER.search(doc):
            problems.append(f"{name}: placeholder text {PLACEHOLDER.search(doc).group(0)!r}")
        named = {n for n in re.findall(r"`([A-Za-z_][\w.]*)`", doc) if not FILE_NAME.search(n)}
        problems += [
            f"{name}: `{n}` names nothing" for n in sorted(named) if not _resolves(name, n)
        ]
        short = {n.removeprefix(f"openmind_curate.{name}.").removeprefix(f"{name}.") for n in named}
        for info in pkgutil.iter_modules(module.__path__):
            if not info.name.startswith("_") and info.name not in short:
                problems.append(f"{name}: module `{info.name}` is not named in the docstring")
    assert not problems, "\n".join(problems)


def test_rate_finds_the_rater_app_of_this_checkout():
    from openmind_curate.cli.ratings import app_file

    assert app_file() == Path(__file__).resolve().parents[1] / "apps" / "rater.py"


def test_user_and_data_text_is_never_read_as_markup(capsys):
    """Paths and names may hold brackets: printed as they are, never as rich markup
    (an unmatched closing tag would even raise)."""
    import pandas as pd
    import typer

    from openmind_curate.cli import common
    from openmind_curate.errors import InputError

    common.say("sub-[bold]01[/bold]")
    common.print_frame(pd.DataFrame({"path": ["a[/b]"], "n": [1]}), "in [red]x[/red]")

    @common.user_errors
    def refuse():
        raise InputError("no index at /data/[/x]")

    with pytest.raises(typer.Exit) as stop:
        refuse()
    assert stop.value.exit_code == 2
    out = " ".join(capsys.readouterr().out.split())  # a narrow table wraps its title
    for text in ("sub-[bold]01[/bold]", "a[/b]", "in [red]x[/red]", "no index at /data/[/x]"):
        assert text in out, text


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("curate")  # the venv's script, PATH or not
    assert exe.is_file(), f"the `curate` console script is not installed at {exe}"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"openmind-curate {openmind_curate.__version__}"


def test_batch_commands_share_workers_and_scheduler_options():
    """Every batch command takes the same --workers/-j, --scheduler and
    --quiet/-q, and shows them in its --help; no other command takes --scheduler."""
    batch = {"synth", "crawl", "dwi", "masks", "metrics", "preprocess"}
    group = typer.main.get_command(app)
    with_scheduler = {
        name
        for name, cmd in group.commands.items()
        if any("--scheduler" in getattr(p, "opts", ()) for p in cmd.params)
    }
    assert with_scheduler == batch
    shared = {}
    for name in sorted(batch):
        params = {p.name: p for p in group.commands[name].params}
        for key in ("workers", "scheduler", "quiet"):
            p = params[key]
            shared.setdefault(key, (p.opts, p.default, p.help))
            assert (p.opts, p.default, p.help) == shared[key], (name, key)
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        for opt in ("--workers", "-j", "--scheduler", "--quiet", "[default: all cores]"):
            assert opt in result.output, (name, opt)
    assert shared["workers"][0] == ["--workers", "-j"] and shared["quiet"][0] == ["--quiet", "-q"]
    synth = runner.invoke(app, ["synth", "--help"], env={"COLUMNS": "200"}).output
    for opt in ("--n-datasets", "--n-subjects", "--seed"):
        assert opt in synth


def test_synth_command_writes_a_corpus_and_prints_a_summary(tmp_path):
    def args(seed: int) -> list[str]:
        return [
            "synth",
            "--out",
            str(tmp_path),
            "--n-datasets",
            "2",
            "--n-subjects",
            "1",
            "--seed",
            str(seed),
            "--voxel-scale",
            "3",
            "--workers",
            "2",
            "--quiet",
        ]

    result = runner.invoke(app, args(3), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "ds900001" in result.output and "ds900002" in result.output
    assert (tmp_path / "truth" / "images.parquet").is_file()
    # Same folder, other seed: a clear refusal, not a silently mixed corpus.
    bad = runner.invoke(app, args(4))
    assert bad.exit_code == 2 and "another configuration" in bad.output


def test_demo_runs_the_existing_stages(tmp_path):
    result = runner.invoke(
        app, ["demo", "--out", str(tmp_path), "--workers", "2", "--quiet"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "demo finished" in result.output
    assert (tmp_path / "corpus" / "truth" / "images.parquet").is_file()
    assert "ds900004" in result.output
    index = pq.read_table(tmp_path / "index" / "images.parquet").to_pandas()
    truth = pq.read_table(tmp_path / "corpus" / "truth" / "images.parquet").to_pandas()
    crawled = index[index["derived_from"].isna()]
    assert len(crawled) == (truth["kind"] == "image").sum()
    maps = index[index["derived_from"].notna()]
    assert len(maps) == 3 * (truth["modality"] == "DWI").sum()  # FA, MD, T2w per series
    assert "Images per modality" in result.output
    readable = index[index["header_status"] == "ok"]
    assert readable["anat_mask_path"].notna().all() and readable["anon_mask_path"].notna().all()
    assert index.loc[index["derived_from"].notna(), "is_brain_extracted"].all()
    metrics = pq.read_table(tmp_path / "metrics" / "metrics.parquet").to_pandas()
    assert len(metrics) == len(index)
    # step 6: simulated raters filled the plan, and the output says they are simulated
    assert "SIMULATED ratings" in result.output and "Agreement per axis" in result.output
    engine = ratings.connect(tmp_path / "index" / "ratings.sqlite", create=False)
    rated = ratings.read_ratings(engine)
    queued = ratings.read_assignments(engine)
    assert len(rated) == len(queued) > 0 and set(rated["app_version"]) == {"simulated"}
    dwi_units = rated[rated["image_id"].isin(maps["derived_from"])]  # under the source's id
    assert len(dwi_units) and dwi_units["artifact_level"].isna().all()
    assert not rated["image_id"].isin(maps["image_id"]).any()  # never under a map's id
    # steps 7-9: scores in the index, the manifest, the report
    scored = pq.read_table(tmp_path / "index" / "images.parquet").to_pandas()
    readable = scored[scored["header_status"] == "ok"]
    assert readable["iqs"].notna().all() and readable["iqs_predicted"].notna().any()
    manifest = pq.read_table(tmp_path / "manifests" / "iqs-le-2.5.parquet").to_pandas()
    assert (
        len(manifest)
        and (manifest["iqs"] <= 2.5).all()
        and set(manifest["split"]) == {"train", "val"}
    )
    assert (tmp_path / "manifests" / "iqs-le-2.5.json").is_file()
    assert (tmp_path / "report" / "index.html").is_file()
    # steps 10-12: store, MAE run, fine-tuning from scratch and pre-trained
    assert (tmp_path / "train" / "store" / "store.parquet").is_file()
    assert (tmp_path / "train" / "mae-tiny" / "encoder.pt").is_file()
    assert "scratch: mean Dice" in result.output and "pretrained: mean Dice" in result.output
    # step 13: a short classification run beats chance on held-out folds (the
    # issue's bar: balanced accuracy >= 1/K + 0.2 for K classes), both ways;
    # every class has 5 subjects or more, so every held-out fold holds each
    for name in ("scratch", "pretrained"):
        run = json.loads(
            (tmp_path / "train" / "classify" / name / "classification.json").read_text()
        )
        assert run["classes"] == ["T1", "T2"] and len(run["folds"]) == 5
        assert all(not f["scores"]["absent_classes"] for f in run["folds"])
        table = pq.read_table(tmp_path / "train" / "classify" / "weighting.parquet")
        held_out = [f["scores"]["n"] for f in run["folds"]]
        assert sum(held_out) == table.num_rows - len(run["left_out"]) and min(held_out) >= 1
        assert run["mean"]["balanced_accuracy"] >= 1 / len(run["classes"]) + 0.2, (name, run)
        assert f"{name}: balanced accuracy" in result.output
    # the headline filter visibly works: the generator's poor dataset (every
    # image noisy, blurred and ghosted) is rated out, and the output says so
    poor = truth.loc[truth["kind"] == "image", "dataset_id"].max()
    assert poor == "ds900005" and (scored["dataset_id"] == poor).any()
    assert not (manifest["dataset_id"] == poor).any()
    assert "The IQS filter (--iqs-max 2.5) dropped" in result.output
    # a validation split of whole subjects, and a minority of them
    subjects = manifest[["dataset_id", "subject", "split"]].drop_duplicates()
    assert subjects.groupby(["dataset_id", "subject"])["split"].nunique().eq(1).all()
    assert 0 < (subjects["split"] == "val").sum() < len(subjects) / 2
    # the last lines say what to open next
    tail = result.output[result.output.index("demo finished") :]
    for what in ("index.html", "iqs-le-2.5.parquet", "iqs-le-2.5.json", "loss.png", "curate rate"):
        assert what in tail, what
    steps = runner.invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).output
    for step in ("preprocess", "train", "finetune", "build-manifest", "report"):
        assert step in steps, step


def test_index_summary_and_clear_errors(tmp_path, corpus):
    root, truth = corpus
    out = tmp_path / "images.parquet"
    crawled = runner.invoke(
        app, ["crawl", str(root), "--out", str(out), "-j", "2", "-q"], env={"COLUMNS": "200"}
    )
    assert crawled.exit_code == 0, crawled.output
    assert "Problems" in crawled.output and "truncated" in crawled.output
    summary = runner.invoke(app, ["index", "summary", "--index", str(out)], env={"COLUMNS": "200"})
    assert summary.exit_code == 0
    n_t1 = ((truth["kind"] == "image") & (truth["modality"] == "T1w")).sum()
    assert re.search(rf"│ T1w\s+│\s+{n_t1} │", summary.output)
    assert "Header status" in summary.output and "Images per dataset" in summary.output
    missing = runner.invoke(app, ["index", "summary", "--index", str(tmp_path / "nope.parquet")])
    assert missing.exit_code == 2 and "no index at" in missing.output
    not_dir = runner.invoke(app, ["crawl", str(tmp_path / "nowhere"), "--out", str(out)])
    assert not_dir.exit_code == 2 and "not a folder" in not_dir.output


def test_train_extra_builds_a_resenc_unet_on_cpu():
    """The train extra builds a ResidualEncoderUNet on the CPU."""
    torch = pytest.importorskip("torch", reason="the train extra is not installed")
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    net = ResidualEncoderUNet(
        input_channels=1,
        n_stages=3,
        features_per_stage=[4, 8, 16],
        conv_op=torch.nn.Conv3d,
        kernel_sizes=3,
        strides=[1, 2, 2],
        n_blocks_per_stage=[1, 1, 1],
        num_classes=2,
        n_conv_per_stage_decoder=[1, 1],
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        nonlin=torch.nn.LeakyReLU,
    )
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 16, 16, 16))
    assert tuple(out.shape) == (1, 2, 16, 16, 16)
