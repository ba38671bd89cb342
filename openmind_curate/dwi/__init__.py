"""DWI preprocessing: one module per step (denoise, Gibbs removal, volume
co-registration with b-vector rotation, N4 bias correction, brain mask, tensor
maps) and the pipeline that chains them into FA, MD and T2w (mean b0) 3D maps.
"""
