"""Classification fine-tuning on the project's own trainer loop (appendix C.2).

`table` (which image, label and subject), `volumes` (whole volumes,
preprocessed as for pre-training and resized), `folds` (five folds,
stratified by label and split by subject), `network` (encoder, pooling and a
linear head), `method` (classification as a method of `train.trainer`),
`batches` (dataset epochs of volume files), `metrics` (balanced accuracy,
average precision, the confusion matrix), `evaluate` (a fold's held-out
predictions and classifier file), `run` (a whole run: `run.classify`) and
`demo` (the demo's two runs).
"""
