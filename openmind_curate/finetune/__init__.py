"""Fine-tuning a pre-trained encoder: segmentation on nnU-Net v2 (appendix
C.1) and classification on the project's trainer loop (appendix C.2).

`schedules` (the five schedules as closed forms), `dataset` (labelled data as
an nnU-Net raw dataset), `plans` (nnU-Net plans for a pre-trained network),
`weights` (the encoder loader, shared by both tasks), `trainers` (one nnU-Net
trainer per schedule), `run` (a whole segmentation run: `run.finetune`),
`demo` (the demo's two segmentation runs) and `classification` (whole-volume
classification: `classification.run.classify`).
"""
