"""The classifier: a pre-trained encoder, global pooling and one linear layer.

The encoder is the checkpoint's (either layout, ResEnc or Primus), rebuilt
from its nnU-Net architecture entry without its decoder. Pooling follows the
contrastive pre-training heads of the paper's Fig. 7 (`train.methods.heads`):
on a ResEnc every stage's output (the skips) is averaged over space and the
averages concatenated (32+64+...+320 = 1440 features on ResEnc-L); on a
Primus the transformer's tokens are averaged (864 on Primus-M). Both are
*our* choices: C.2 does not say, and the authors' framework pools only a
ResEnc's last stage (``return_skips=False``, 320 features). The head is one
``nn.Linear`` (the framework's ``ClassifierHead``, without its dropout).

Frozen (linear probing): the encoder's parameters do not require gradients,
it runs in eval mode and under ``no_grad`` whatever the mode of the whole,
so its weights stay bit-identical and its activations are not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from openmind_curate.finetune import weights
from openmind_curate.train.methods.heads import global_features
from openmind_curate.train.nnssl import Pretrained, is_primus


class Classifier(nn.Module):
    """``backbone`` (a ResEnc's ``encoder`` holder, or a Primus without its
    decoder) -> pooled features -> ``head``."""

    def __init__(self, backbone: nn.Module, width: int, classes: int, frozen: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(width, classes)
        self.frozen = frozen
        if frozen:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                return global_features(self.backbone, x)
        return global_features(self.backbone, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def feature_width(architecture: dict[str, Any]) -> int:
    """The pooled feature length of an architecture entry."""
    kwargs = architecture["arch_kwargs"]
    if is_primus(architecture):
        return int(kwargs["embed_dim"])
    return int(sum(kwargs["features_per_stage"]))


def backbone(architecture: dict[str, Any], shape: Sequence[int], in_channels: int = 1) -> nn.Module:
    """The architecture's encoder, freshly initialised (nnU-Net's init), for
    inputs of `shape`: a holder of a ResEnc's ``encoder``, or a Primus (its
    ``input_shape`` set to `shape`) without ``up_projection``."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    kwargs = dict(architecture["arch_kwargs"])
    if is_primus(architecture):
        kwargs["input_shape"] = [int(s) for s in shape]
    net = get_network_from_plans(
        architecture["network_class_name"],
        kwargs,
        architecture.get("_kw_requires_import", []),
        in_channels,
        1,
        allow_init=True,
        deep_supervision=None if is_primus(architecture) else False,
    )
    if is_primus(architecture):
        del net.up_projection
        return net
    holder = nn.Module()
    holder.encoder = net.encoder
    return holder


def build_classifier(
    architecture: dict[str, Any],
    classes: int,
    shape: Sequence[int],
    frozen: bool = False,
    pretrained: Pretrained | None = None,
) -> Classifier:
    """The classifier for inputs of `shape`, the encoder loaded from
    `pretrained` (a Primus's positional embedding resized to the token grid of
    `shape`) or left as initialised."""
    net = backbone(architecture, shape, pretrained.in_channels if pretrained else 1)
    if pretrained is not None:
        weights.load_encoder(net, pretrained, pretrained.in_channels, patch=tuple(shape))
    return Classifier(net, feature_width(architecture), classes, frozen)
