"""Pre-training: from a manifest to a pre-trained encoder.

Needs the `train` extra (torch). `preprocess` writes a manifest's images into
the `store`; `loader` draws random patches from it and `augment` transforms
them; `models` builds ResEnc-L, Primus-M and a tiny network of each class;
`mae` holds MAE's block masks and masked loss; `methods` holds the eight
pre-training methods as plug-ins; `trainer` is the one single-process or DDP
loop for all of them, with its `checkpoint`s; `pretrain` is the Python API behind `curate train`;
`nnssl` writes and reads checkpoints in nnssl's layout. Fine-tuning is
`openmind_curate.finetune` (nnU-Net v2).
"""
