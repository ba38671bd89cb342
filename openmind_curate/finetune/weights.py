"""Loading a pre-trained encoder into a fine-tuning network, tensor by tensor.

What the authors' ``PretrainedTrainer.load_pretrained_weights`` does, with
every mismatch named: the stem and the encoder come from the checkpoint, the
decoder keeps its fresh initialisation. Stock nnU-Net's
``load_pretrained_weights`` cannot do this (it demands every non-segmentation
key, decoder included), so an encoder-only checkpoint needs this loader.

The encoder is a ResidualEncoderUNet's ``encoder`` module (stem and stages)
or a Primus's patch embedding and transformer (``down_projection``, ``eva``;
its decoder is ``up_projection``). An encoder-only export (contrastive
methods) loads the same way: the decoder was never in it.

Multi-channel data: the stem's input projection was trained on one channel.
Its kernel is repeated over the C input channels and divided by C, so a
network that sees the same image in every channel computes what the
pre-trained one did (the authors' rule).

Primus's absolute positional embedding (``eva.pos_embed``, (1, N, C) over the
token grid) depends on the patch size. When the fine-tuning patch differs from
the pre-training one it is resized over the token grid by trilinear
interpolation (`interpolate_pos_embed`), as the authors' Primus example in
their nnU-Net fork does (``interpolate_trilinear``, ``align_corners=False``).
Their ``PretrainedTrainer`` instead re-initialises it (they report the two
fine-tune alike); the issue asks for interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openmind_curate.errors import InputError
from openmind_curate.train.models import PRIMUS_ENCODER
from openmind_curate.train.nnssl import KEYS_TO_IN_PROJ, PRIMUS_KEYS, Pretrained

#: The input projection's weights, keyed as in ``network.encoder`` (ResEnc).
IN_PROJ = tuple(k.removeprefix("encoder.") + ".weight" for k in KEYS_TO_IN_PROJ)
#: ... and as in a Primus network.
PRIMUS_IN_PROJ = tuple(k + ".weight" for k in PRIMUS_KEYS["keys_to_in_proj"])
POS_EMBED = PRIMUS_KEYS["key_to_lpe"]


@dataclass(frozen=True)
class Loaded:
    """What `load_encoder` did, for the log."""

    tensors: int  # encoder tensors loaded (of as many in the network's encoder)
    repeated_stem: bool  # the input projection was repeated over the channels
    # the positional embedding's token grid, pre-training -> fine-tuning, when resized
    resized_pos_embed: tuple[tuple[int, ...], tuple[int, ...]] | None = None


def adapt_in_proj(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A 1-channel conv kernel (out, 1, k, k, k) repeated over `channels`, / channels."""
    return weight.repeat(1, channels, *([1] * (weight.dim() - 2))) / channels


def interpolate_pos_embed(
    pos_embed: torch.Tensor, source_grid: Sequence[int], target_grid: Sequence[int]
) -> torch.Tensor:
    """A (1, N, C) positional embedding over a row-major token grid (Primus
    flattens ``b c w h d -> b (w h d) c``) resized to `target_grid` by
    trilinear interpolation (``align_corners=False``, the authors' choice).
    The same grid gives the tensor unchanged."""
    source, target = tuple(int(g) for g in source_grid), tuple(int(g) for g in target_grid)
    b, n, c = pos_embed.shape
    if n != math.prod(source):
        raise InputError(f"{POS_EMBED}: {n} tokens are not a {source} grid")
    if source == target:
        return pos_embed
    grid = pos_embed.transpose(1, 2).reshape(b, c, *source).float()
    out = F.interpolate(grid, size=target, mode="trilinear", align_corners=False)
    return out.reshape(b, c, -1).transpose(1, 2).contiguous().to(pos_embed.dtype)


def is_primus(network: nn.Module) -> bool:
    """A Primus (no ``encoder`` module; its encoder is ``down_projection`` + ``eva``)."""
    return not hasattr(network, "encoder") and hasattr(network, "eva")


