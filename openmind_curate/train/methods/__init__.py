"""The pre-training methods, as plug-ins to the one trainer loop.

`base` is the contract (`Method`, `Recipe`, `StepContext`); each method is a
module: `mae` (masked auto-encoding; on Primus through `primus_mae`, with
token dropping from `tokens`), `s3d` (sparse masking for CNNs), `simmim` (mask tokens on Primus),
`genesis` (Models Genesis), `volume_fusion`, `swinunetr` (SwinUNETR's
pretext tasks), `simclr` and `voco`. `heads` holds what several methods share:
global features of either architecture family and projection heads;
`bg_augment` wraps batchgenerators' transforms. `registry` maps a method's
name to its class, and its one-line summaries feed `curate train --help`
without importing torch.
"""
