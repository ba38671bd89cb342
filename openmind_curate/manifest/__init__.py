"""Manifests: the index filtered into a pre-training manifest.

`build` reads the index (or the released OpenMind CSV, through
`openmind_csv`), applies `filters` (IQS, modality, datasets, spacing, ...),
keeps images the automatic metrics found broken out (`corruption`), draws
the subject-level train/validation `split`, and hands the result to
`writers` (parquet with a JSON sidecar, nnssl's ``pretrain_data.json`` or
the OpenMind CSV layout).
"""
