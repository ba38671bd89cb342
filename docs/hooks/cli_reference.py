"""The click command behind `curate`, for mkdocs-click (the CLI reference page).

Typer apps are not click commands; `typer.main.get_command` gives the one
that `curate` runs, so the reference is generated from the same object.
"""

import typer

from openmind_curate.cli.app import app

cli = typer.main.get_command(app)
