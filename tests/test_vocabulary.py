"""The CLI speaks one vocabulary (docs: the CLI vocabulary): every command of
the Typer app is walked and its options are checked against it; mistakes that
used to pass silently are refused; renamed options keep their old names."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import typer.main
from conftest import write_one_image_index
from typer.testing import CliRunner

from openmind_curate import cli
from openmind_curate.cli import app
from openmind_curate.index_input import DEFAULT_INDEX

runner = CliRunner()
ENV = {"COLUMNS": "300"}  # wide: a choice list is never wrapped

#: What each command's --out names (the vocabulary: one table, or many files).
OUT_KIND = {
    "crawl": "FILE",
    "metrics": "FILE",
    "iqs": "FILE",
    "build-manifest": "FILE",
    "ratings export": "FILE",
    "synth": "FOLDER",
    "dwi": "FOLDER",
    "masks": "FOLDER",
    "report": "FOLDER",
    "preprocess": "FOLDER",
    "train": "FOLDER",
    "finetune": "FOLDER",
    "demo": "FOLDER",
    "ratings agreement": "FOLDER",
}
#: Options that take one of a fixed set of values, wherever they appear.
CHOICE_OPTIONS = {"--arch", "--denoise", "--format", "--amp", "--schedule", "--method"}
BATCH_COMMANDS = {"synth", "crawl", "dwi", "masks", "metrics", "preprocess"}


def commands(group=None, prefix: tuple[str, ...] = ()):
    """(path, click command) for every command of the app, through its groups."""
    group = group or typer.main.get_command(app)
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if hasattr(command, "commands"):
            yield from commands(command, path)
        else:
            yield path, command


COMMANDS = dict(commands())


def options(command) -> dict[str, object]:
    """Visible options by long name."""
    found = {}
    for p in command.params:
        if p.param_type_name == "option" and not p.hidden:
            for name in [*p.opts, *p.secondary_opts]:
                found[name] = p
    return found


def arguments(command) -> list:
    return [p for p in command.params if p.param_type_name == "argument" and not p.hidden]


def kind(param) -> str:
    """The parameter's type as one word, for typer with its own click (either vintage)."""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None:  # typer >= 0.29
        if desc.is_choice:
            return "choice"
        annotation = desc.annotation
        return getattr(annotation, "__name__", str(annotation)).lower()
    name = type(param.type).__name__
    return {
        "TyperChoice": "choice",
        "Choice": "choice",
        "TyperPath": "path",
        "StringParamType": "str",
        "IntRange": "int",
        "IntParamType": "int",
        "FloatRange": "float",
        "FloatParamType": "float",
        "BoolParamType": "bool",
    }.get(name, name)


def choices(param) -> tuple[str, ...]:
    desc = getattr(param, "type_descriptor", None)
    values = desc.choices if desc is not None else param.type.choices
    return tuple(str(getattr(v, "value", v)) for v in values)


def help_of(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env=ENV)
    assert result.exit_code == 0, (path, result.output)
    return result.output


def label(path: tuple[str, ...]) -> str:
    return " ".join(path)


def test_the_walk_finds_every_command():
    names = set(map(label, COMMANDS))
    assert {"synth", "crawl", "fetch", "index summary", "ratings export", "raters add"} <= names
    assert {"train", "finetune", "preprocess", "iqs", "demo", "build-manifest"} <= names


def test_option_words():
    problems = []
    for path, command in COMMANDS.items():
        names = options(command)
        where = label(path)
        # modality groups are plural lists; BIDS folders are --datatypes
        for old in ("--modality", "--exclude-modality"):
            if old in names:
                problems.append(
                    f"{where}: {old} (the vocabulary: {old.replace('modality', 'modalities')})"
                )
        if "--modalities" in names and where != "build-manifest":
            problems.append(
                f"{where}: --modalities means modality groups; BIDS folders: --datatypes"
            )
        if "--spacing" in names and kind(names["--spacing"]) != "str":
            problems.append(f"{where}: --spacing is a {kind(names['--spacing'])}, not a string")
        if "--workers" in names and (
            "-j" not in names["--workers"].opts or kind(names["--workers"]) != "int"
        ):
            problems.append(f"{where}: --workers is not an int with -j")
        for option in sorted(CHOICE_OPTIONS & set(names)):
            if kind(names[option]) != "choice":
                problems.append(f"{where}: {option} is not a choice")
    assert not problems, "\n".join(problems)
    train = options(COMMANDS[("train",)])
    assert "--loader-workers" in train and "--workers" not in train and "-j" not in train
    for where in ("crawl", "fetch"):
        assert "--datatypes" in options(COMMANDS[(where,)]), where


