"""Manifests: the index filtered (IQS, modality, ...) into a pre-training
manifest with a subject-level split, written as parquet with a JSON sidecar,
nnssl's ``pretrain_data.json`` or the OpenMind CSV layout (`build`)."""
