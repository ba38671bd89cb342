"""Loading a pre-trained encoder into a fine-tuning network, tensor by tensor.

What the authors' ``PretrainedTrainer.load_pretrained_weights`` does, with
every mismatch named: the stem and the encoder stages come from the
checkpoint, the decoder keeps its fresh initialisation. Stock nnU-Net's
``load_pretrained_weights`` cannot do this (it demands every non-segmentation
key, decoder included), so an encoder-only checkpoint needs this loader.

Multi-channel data: the stem's input projection was trained on one channel.
Its kernel is repeated over the C input channels and divided by C, so a
network that sees the same image in every channel computes what the
pre-trained one did (the authors' rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train.nnssl import KEYS_TO_IN_PROJ, Pretrained

#: The input projection's weights, keyed as in ``network.encoder``.
IN_PROJ = tuple(k.removeprefix("encoder.") + ".weight" for k in KEYS_TO_IN_PROJ)


@dataclass(frozen=True)
class Loaded:
    """What `load_encoder` did, for the log."""

    tensors: int  # encoder tensors loaded (of as many in the network's encoder)
    repeated_stem: bool  # the input projection was repeated over the channels


def adapt_in_proj(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A 1-channel conv kernel (out, 1, k, k, k) repeated over `channels`, / channels."""
    return weight.repeat(1, channels, *([1] * (weight.dim() - 2))) / channels


def load_encoder(network: nn.Module, pretrained: Pretrained, in_channels: int) -> Loaded:
    """Copy the checkpoint's stem and stages into ``network.encoder``; refuse,
    naming the tensors, anything that does not fit exactly."""
    target = network.encoder.state_dict()
    source = dict(pretrained.encoder)
    repeated = in_channels != pretrained.in_channels
    if repeated:
        if pretrained.in_channels != 1:
            raise InputError(
                f"{pretrained.path}: pre-trained on {pretrained.in_channels} channels; only a "
                f"1-channel stem can be repeated over the data's {in_channels} channels"
            )
        for key in IN_PROJ:
            if key in source:
                source[key] = adapt_in_proj(source[key], in_channels)
    problems = _mismatches(target, source)
    if problems:
        raise InputError(
            f"pre-trained checkpoint {pretrained.path} ({pretrained.arch}) does not fit the "
            f"network: {problems}; was it pre-trained with another architecture?"
        )
    network.encoder.load_state_dict(source, strict=True)
    return Loaded(tensors=len(source), repeated_stem=repeated)


def _mismatches(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> str:
    """'' when every encoder tensor has its counterpart of the same shape."""
    missing = sorted(set(target) - set(source))
    extra = sorted(set(source) - set(target))
    shaped = sorted(
        f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
        for k in set(target) & set(source)
        if source[k].shape != target[k].shape
    )
    parts = []
    for what, keys in (
        ("missing from the checkpoint", missing),
        ("not in the network", extra),
        ("of another shape", shaped),
    ):
        if keys:
            parts.append(f"{len(keys)} tensor(s) {what} (first: {keys[0]})")
    if parts:
        parts.insert(0, f"{len(set(source) & set(target))} of {len(target)} encoder tensors match")
    return "; ".join(parts)
