"""DWI preprocessing: 4D series in, FA, MD and T2w (mean b0) 3D maps out.

One module per step, in pipeline order: `gradients` (read and check the
b-table), `denoise` (MP-PCA), `gibbs` (ringing removal), `motion` (volume
co-registration with b-vector rotation), `bias` (N4), `mask` (brain mask) and
`maps` (tensor fit). `pipeline` chains them for one series; `run` makes each
series a batch item with its BIDS-derivatives outputs; `stage` is the Python
API behind `curate dwi`.
"""
