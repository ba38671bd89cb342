"""Manifests: index filters (IQS, modality, ...), writers (parquet + JSON
sidecar, nnssl `pretrain_data.json`, OpenMind-style CSV) and the dataset report.
"""
