"""The generated test and demo corpus: OpenNeuro-like BIDS datasets made from
nilearn's MNI152 template, with known degradations and a truth table.

    from openmind_curate.synth import SynthConfig, generate
    truth, _ = generate("corpus/", SynthConfig(n_datasets=4, n_subjects=3, seed=0))
"""

from openmind_curate.synth.corpus import TRUTH_TABLE, generate, load_truth
from openmind_curate.synth.plan import SynthConfig

__all__ = ["TRUTH_TABLE", "SynthConfig", "generate", "load_truth"]