def encoder_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The network's encoder tensors, keyed as a checkpoint's (`Pretrained.encoder`)."""
    if not is_primus(network):
        return dict(network.encoder.state_dict())
    state = network.state_dict()
    return {k: v for k, v in state.items() if k.split(".", 1)[0] in PRIMUS_ENCODER}


def encoder_parameters(network: nn.Module) -> list[nn.Parameter]:
    """The encoder's parameters (what a decoder-only stage freezes)."""
    if not is_primus(network):
        return list(network.encoder.parameters())
    return [p for name in PRIMUS_ENCODER for p in network.get_submodule(name).parameters()]


def in_proj_module(network: nn.Module) -> nn.Module:
    """The stem's input projection (its first conv)."""
    key = PRIMUS_IN_PROJ[0] if is_primus(network) else "encoder." + IN_PROJ[0]
    return network.get_submodule(key.removesuffix(".weight"))


def load_encoder(
    network: nn.Module,
    pretrained: Pretrained,
    in_channels: int,
    patch: Sequence[int] | None = None,
) -> Loaded:
    """Copy the checkpoint's encoder into `network`; refuse, naming the
    tensors, anything that does not fit exactly. `patch`: the fine-tuning
    patch (a Primus's positional embedding is resized to it)."""
    target = encoder_state(network)
    source = dict(pretrained.encoder)
    repeated = in_channels != pretrained.in_channels
    if repeated:
        if pretrained.in_channels != 1:
            raise InputError(
                f"{pretrained.path}: pre-trained on {pretrained.in_channels} channels; only a "
                f"1-channel stem can be repeated over the data's {in_channels} channels"
            )
        for key in (*IN_PROJ, *PRIMUS_IN_PROJ):
            if key in source:
                source[key] = adapt_in_proj(source[key], in_channels)
    resized = _resize_pos_embed(source, target, pretrained, patch)
    problems = _mismatches(target, source)
    if problems:
        raise InputError(
            f"pre-trained checkpoint {pretrained.path} ({pretrained.arch}) does not fit the "
            f"network: {problems}; was it pre-trained with another architecture?"
        )
    if is_primus(network):
        missing, unexpected = network.load_state_dict(source, strict=False)
        assert not unexpected and not set(missing) & set(target), (missing, unexpected)
    else:
        network.encoder.load_state_dict(source, strict=True)
    return Loaded(tensors=len(source), repeated_stem=repeated, resized_pos_embed=resized)


def _resize_pos_embed(
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    pretrained: Pretrained,
    patch: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """Interpolate ``eva.pos_embed`` in `source` when its token grid is not
    the network's (the grids come from the patch sizes and the token edge; two
    grids of as many tokens, 4x4x4 and 8x4x2, differ with equal shapes)."""
    if POS_EMBED not in source or POS_EMBED not in target:
        return None
    same_shape = source[POS_EMBED].shape == target[POS_EMBED].shape
    if patch is None:
        if same_shape:
            return None
        raise InputError(
            f"{pretrained.path}: {POS_EMBED} {tuple(source[POS_EMBED].shape)} vs "
            f"{tuple(target[POS_EMBED].shape)}: the fine-tuning patch size is needed to resize it"
        )
    token = int(pretrained.architecture["arch_kwargs"]["patch_embed_size"][0])
    source_grid = tuple(int(p) // token for p in pretrained.pretrain_patch_size)
    target_grid = tuple(int(p) // token for p in patch)
    if same_shape and (
        source_grid == target_grid or math.prod(source_grid) != source[POS_EMBED].shape[1]
    ):
        return None  # the same grid, or a plan whose pre-training patch is not the tensor's
    if math.prod(target_grid) != target[POS_EMBED].shape[1]:
        raise InputError(
            f"{POS_EMBED}: the network's {target[POS_EMBED].shape[1]} tokens are not the "
            f"{target_grid} grid of patch {tuple(patch)}"
        )
    source[POS_EMBED] = interpolate_pos_embed(source[POS_EMBED], source_grid, target_grid)
    return source_grid, target_grid


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
