"""``python -m openmind_curate.cli`` runs the console script (so does
``torchrun -m openmind_curate.cli train ...``, one process per rank)."""

from openmind_curate.cli.app import run

if __name__ == "__main__":
    run()
