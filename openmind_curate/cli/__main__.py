"""`python -m openmind_curate.cli` runs `curate` (torchrun -m, and environments without the script)."""

from openmind_curate.cli.app import run

run()
