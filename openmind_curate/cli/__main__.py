"""`python -m openmind_curate.cli` runs `curate` (torchrun -m, and environments without the script)."""

from openmind_curate.cli.app import run

if __name__ == "__main__":
    run()
