"""Segmentation fine-tuning on nnU-Net v2 (appendix C.1).

`schedules` (the five schedules as closed forms), `dataset` (labelled data as
an nnU-Net raw dataset), `plans` (nnU-Net plans for a pre-trained network),
`weights` (the encoder loader), `trainers` (one nnU-Net trainer per schedule),
`run` (a whole run: `run.finetune`) and `demo` (the demo's two runs).
"""
