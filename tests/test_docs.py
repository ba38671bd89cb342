"""The documentation runs against the code it describes.

Every `curate ...` command in a shell code block of the docs and the READMEs
is parsed by the real command line (the Typer app's click command), so a
renamed command or option fails here, not in a newcomer's terminal. Python
snippets and `openmind_curate.…` names must import, the docs pages that the
code refers to must exist, and `mkdocs build --strict` must pass (it fails on
a broken link).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

from openmind_curate.cli.app import app

try:  # typer >= 0.20 carries its own click
    from typer._click import exceptions as cx
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as cx

ROOT = Path(__file__).resolve().parents[1]
SHELL = {"bash", "sh", "shell", "console", "zsh"}
#: Languages of fenced blocks that hold no command to check.
OTHER = {"python", "pycon", "text", "mermaid", "yaml", "json", "toml", "ini", "html", "sql"}
CONTROL = {"|", "||", "&&", ";", "&", "(", ")", ";;", "|&"}
REDIRECT = re.compile(r"^[0-9]*(>>?|<|>&|&>)$")


def doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    files += [p for p in sorted(ROOT.glob("*/README.md")) if ".venv" not in p.parts]
    return [p for p in files if p.is_file()]


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the first line inside the fence
    lang: str
    text: str


FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+.-]*)")


def code_blocks(path: Path) -> list[Block]:
    blocks, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, indent, start = m["fence"], len(m["indent"]), i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = "\n".join(line[indent:] for line in lines[start:j])
        blocks.append(Block(path, start + 1, m["lang"].lower(), body))
        i = j + 1
    return blocks


def shell_lines(block: Block) -> list[tuple[int, str]]:
    """Logical command lines: continuations joined, console prompts read,
    console output skipped."""
    out, pending, first = [], "", 0
    for n, raw in enumerate(block.text.splitlines(), start=block.line):
        line = raw
        if block.lang == "console" and not pending:
            if not line.lstrip().startswith("$ "):
                continue
            line = line.lstrip()[2:]
        if not pending:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    if pending:
        out.append((first, pending))
    return out


def simple_commands(line: str) -> list[list[str]]:
    """A shell line split into simple commands (pipes, `&&`, `;`, `&`,
    sub-shells), comments and redirections removed; variables stay as written."""
    line = re.sub(r"(?<!\S)\d+(?=[<>])", "", line)  # 2>&1: the fd number is no argument
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    commands, current, tokens = [], [], list(lex)
    k = 0
    while k < len(tokens):
        tok = tokens[k]
        if tok in CONTROL:
            commands.append(current)
            current = []
        elif REDIRECT.match(tok):
            k += 1  # the redirection's target
        else:
            current.append(tok)
        k += 1
    commands.append(current)
    return [c for c in commands if c]


def curate_args(tokens: list[str]) -> list[str] | None:
    """The arguments given to `curate` in a simple command, also behind a
    launcher (`python pipelines/slurm.py ... -- curate ...`, `sbatch ...
    curate ...`, `torchrun ... -m openmind_curate.cli ...`)."""
    for k, tok in enumerate(tokens):
        if Path(tok).name == "curate" and not tok.startswith("-"):
            return tokens[k + 1 :]
        if tok == "-m" and k + 1 < len(tokens) and tokens[k + 1] == "openmind_curate.cli":
            return tokens[k + 2 :]
    return None


@dataclass
class Snippet:
    file: Path
    line: int
    text: str
    args: list[str]

    def __str__(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: {self.text.strip()}"


def snippets() -> list[Snippet]:
    found = []
    for path in doc_files():
        for block in code_blocks(path):
            if block.lang not in SHELL:
                continue
            for n, line in shell_lines(block):
                for tokens in simple_commands(line):
                    args = curate_args(tokens)
                    if args is not None:
                        found.append(Snippet(path, n, line, args))
    return found


CLI = typer.main.get_command(app)


def check(args: list[str]) -> str | None:
    """None when the real command line accepts `curate ARGS` (a value
    given as a shell variable, such as `$N`, is let through);
    else the reason it does not. Old option names kept as deprecated aliases
    are refused: the docs use the current ones."""
    args, cmd, path = list(args), CLI, ["curate"]
    while hasattr(cmd, "commands") and args and not args[0].startswith("-"):
        name = args.pop(0)
        sub = cmd.commands.get(name)
        if sub is None:
            return f"`{' '.join(path)}` has no command {name!r}"
        cmd, path = sub, [*path, name]
    if hasattr(cmd, "commands") and not args:
        return None  # a group named alone prints its help
    try:
        cmd.make_context(" ".join(path), list(args), token_normalize_func=None)  # it eats the list
    except (typer.Exit, typer.Abort):  # --help, --version
        return None
    except cx.NoSuchOption as exc:
        return f"`{' '.join(path)}`: no option {exc.option_name}"
    except cx.BadParameter as exc:  # a value of the wrong type or not among the choices
        if "$" not in " ".join(args):  # a shell variable's value is not known here
            return f"`{' '.join(path)}`: {exc.format_message()}"
    except cx.UsageError as exc:  # missing or extra arguments and options
        return f"`{' '.join(path)}`: {exc.format_message()}"
    return None


def test_the_snippet_reader_understands_shell():
    block = Block(
        ROOT / "x.md",
        1,
        "bash",
        "OUT=runs  # set\n"
        "curate synth --out $OUT \\\n"
        "    --n-datasets 2 | tee log.txt  # generate\n"
        "python pipelines/slurm.py --jobs 2 -- curate crawl corpus/ && echo done\n"
        "torchrun --standalone -m openmind_curate.cli train --manifest m.parquet 2>&1\n",
    )
    got = [
        args
        for _, line in shell_lines(block)
        for tokens in simple_commands(line)
        if (args := curate_args(tokens)) is not None
    ]
    assert got == [
        ["synth", "--out", "$OUT", "--n-datasets", "2"],
        ["crawl", "corpus/"],
        ["train", "--manifest", "m.parquet"],
    ]
    console = Block(ROOT / "x.md", 1, "console", "$ curate demo\nrunning curate demo\n")
    assert [line for _, line in shell_lines(console)] == ["curate demo"]


def test_the_checker_refuses_what_the_cli_refuses():
    assert check(["index", "summary", "--help"]) is None
    assert check(["--version"]) is None
    assert "no command 'nonesuch'" in check(["nonesuch"])
    assert "no option --nonesuch" in check(["crawl", "corpus/", "--nonesuch", "1"])
    assert check(["crawl", "corpus/", "--workers", "$N"]) is None


def test_docs_and_readmes_hold_curate_snippets():
    found = snippets()
    files = {s.file.relative_to(ROOT).as_posix() for s in found}
    assert "README.md" in files and any(f.startswith("docs/") for f in files)
    assert len(found) >= 40


def test_every_curate_snippet_parses_against_the_cli():
    bad = [f"{s}\n    -> {reason}" for s in snippets() if (reason := check(s.args))]
    assert not bad, "snippets the CLI refuses:\n" + "\n".join(bad)


def test_modules_run_with_python_dash_m_can_run():
    """`torchrun ... -m openmind_curate.cli`, `python -m openmind_curate.slurm`:
    a package needs a __main__ module to be run this way."""
    found = set()
    for path in doc_files():
        for block in code_blocks(path):
            if block.lang in SHELL:
                for _, line in shell_lines(block):
                    found.update(re.findall(r"-m\s+(openmind_curate[\w.]*)", line))
    assert found
    bad = []
    for name in sorted(found):
        spec = importlib.util.find_spec(name)
        if spec is None or (
            spec.submodule_search_locations is not None
            and importlib.util.find_spec(f"{name}.__main__") is None
        ):
            bad.append(name)
    assert not bad, f"cannot be run with python -m: {bad}"


def test_every_code_block_names_its_language():
    """An unlabelled block would escape the snippet check."""
    bad = [
        f"{b.file.relative_to(ROOT)}:{b.line - 1}"
        for path in doc_files()
        for b in code_blocks(path)
        if b.lang not in SHELL | OTHER
    ]
    assert not bad, "fenced blocks without a known language (bash, text, python, ...): " + str(bad)


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_python_names_in_the_docs_exist():
    """`openmind_curate.x.y` in the text and the imports of python blocks:
    the Python API pages stay true when a function moves."""
    names: set[tuple[str, str]] = set()
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT).as_posix()
        for m in re.finditer(r"`(openmind_curate(?:\.\w+)+)", text):
            names.add((where, m.group(1)))
        for block in code_blocks(path):
            if block.lang != "python":
                continue
            for node in ast.walk(ast.parse(block.text)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "openmind_curate"
                ):
                    names.update((where, f"{node.module}.{a.name}") for a in node.names)
                elif isinstance(node, ast.Import):
                    names.update(
                        (where, a.name) for a in node.names if a.name.startswith("openmind_curate")
                    )
    assert len(names) >= 20
    bad = sorted(f"{where}: {name}" for where, name in names if not _resolve(name))
    assert not bad, "names the package does not have:\n" + "\n".join(bad)


def test_files_named_in_the_docs_exist():
    """`bids/crawl.py`, `tests/test_masks.py`, ...: the module names of the
    architecture page and the stage pages follow the code when it moves.
    A path is relative to the repository or to `openmind_curate/`; a bare
    file name must exist somewhere in the repository; another project's
    files (nnssl's) are not checked."""
    names = {
        (path.relative_to(ROOT).as_posix(), m.group(1))
        for path in doc_files()
        for m in re.finditer(r"`([\w/.-]+\.py)`", path.read_text(encoding="utf-8"))
    }
    assert len(names) >= 30

    ours = {"openmind_curate", "tests", "benchmarks", "apps", "pipelines", "docs", "manifests"}
    ours |= {p.name for p in (ROOT / "openmind_curate").iterdir() if p.is_dir()}

    def exists(name: str) -> bool:
        if "/" in name and name.split("/")[0] not in ours:
            return True  # another project's file (nnssl's, ...)
        if "/" not in name:
            return any(p for p in ROOT.rglob(name) if ".venv" not in p.parts)
        return (ROOT / name).is_file() or (ROOT / "openmind_curate" / name).is_file()

    bad = sorted(f"{where}: {name}" for where, name in names if not exists(name))
    assert not bad, "files the repository does not have:\n" + "\n".join(bad)


def test_docs_pages_named_in_the_repository_exist():
    """Code, help text and READMEs point at docs/ pages (the design lives
    there); each one must be there."""
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", "*.yml", "*.yaml", "Makefile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    files = [ROOT / f for f in tracked] or [*ROOT.glob("openmind_curate/**/*.py"), *doc_files()]
    refs = {
        (f.relative_to(ROOT).as_posix(), m.group(0))
        for f in files
        if f.is_file()
        for m in re.finditer(r"docs/[\w./-]+\.md", f.read_text(encoding="utf-8"))
    }
    assert refs, "the code should point at its design pages"
    missing = sorted(f"{f}: {ref}" for f, ref in refs if not (ROOT / ref).is_file())
    assert not missing, "docs pages that do not exist:\n" + "\n".join(missing)
    gone = "DESIGN" + ".md"  # the starting design, never in the repository: docs/design/ is
    stale = sorted(
        f.relative_to(ROOT).as_posix()
        for f in files
        if f.is_file() and gone in f.read_text(encoding="utf-8")
    )
    assert not stale, f"{gone} is not in the repository (see docs/design/): {stale}"


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=config.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs and mkdocs-material are not installed (pip install -e '.[docs]')",
)


@needs_mkdocs
def test_the_site_builds_strict(tmp_path):
    done = _mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "curate build-manifest" in cli and "--iqs-max" in cli  # generated from the app
    tables = (tmp_path / "site" / "reference" / "tables" / "index.html").read_text()
    assert "IMAGE_INDEX" in tables and "header_status" in tables  # generated from schema.py


@needs_mkdocs
def test_the_strict_build_fails_on_a_broken_link(tmp_path):
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\nSee [the lost page](no-such-page.md).\n")
    done = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stdout + done.stderr