def test_out_and_index_are_options_with_the_vocabulary_defaults():
    problems = []
    for path, command in COMMANDS.items():
        where = label(path)
        for arg in arguments(command):  # never a positional OUT or INDEX
            if arg.name in {"out", "index"}:
                problems.append(f"{where}: {arg.name} is a positional argument")
        names = options(command)
        if "--index" in names:
            if Path(names["--index"].default) != DEFAULT_INDEX:
                problems.append(f"{where}: --index defaults to {names['--index'].default}")
        elif any(p.name == "index" for p in command.params if not p.hidden):
            problems.append(f"{where} takes an index, not as --index")
        if "--out" in names:
            out = names["--out"]
            if "-o" not in out.opts:
                problems.append(f"{where}: --out has no -o")
            if out.metavar != OUT_KIND.get(where):
                problems.append(f"{where}: --out shows {out.metavar}, not {OUT_KIND.get(where)}")
    assert not problems, "\n".join(problems)
    defaults = {
        ("metrics", "--out"): "metrics/metrics.parquet",
        ("iqs", "--out"): "iqs/iqs.parquet",
        ("iqs", "--metrics"): "metrics/metrics.parquet",
        ("dwi", "--out"): "derivatives/dwi",
        ("masks", "--out"): "derivatives/masks",
        ("crawl", "--out"): "index/images.parquet",
    }
    for (where, option), value in defaults.items():
        assert Path(options(COMMANDS[(where,)])[option].default) == Path(value), (where, option)
    for where in ("index summary", "dwi", "masks", "metrics", "iqs", "rate", "ratings plan"):
        assert "--index" in options(COMMANDS[tuple(where.split())]), where


def test_help_shows_choices_and_no_bool_or_braces():
    problems = ["curate: a flag shows <bool>"] if "<bool>" in help_of(()) else []
    for path, command in COMMANDS.items():
        text = help_of(path)
        where = label(path)
        if "<bool>" in text:
            problems.append(f"{where}: a flag shows <bool>")
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        if "{" in usage:
            problems.append(f"{where}: {usage.strip()}")
        for arg in arguments(command):
            shown = arg.metavar or arg.name
            if shown.upper() != shown:
                problems.append(f"{where}: argument {shown} is not in capitals")
        for name, param in options(command).items():
            if name.startswith("--") and kind(param) == "choice":
                if "|".join(choices(param)) not in text:
                    problems.append(f"{where} {name}: choices not shown")
    assert not problems, "\n".join(problems)


def test_every_batch_command_shares_the_batch_options():
    found = {label(p) for p, c in COMMANDS.items() if "--scheduler" in options(c)}
    assert found == BATCH_COMMANDS
    reference = options(COMMANDS[("synth",)])
    for where in BATCH_COMMANDS:
        names = options(COMMANDS[(where,)])
        for option in ("--workers", "--scheduler", "--quiet"):
            assert option in names, (where, option)
            mine, theirs = names[option], reference[option]
            assert (mine.opts, mine.default, mine.help) == (
                theirs.opts,
                theirs.default,
                theirs.help,
            )
        help_text = help_of((where,))
        assert "[default: all cores]" in " ".join(help_text.split()), where


def test_every_cli_module_registers_its_commands_the_same_way():
    for info in pkgutil.iter_modules(cli.__path__):
        if info.name in {"app", "common", "__main__"}:
            continue
        module = importlib.import_module(f"openmind_curate.cli.{info.name}")
        assert callable(getattr(module, "register", None)), info.name


# --- mistakes are refused -----------------------------------------------------------------


@pytest.fixture
def tiny_index(tmp_path):
    """A one-image index (the image need not exist: the checks come first)."""
    return write_one_image_index(tmp_path / "index" / "images.parquet", tmp_path / "ds")


def refused(args: list[str]) -> str:
    result = runner.invoke(app, args, env=ENV)
    text = " ".join(result.output.split())
    assert result.exit_code == 2, (args, result.output, result.exception)
    assert "Traceback" not in result.output
    return text


def test_a_file_out_that_is_a_folder_is_refused(tiny_index, tmp_path):
    index = ["--index", str(tiny_index)]
    for args in (
        ["metrics", *index, "--out", f"{tmp_path}/metrics/"],
        ["iqs", *index, "--out", f"{tmp_path}/metrics/"],
        ["ratings", "export", *index, "--out", f"{tmp_path}/metrics/"],
    ):
        assert "ends in '/'" in refused(args), args
    assert not (tmp_path / "metrics").exists()
    (tmp_path / "tables").mkdir()
    text = refused(["metrics", *index, "--out", str(tmp_path / "tables")])
    assert "is a folder; give a file path" in text
    assert list((tmp_path / "tables").iterdir()) == []


def test_unknown_datatypes_are_refused(tmp_path):
    (tmp_path / "corpus").mkdir()
    crawl = ["crawl", str(tmp_path / "corpus"), "--out", str(tmp_path / "i.parquet")]
    text = refused([*crawl, "--datatypes", "anat,bogus"])
    assert "bogus" in text and "known: anat" in text and "pet" in text
    text = refused(["fetch", "ds000001", "--dest", str(tmp_path / "d"), "--datatypes", "nope"])
    assert "unknown BIDS datatype(s) nope" in text
    assert not (tmp_path / "d").exists() and not (tmp_path / "i.parquet").exists()


