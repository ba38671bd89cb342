"""Training: the preprocessed array store, the patch loader, ResEnc-L and
Primus-M models, SSL methods (MAE by default), LR schedules, the DDP trainer and
segmentation fine-tuning. Needs the `train` extra (torch).
"""
