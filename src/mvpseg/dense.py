"""Dense pixel features from a frozen CLIP image tower (MaskCLIP's modification).

ResNet towers (open_clip ``ModifiedResNet``): the attention pool is replaced by its value and
output projections applied at every location of the final feature map, ``F = c_proj(v_proj(x))``;
query, key and the pool's positional embedding are dropped. Output stride 32.

ViT towers (open_clip ``VisionTransformer``): every block but the last runs unchanged; in the last
block the query-key attention is replaced (see :data:`VIT_MODES`), then ``ln_post`` and ``proj`` are
applied to every patch token. Positional embeddings are interpolated for any input size.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from .config import VIT_MODES

__all__ = ["dense_features", "feature_stride", "fold_batchnorm", "inference_tower", "VIT_MODES"]

# How the last ViT block is run (mvpseg.config.VIT_MODES):
# - "maskclip": each token takes its own value path; the block's residual and MLP are kept
#   (``y = x + out_proj(v_proj(ln_1 x)); y = y + mlp(ln_2 y)``), as MaskCLIP's code does.
# - "value": the value path alone, no residual and no MLP (``y = out_proj(v_proj(ln_1 x))``).
# - "qq": ClearCLIP: query-query attention, no residual and no MLP.
# - "csa": SCLIP's correlative self-attention, the block's residual and MLP kept as SCLIP's code
#   does: ``y = x + out_proj(A v); y = y + mlp(ln_2 y)`` with, per head and over all tokens (CLS
#   included), ``A = softmax(q q^T s) + softmax(k k^T s)``, s = head_width ** -0.5: each term
#   softmaxed on its own and the two summed (rows sum to 2, not averaged).


def feature_stride(visual: nn.Module) -> int:
    """Pixels per feature-map cell of an image tower (32 for ResNets, the patch size for ViTs)."""
    if isinstance(visual, ModifiedResNet):
        return 32
    if isinstance(visual, VisionTransformer):
        return int(visual.conv1.kernel_size[0])
    raise TypeError(_unsupported(visual))


def _unsupported(visual: nn.Module) -> str:
    return (
        f"dense features need an open_clip ModifiedResNet or VisionTransformer image tower, "
        f"not {type(visual).__name__} (timm towers are not supported)"
    )


def _resnet_dense(visual: ModifiedResNet, images: torch.Tensor) -> torch.Tensor:
    x = visual.stem(images)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # (B, W, h, w)
    pool = visual.attnpool
    x = x.permute(0, 2, 3, 1)  # (B, W, h, w) -> (B, h, w, W)
    x = pool.c_proj(pool.v_proj(x))  # (B, h, w, D)
    return x.permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)


def _interpolated_positions(visual: VisionTransformer, grid: tuple[int, int]) -> torch.Tensor:
    """The positional embedding resized (bicubic) to a ``grid`` of patches: (1 + h*w, W)."""
    positions = visual.positional_embedding  # (1 + g*g, W)
    cls_position, patch_positions = positions[:1], positions[1:]
    side = int(math.isqrt(patch_positions.shape[0]))
    if (side, side) == grid:
        return positions
    width = positions.shape[1]
    patch_positions = patch_positions.reshape(1, side, side, width).permute(0, 3, 1, 2)  # -> (1, W, g, g)
    patch_positions = F.interpolate(
        patch_positions.float(), size=grid, mode="bicubic", align_corners=False
    ).to(positions.dtype)
    patch_positions = patch_positions.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width)  # -> (h*w, W)
    return torch.cat([cls_position, patch_positions], dim=0)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.reshape(batch, length, num_heads, width // num_heads).transpose(1, 2)  # (B, L, W) -> (B, n, L, W/n)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_width = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_width)  # (B, n, L, W/n) -> (B, L, W)


def _last_block(block: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """Run the last residual block of a ViT with its query-key attention replaced. x: (B, L, W)."""
    attention: nn.MultiheadAttention = block.attn
    width = x.shape[-1]
    weight, bias = attention.in_proj_weight, attention.in_proj_bias  # (3W, W), (3W,)
    normed = block.ln_1(x)
    if mode in ("maskclip", "value"):
        mixed = F.linear(normed, weight[2 * width :], bias[2 * width :])  # (B, L, W): each token's own value
    else:
        q, k, v = F.linear(normed, weight, bias).chunk(3, dim=-1)  # 3 x (B, L, W)
        heads = attention.num_heads
        q, k, v = (_split_heads(t, heads) for t in (q, k, v))
        # scaled_dot_product_attention(a, a, v) = softmax(a a^T / sqrt(head_width)) v, per head.
        mixed_heads = F.scaled_dot_product_attention(q, q, v)  # (B, n, L, W/n)
        if mode == "csa":
            # (softmax(q q^T s) + softmax(k k^T s)) v: SCLIP sums the two row-softmaxes, it does not average them.
            mixed_heads = mixed_heads + F.scaled_dot_product_attention(k, k, v)
        mixed = _merge_heads(mixed_heads)
    out = attention.out_proj(mixed)
    if mode in ("value", "qq"):  # the attention output alone: ClearCLIP drops the residual and MLP
        return out
    # maskclip and csa keep the block's residual and MLP (with its layer scales, identity in OpenAI's CLIP).
    y = x + block.ls_1(out)
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def _vit_dense(visual: VisionTransformer, images: torch.Tensor, mode: str) -> torch.Tensor:
    if visual.attn_pool is not None:
        raise ValueError("ViT towers with an attentional pooler (CoCa) are not supported for dense features")
    x = visual.conv1(images)  # (B, W, h, w)
    batch, width, height, grid_width = x.shape
    x = x.reshape(batch, width, height * grid_width).permute(0, 2, 1)  # (B, W, h, w) -> (B, h*w, W)
    cls_token = visual.class_embedding.to(x.dtype).expand(batch, 1, width)
    x = torch.cat([cls_token, x], dim=1)  # (B, 1 + h*w, W)
    x = x + _interpolated_positions(visual, (height, grid_width)).to(x.dtype)
    x = visual.ln_pre(x)
    transformer = visual.transformer
    if not transformer.batch_first:
        x = x.transpose(0, 1)  # NLD -> LND
    for block in transformer.resblocks[:-1]:
        x = block(x)
    if not transformer.batch_first:
        x = x.transpose(0, 1)  # LND -> NLD
    x = _last_block(transformer.resblocks[-1], x, mode)
    x = visual.ln_post(x[:, 1:])  # drop CLS: (B, h*w, W)
    if visual.proj is not None:
        x = x @ visual.proj  # (B, h*w, D)
    return x.permute(0, 2, 1).reshape(batch, -1, height, grid_width)  # (B, h*w, D) -> (B, D, h, w)


def fold_batchnorm(visual: nn.Module) -> nn.Module:
    """A copy of a frozen image tower with every ``BatchNorm2d`` folded into the convolution before it.

    In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * gamma + beta``,
    so ``bn(conv(x))`` equals one convolution with scaled weights and a bias: one pass over the
    activations less per BatchNorm. The result equals the original up to float rounding. Pairs are
    found by open_clip's names (``convN`` then ``bnN``; ``0`` then ``1`` in a downsampling branch);
    a BatchNorm without a convolution before it is kept.

    Args:
        visual: an image tower (e.g. open_clip's ``ModifiedResNet``); it is not changed.

    Returns:
        The folded copy, in eval mode, without gradients.
    """
    folded = copy.deepcopy(visual).eval().requires_grad_(False)
    for module in folded.modules():
        children = dict(module.named_children())
        for name, norm in children.items():
            if not isinstance(norm, nn.BatchNorm2d) or norm.running_mean is None or norm.running_var is None:
                continue
            conv_name = "conv" + name[2:] if name.startswith("bn") else str(int(name) - 1) if name.isdigit() else ""
            conv = children.get(conv_name)
            if not isinstance(conv, nn.Conv2d):
                continue
            with torch.no_grad():
                gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
                beta = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
                scale = gamma / torch.sqrt(norm.running_var + norm.eps)  # (out,)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
                conv.weight.copy_(conv.weight * scale[:, None, None, None])
                conv.bias = nn.Parameter((bias - norm.running_mean) * scale + beta, requires_grad=False)
            setattr(module, name, nn.Identity())
    return folded


def inference_tower(visual: nn.Module, fold: bool = True, channels_last: bool = True) -> nn.Module:
    """The image tower as inference runs it: for ResNets a copy with BatchNorms folded and NHWC weights.

    :func:`dense_features` gives the same features (to float rounding) with either tower; the
    caller's tower is never changed. Other towers are returned as they are.

    Args:
        visual: an open_clip image tower.
        fold: fold the frozen BatchNorms into their convolutions (:func:`fold_batchnorm`).
        channels_last: NHWC weights (faster convolutions with oneDNN and cuDNN).
    """
    if not isinstance(visual, ModifiedResNet):
        return visual
    if fold:
        visual = fold_batchnorm(visual)
    if channels_last:
        if not fold:
            visual = copy.deepcopy(visual)  # the caller's CLIP keeps its memory format
        visual = visual.to(memory_format=torch.channels_last)
    return visual


def dense_features(clip_model: nn.Module, images: torch.Tensor, vit_mode: str = "maskclip") -> torch.Tensor:
    """Per-location CLIP embeddings of normalised images, MaskCLIP-style.

    Args:
        clip_model: an open_clip ``CLIP`` (or its ``.visual`` tower) with a ModifiedResNet or
            VisionTransformer image tower. It is used frozen; no gradient flows.
        images: (B, 3, H, W) float, normalised with the model's mean and std. Any H and W
            (ViT positional embeddings are interpolated; sizes are floored to the stride).
        vit_mode: how the last ViT block runs, one of :data:`VIT_MODES`; ignored for ResNets.

    Returns:
        (B, D, h, w) features in CLIP's joint embedding space, not normalised, with
        h = H // stride, w = W // stride (stride 32 for ResNets, the patch size for ViTs).
    """
    visual = getattr(clip_model, "visual", clip_model)
    if vit_mode not in VIT_MODES:
        raise ValueError(f"vit_mode must be one of {', '.join(VIT_MODES)}, not {vit_mode!r}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    with torch.no_grad():
        if isinstance(visual, ModifiedResNet):
            if visual.conv1.weight.is_contiguous(memory_format=torch.channels_last):
                images = images.contiguous(memory_format=torch.channels_last)  # an inference_tower's layout
            return _resnet_dense(visual, images)
        if isinstance(visual, VisionTransformer):
            return _vit_dense(visual, images, vit_mode)
    raise TypeError(_unsupported(visual))
