"""Run a `curate` batch command on SLURM workers (dask-jobqueue).

    python pipelines/slurm.py --jobs 4 -- curate dwi --index index/images.parquet
    python pipelines/slurm.py --dry-run -- curate masks --index index/images.parquet

Settings come from slurm.yaml beside this file unless --config says otherwise;
the logic lives in `openmind_curate.slurm` (also ``python -m openmind_curate.slurm``).
"""

import sys
from pathlib import Path

from openmind_curate.slurm import main

if __name__ == "__main__":
    sys.exit(main(default_config=Path(__file__).with_name("slurm.yaml")))
