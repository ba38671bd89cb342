"""Training: from a manifest to a pre-trained encoder and a fine-tuned network.

Needs the `train` extra (torch). `preprocess` writes a manifest's images into
the `store`; `loader` draws random patches from it and `augment` transforms
them; `models` builds ResEnc-L and a tiny network of the same class; `mae` is
the masked auto-encoding method; `trainer` is the single-process or DDP loop
with its `checkpoint`s; `pretrain` is the Python API behind `curate train`.
Fine-tuning: `segdata` (labelled data), `schedules` (the paper's five
learning-rate schedules) and `finetune`.
"""
