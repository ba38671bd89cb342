"""Pre-training: from a manifest to a pre-trained encoder.

Needs the `train` extra (torch). `preprocess` writes a manifest's images into
the `store`; `loader` draws random patches from it and `augment` transforms
them; `models` builds ResEnc-L and a tiny network of the same class; `mae` is
the masked auto-encoding method; `trainer` is the single-process or DDP loop
with its `checkpoint`s; `pretrain` is the Python API behind `curate train`;
`nnssl` writes and reads checkpoints in nnssl's layout. Fine-tuning is
`openmind_curate.finetune` (nnU-Net v2).
"""