def test_rate_with_raters_but_no_plan_names_the_plan_command(tiny_index):
    result = runner.invoke(app, ["raters", "add", "ana", "--index", str(tiny_index)], env=ENV)
    assert result.exit_code == 0, result.output
    text = refused(["rate", "--index", str(tiny_index)])
    assert "no plan" in text and "curate ratings plan" in text


# --- renamed options keep their old names for one release ---------------------------------


def test_renamed_options_still_work_with_a_deprecation_note(tmp_path, tiny_index):
    note = "is deprecated, use"
    # fetch --modalities is --datatypes: its value is checked as datatypes
    text = refused(["fetch", "ds000001", "--dest", str(tmp_path / "d"), "--modalities", "nope"])
    assert "--modalities is deprecated, use --datatypes" in text
    assert "unknown BIDS datatype(s) nope" in text
    # train --workers and -j are --loader-workers (accepted: the next check speaks)
    for old in ("--workers", "-j"):
        text = refused(["train", "--manifest", str(tmp_path / "none.parquet"), old, "0"])
        assert f"{old} {note} --loader-workers" in text and "file not found" in text, old
    # positional OUT and INDEX are --out and --index
    summary = runner.invoke(app, ["index", "summary", str(tiny_index)], env=ENV)
    assert summary.exit_code == 0 and "Images per modality" in summary.output
    assert "positional INDEX is deprecated, use --index" in summary.output
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    text = refused(["synth", str(a_file)])
    assert "positional OUT is deprecated, use --out" in text and "is a file" in text
    text = refused(["ratings", "export", str(tmp_path / "r.csv"), "--index", str(tiny_index)])
    assert "positional OUT is deprecated, use --out" in text and "no ratings database" in text
    # synth's counts are --n-datasets/--n-subjects (the value still goes to the count)
    text = refused(["synth", "--out", str(a_file), "--datasets", "0"])
    assert f"--datasets {note} --n-datasets" in text and "--n-datasets" in text
    assert "0 is not in the range" in text
    # the old names are hidden
    assert "--datasets" not in help_of(("synth",))
    assert "--modalities" not in help_of(("fetch",))
    assert "--workers" not in help_of(("train",))


def test_the_new_names_work(tmp_path, tiny_index):
    summary = runner.invoke(app, ["index", "summary", "--index", str(tiny_index)], env=ENV)
    assert summary.exit_code == 0 and "deprecated" not in summary.output
    engine_db = tmp_path / "r.sqlite"
    added = runner.invoke(
        app, ["raters", "add", "ana", "--index", str(tiny_index), "--db", str(engine_db)], env=ENV
    )
    assert added.exit_code == 0, added.output
    out = tmp_path / "ratings.csv"
    done = runner.invoke(
        app,
        [
            "ratings",
            "export",
            "--out",
            str(out),
            "--index",
            str(tiny_index),
            "--db",
            str(engine_db),
        ],
        env=ENV,
    )
    assert done.exit_code == 0 and out.is_file() and "deprecated" not in done.output


def test_iqs_writes_its_table_where_the_vocabulary_says(tiny_index, tmp_path, monkeypatch):
    """Without --out, the detailed table lands at iqs/iqs.parquet (the demo's layout)."""
    from openmind_curate.quality import ratings

    engine = ratings.connect(ratings.default_db(tiny_index))
    ratings.add_rater(engine, "ana")
    ratings.save_rating(
        engine,
        dict(
            image_id="a",
            rater_id="ana",
            kind="regular",
            submission_id=ratings.new_submission_id(),
            noisiness=2,
            blurriness=2,
            artifact_level=2,
            fov_suboptimal=False,
            corrupted=False,
        ),
        planned=False,
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["iqs", "--index", str(tiny_index)], env=ENV)
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "iqs" / "iqs.parquet").to_pandas()
    assert table["iqs"].tolist() == [2.0]
    assert {"image_id", "iqs", "iqs_image"} <= set(table.columns)
    assert re.search(r"1 index rows? written", result.output)


def test_an_option_name_has_one_type_everywhere():
    """The same word means the same thing: an option name shared by several
    commands takes the same kind of value in each (`synth --datasets` was a
    count while `build-manifest --datasets` is a list of ids)."""
    seen: dict[str, dict[str, list[str]]] = {}
    for path, command in COMMANDS.items():
        for name, param in options(command).items():
            if name.startswith("--") and not getattr(param, "is_flag", False):
                seen.setdefault(name, {}).setdefault(kind(param), []).append(label(path))
    # --out is a path or a str: both name a file or folder (FILE/FOLDER checked above)
    mixed = {
        name: kinds
        for name, kinds in seen.items()
        if len(set(kinds) - ({"path", "str"} if name == "--out" else set())) > 1
    }
    assert not mixed, mixed
    assert "--datasets" not in options(COMMANDS[("synth",)])
