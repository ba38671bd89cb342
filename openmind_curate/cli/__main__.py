"""`python -m openmind_curate.cli` runs `curate` (for torchrun -m, and with no script)."""

from openmind_curate.cli.app import run

if __name__ == "__main__":
    run()
