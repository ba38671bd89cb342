"""The `curate` command line: one module per command group, each with `register(app)`.

Commands parse options, call one library function and print its result; the
library functions are the Python API.
"""

from openmind_curate.cli.app import app, run

__all__ = ["app", "run"]
