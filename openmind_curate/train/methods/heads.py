"""What several methods share: global features of either family, projection
heads, the NT-Xent loss, and gathering embeddings over DDP ranks.

Global features follow the paper's Fig. 7: on ResEnc-L every encoder stage's
output (the skips) is adaptive-average-pooled and the results concatenated;
on Primus the transformer's tokens are averaged. Both end in a vector per
sample that a projection head maps to the latent space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openmind_curate.train import models


def encoder_only(arch: str, patch: int, drop_path: float = 0.0) -> nn.Module:
    """The network of `arch` without what a global-feature method never uses:
    a ResidualEncoderUNet keeps only its ``encoder`` (the decoder would get no
    gradient, which DDP refuses), a Primus keeps its patch embedding and
    transformer. Exports and checkpoints see the same keys as the full
    network's encoder."""
    net = models.build(arch, patch=patch, drop_path=drop_path)
    if models.family(arch) == "resenc":
        holder = nn.Module()
        holder.encoder = net.encoder
        return holder
    del net.up_projection
    return net


def feature_width(arch: str) -> int:
    """The length of `global_features`' vector for `arch`."""
    cfg = models.arch_config(arch)
    if isinstance(cfg, models.PrimusConfig):
        return cfg.embed_dim
    return sum(cfg.features)


def global_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(b, F) features of `x` (b, C, D, H, W) from an `encoder_only` backbone."""
    if hasattr(backbone, "encoder"):
        encoder = backbone.encoder
        keep = encoder.return_skips
        encoder.return_skips = True
        try:
            skips = encoder(x)
        finally:
            encoder.return_skips = keep
        return torch.cat([s.mean(dim=(2, 3, 4)) for s in skips], dim=1)
    return token_features(backbone, x).mean(dim=1)


def token_features(primus: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A Primus's transformer output (b, N, C) for `x`, all tokens kept."""
    t = primus.down_projection(x)
    t = t.flatten(2).transpose(1, 2)  # (b, N, C), tokens in (D, H, W) order
    out, _ = primus.eva(t)
    return out


class RowNorm(nn.Module):
    """Each sample's features normalised to mean 0 and variance 1, no affine:
    what nnssl's heads get from ``InstanceNorm1d`` on a (b, C) tensor, which
    torch reads as one unbatched instance per row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:], eps=1e-5)


def projection(width: int, hidden: int = 2048, out: int = 2048) -> nn.Sequential:
    """nnssl's projection head (`VocoProjectionHead`, used by its SimCLR and
    VoCo trainers): two Linear-RowNorm-ReLU layers, then a Linear."""
    return nn.Sequential(
        nn.Linear(width, hidden),
        RowNorm(),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        RowNorm(),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, out),
    )


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of N positive pairs (z1[i], z2[i]) (each (N, d)): for each of
    the 2N vectors, the cross-entropy of picking its partner among the other
    2N - 1 by cosine similarity / temperature; the mean over the 2N (nnssl's
    ContrastLoss; SimCLR's loss and SwinUNETR's contrastive coding)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.arange(2 * n, device=z.device).roll(n)
    return F.cross_entropy(sim, partner)


def gather(x: torch.Tensor, world: int) -> torch.Tensor:
    """`x` (b, ...) from every rank concatenated in rank order (b * world, ...),
    with gradients flowing back to each rank's own part (one process: `x`)."""
    if world <= 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)
