"""The generated test and demo corpus: OpenNeuro-like BIDS datasets made from
nilearn's MNI152 template, with known degradations and a truth table.

    from openmind_curate.synth import SynthConfig, generate
    truth, batch = generate("corpus/", SynthConfig(n_datasets=4, n_subjects=3, seed=0))

`generate` returns a `SynthResult`: its truth table, None when a file failed,
and the batch runner's result, which names the files that failed.

Modules, in the order a corpus is made:

- `plan`: what the corpus holds, decided up front from the seed: datasets of
  five profiles (anat, sessions, rare, qc, poor), their subjects, every image
  and its degradations (`SynthConfig`, `plan_corpus`, `ImageSpec`).
- `participants`: participants.tsv, participants.json and sessions.tsv in the
  styles OpenNeuro datasets use, with the harmonized values a crawler must
  recover.
- `head`: the whole-head model (tissue maps and truth masks on the MNI grid),
  re-exported from `openmind_curate.headmodel`.
- `render`: each contrast's intensity per tissue, the scanner grids (voxel
  size, orientation, obliquity) and resampling onto them.
- `degrade`: the degradations as pure functions: bias field, blur, Gibbs
  truncation, ghosting, Rician noise, defacing.
- `dwi`: diffusion-weighted series simulated with a tensor model, whose FA and
  MD are exact.
- `write`: one planned file and its truth row (`write_spec`, the unit of work
  the batch runner maps over).
- `corpus`: the whole run: plan, dataset-level files, every image through the
  batch runner, then the truth table (`generate`, `load_truth`).
- `summary`: per-dataset counts and recorded degradations of a corpus, from
  its truth table (what `curate synth` prints).
- `phantom`: a DWI phantom with known motion, bias field and noise, for the
  DWI stage's tests and benchmark; no part of the corpus.
"""

from openmind_curate.synth.corpus import TRUTH_TABLE, SynthResult, generate, load_truth
from openmind_curate.synth.plan import SynthConfig

__all__ = ["TRUTH_TABLE", "SynthConfig", "SynthResult", "generate", "load_truth"]
