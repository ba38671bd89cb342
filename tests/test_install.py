"""A command whose optional dependencies are not installed says which extra
to install and exits 2 (`cli.common.require_extra`), never an internal error.

The missing package is simulated: a `sitecustomize.py` on PYTHONPATH puts a
finder first on `sys.meta_path` that refuses the hidden modules, so both
``import dynamic_network_architectures`` and `importlib.util.find_spec` fail in
the child process as they do where the package is not installed. The two
install paths themselves (`make env`, and plain pip with the extra into a
fresh venv) are checked by CI: .ci/run and .ci/pip_install_check.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from openmind_curate.cli.common import require_extra
from openmind_curate.errors import CurateError, MissingExtra

REPO = Path(__file__).resolve().parents[1]

HIDE = """
import importlib.abc
import sys

HIDDEN = {hidden!r}


class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Hide())
"""


def curate_without(tmp_path: Path, hidden: tuple[str, ...], *args: str):
    """`curate ARGS` in a child process where the `hidden` modules cannot be imported."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE.format(hidden=hidden))
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "COLUMNS": "300"}
    cmd = [sys.executable, "-m", "openmind_curate.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_train_without_the_train_extra_names_it_and_exits_2(tmp_path):
    manifest = tmp_path / "manifests" / "m.parquet"
    manifest.parent.mkdir()
    manifest.write_bytes(b"")  # never read: the check comes first
    args = ["train", "--manifest", str(manifest), "--arch", "tiny", "--patch", "32"]
    done = curate_without(tmp_path, ("dynamic_network_architectures",), *args)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "openmind-curate[train]" in out and "missing: dynamic_network_architectures" in out
    assert "pip install 'openmind-curate[train]'" in out
    assert "Traceback" not in out and "internal error" not in out
    assert not (tmp_path / "manifests" / "m.store").exists()  # nothing preprocessed first
    # --help needs none of it
    helped = curate_without(tmp_path, ("dynamic_network_architectures", "torch"), "train", "--help")
    assert helped.returncode == 0 and "--accumulate" in helped.stdout, helped.stderr


def test_require_extra_checks_without_importing():
    with pytest.raises(MissingExtra, match=r"missing: no_such_module_zz\)") as info:
        require_extra("curate x", "train", ("json", "no_such_module_zz"))
    assert isinstance(info.value, CurateError)  # the CLI's exit 2
    assert "curate x needs the optional dependencies of openmind-curate[train]" in str(info.value)
    require_extra("curate x", "train", ("json",))  # all there: nothing happens
    with pytest.raises(MissingExtra, match="no_such_parent_zz.child"):  # a missing parent
        require_extra("curate x", "train", ("no_such_parent_zz.child",))


def _names(requirements: list[str]) -> set[str]:
    return {
        re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower().replace("-", "_") for r in requirements
    }


def test_checked_modules_belong_to_the_extra_they_name():
    from openmind_curate.cli.train import TRAIN_MODULES

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(TRAIN_MODULES) <= _names(extras["train"])
    assert "openmind-curate[train]" in extras["finetune"] and "nnunetv2" in _names(
        extras["finetune"]
    )
