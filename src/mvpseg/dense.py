"""Dense pixel features from a frozen CLIP image tower (MaskCLIP's modification).

ResNet towers (open_clip ``ModifiedResNet``): the attention pool is replaced by its value and
output projections applied at every location of the final feature map, ``F = c_proj(v_proj(x))``;
query, key and the pool's positional embedding are dropped. Output stride 32.

ViT towers (open_clip ``VisionTransformer``): every block but the last runs unchanged; in the last
block the query-key attention is replaced (see :data:`VIT_MODES`), then ``ln_post`` and ``proj`` are
applied to every patch token. Positional embeddings are interpolated for any input size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from .config import VIT_MODES, DenseOptions, check_vit_mode
from .positions import resized_positions

__all__ = ["MODE_SPECS", "Feedback", "LayerChoices", "ModeSpec", "PUBLISHED_LAYERS", "dense_features", "feature_stride",
           "layer_choices", "VIT_MODES"]

# How the last ViT block is run (mvpseg.config.VIT_MODES); s = head_width ** -0.5, per head:
# - "vanilla": the last block untouched (its query-key attention, residual and MLP): CLIP's own
#   patch tokens, the baseline every mode fixes. Real CLIP's last block attends globally, so its
#   patch tokens lose their place; MaskCLIP's value path beats it by tens of mIoU.
# - "maskclip": each token takes its own value path; the block's residual and MLP are kept
#   (``y = x + out_proj(v_proj(ln_1 x)); y = y + mlp(ln_2 y)``), as MaskCLIP's code does.
# - "value": the value path alone, no residual and no MLP (``y = out_proj(v_proj(ln_1 x))``).
# - "qq": ClearCLIP (its paper and its published figures, ``model_type='ClearCLIP'``): query-query
#   attention, no residual and no MLP.
# - "qk": ClearCLIP's released config (``model_type='vanilla', ignore_residual=True``): the block's own
#   query-key attention, no residual and no MLP (``y = out_proj(softmax(q k^T s) v)``).
# - "csa": SCLIP's correlative self-attention, the block's residual and MLP kept as SCLIP's code
#   does: ``y = x + out_proj(A v); y = y + mlp(ln_2 y)`` with, over all tokens (CLS included),
#   ``A = softmax(q q^T s) + softmax(k k^T s)``: each term softmaxed on its own and the two summed.
# - "naclip": NACLIP (its ``arch="reduced"``): ``A = softmax(k k^T s + Omega)`` with the Gaussian
#   neighbourhood ``Omega[p, P] = exp(-|pos_p - pos_P|^2 / (2 std^2))`` on the patch grid (0 on the
#   CLS row and column; std ``DenseOptions.naclip_std``, 5 patches); ``y = out_proj(A v)``, no residual
#   and no MLP.
# - "resclip": ResCLIP's residual cross-correlation self-attention (RCS) on NACLIP:
#   ``A = tau * ((1 - lam) * A_naclip + lam * A_mid)``, ``A_mid`` the mean of the ordinary
#   ``softmax(q k^T s)`` of the middle blocks (layers 6-9, on ViT-B and ViT-L: :func:`layer_choices`),
#   tau and lam ``DenseOptions.resclip_tau`` and ``resclip_lambda`` (2 and 0.4 by default, its Context-59
#   and COCO-Stuff setting); ``y = out_proj(A v)``. ResCLIP's second part, semantic feedback refinement,
#   needs the class names: :mod:`mvpseg.feedback` (``feedback=``, ``DenseOptions.resclip_sfr``).
# - "scclip": SC-CLIP's self-calibration (:func:`_scclip_tokens`): anomaly tokens found by the local
#   outlier factor after the penultimate block and replaced by their neighbours' mean, the last
#   block's attention averaged with the similarity of a middle block's features, features aggregated
#   over similar tokens, and a multi-level fusion of middle blocks through the last block.
# Only resclip and scclip read middle blocks; which ones depends on the depth (:func:`layer_choices`):
# the authors' own settings for ViT-B (12 blocks) and ViT-L (24), ViT-B's scaled to other depths.
# A mode's numeric parameters that the authors' configs set (NACLIP's std, ResCLIP's tau and lambda) and
# the positional embedding's resize are :class:`mvpseg.config.DenseOptions` fields; SC-CLIP's below are
# fixed in its code (beta, k, contamination) or follow the depth (res_cls).

SCCLIP_BETA = 0.4  # SC-CLIP: similarities below this are dropped from the feature aggregation
SCCLIP_RES_CLS = 0.3  # SC-CLIP: weight of the CLS token added to every patch token (ViT-B; see layer_choices)
SCCLIP_NEIGHBOURS, SCCLIP_CONTAMINATION = 30, 0.05  # SC-CLIP's local outlier factor: k, share of outliers


def feature_stride(visual: nn.Module) -> int:
    """Pixels per feature-map cell of an image tower (32 for ResNets, the patch size for ViTs)."""
    if isinstance(visual, ModifiedResNet):
        return 32
    if isinstance(visual, VisionTransformer):
        return int(visual.patch_size[0])  # the linear patch embedding's kernel, or a convolutional stem's stride
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


#: An open_clip transformer block (a ResidualAttentionBlock, or one of its other block classes). open_clip ships
#: no type information and a block's parts (attn, ln_1, mlp, ...) are attributes set at run time: Any to the checker.
_Block: TypeAlias = Any


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.reshape(batch, length, num_heads, width // num_heads).transpose(1, 2)  # (B, L, W) -> (B, n, L, W/n)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_width = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_width)  # (B, n, L, W/n) -> (B, L, W)


def _qkv(block: _Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value of a block's attention for tokens x (B, L, W): 3 x (B, n, L, W/n)."""
    attention: nn.MultiheadAttention = block.attn
    q, k, v = F.linear(block.ln_1(x), attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1)
    heads = attention.num_heads
    return _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)


def _block(block: _Block, x: torch.Tensor, keep_attention: bool = False
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One residual block of open_clip's ViT on tokens x (B, L, W), as its own forward computes it.

    Attention runs through ``scaled_dot_product_attention`` (a fused kernel on the CPU, faster than
    nn.MultiheadAttention's inference path, which writes out every attention matrix); with
    ``keep_attention`` it is written out instead and returned, ``softmax(q k^T s)``: (B, n, L, L).
    Blocks of other types (open_clip's custom blocks) run their own forward.

    Returns:
        The block's output (B, L, W) and its attention (or None).
    """
    if type(block) is not ResidualAttentionBlock or not block.attn.batch_first:
        if keep_attention:
            raise ValueError(f"{type(block).__name__} blocks cannot give their attention")
        batch_first = getattr(block.attn, "batch_first", True)
        out = block(x) if batch_first else block(x.transpose(0, 1)).transpose(0, 1)  # NLD <-> LND
        return out, None
    q, k, v = _qkv(block, x)
    weights = None
    if keep_attention:
        weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # (B, n, L, L)
        mixed = weights @ v  # (B, n, L, W/n)
    else:
        mixed = F.scaled_dot_product_attention(q, k, v)  # (B, n, L, W/n)
    x = x + block.ls_1(block.attn.out_proj(_merge_heads(mixed)))
    return x + block.ls_2(block.mlp(block.ln_2(x))), weights


def neighbourhood_bias(grid: tuple[int, int], std: float = DenseOptions.naclip_std) -> torch.Tensor:
    """NACLIP's additive attention bias: (1 + h*w, 1 + h*w), CLS first (its row and column 0).

    ``Omega[p, P] = exp(-|pos_p - pos_P|^2 / (2 std^2))`` for patches p, P at grid positions (row, column).
    """
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    positions = torch.stack([rows.flatten(), cols.flatten()], dim=1).float()  # (h*w, 2)
    squared = torch.cdist(positions, positions).square()  # (h*w, h*w)
    bias = torch.zeros(1 + grid[0] * grid[1], 1 + grid[0] * grid[1])
    bias[1:, 1:] = torch.exp(-squared / (2 * std**2))
    return bias


@dataclass(frozen=True)
class ModeSpec:
    """How a dense mode runs a ViT's last block: one row of :data:`MODE_SPECS` (a new mode is a new row)."""

    attention: str  # which mixing replaces the block's q-k attention: a key of _ATTENTION, or "block" (untouched)
    residual: bool  # keep the block's residual and MLP around the attention output
    middle_attention: bool = False  # mixes in the middle blocks' own attention (ResCLIP's RCS)
    every_output: bool = False  # reads the output of every block before the last (SC-CLIP)


#: Every dense mode (:data:`VIT_MODES`) as a row: see the comment at the top of this module for the formulas.
MODE_SPECS: dict[str, ModeSpec] = {
    "vanilla": ModeSpec("block", residual=True),
    "maskclip": ModeSpec("value", residual=True),
    "value": ModeSpec("value", residual=False),
    "qq": ModeSpec("qq", residual=False),
    "csa": ModeSpec("qq+kk", residual=True),
    "naclip": ModeSpec("kk+neighbourhood", residual=False),
    "resclip": ModeSpec("kk+neighbourhood", residual=False, middle_attention=True),
    "scclip": ModeSpec("self-calibration", residual=False, every_output=True),
    "qk": ModeSpec("qk", residual=False),
}


def _value_mixing(block: _Block, x: torch.Tensor, grid: tuple[int, int], options: DenseOptions) -> torch.Tensor:
    """Each token's own value: (B, L, W) -> (B, L, W)."""
    attention: nn.MultiheadAttention = block.attn
    width = x.shape[-1]
    weight, bias = attention.in_proj_weight, attention.in_proj_bias  # (3W, W), (3W,)
    return F.linear(block.ln_1(x), weight[2 * width :], bias[2 * width :])


def _qq_mixing(block: _Block, x: torch.Tensor, grid: tuple[int, int], options: DenseOptions) -> torch.Tensor:
    """ClearCLIP: ``softmax(q q^T s) v`` per head. (B, L, W) -> (B, L, W)."""
    q, _, v = _qkv(block, x)
    # scaled_dot_product_attention(a, a, v) = softmax(a a^T / sqrt(head_width)) v, per head.
    return _merge_heads(F.scaled_dot_product_attention(q, q, v))


def _qk_mixing(block: _Block, x: torch.Tensor, grid: tuple[int, int], options: DenseOptions) -> torch.Tensor:
    """ClearCLIP's released config: the block's own ``softmax(q k^T s) v`` per head. (B, L, W) -> (B, L, W)."""
    q, k, v = _qkv(block, x)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v))


def _csa_mixing(block: _Block, x: torch.Tensor, grid: tuple[int, int], options: DenseOptions) -> torch.Tensor:
    """SCLIP: ``(softmax(q q^T s) + softmax(k k^T s)) v``, the two row-softmaxes summed, not averaged."""
    q, k, v = _qkv(block, x)
    return _merge_heads(F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v))


def _neighbourhood_heads(block: _Block, x: torch.Tensor, grid: tuple[int, int], std: float,
                         feedback: tuple[torch.Tensor, float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """NACLIP: ``softmax(k k^T s + Omega) v`` per head, (B, n, L, W/n), and v; Omega's Gaussian has ``std``.

    ``feedback`` (S, tau, lambda), S (B, L, L) from :mod:`mvpseg.feedback`: ``softmax(tau ((1 - lambda) k k^T s +
    lambda S) + Omega) v`` instead (ResCLIP's SFR).
    """
    _, k, v = _qkv(block, x)
    omega = neighbourhood_bias(grid, std).to(device=x.device, dtype=k.dtype)  # (L, L)
    queries = k
    if feedback is not None:
        attention, tau, lam = feedback
        queries = k * (tau * (1 - lam))  # scales k k^T s
        omega = omega + tau * lam * attention[:, None].to(k.dtype)  # (B, 1, L, L): every head
    # scaled_dot_product_attention(q, k, v, Omega) = softmax(q k^T s + Omega) v, per head.
    return F.scaled_dot_product_attention(queries, k, v, attn_mask=omega), v


def _naclip_mixing(block: _Block, x: torch.Tensor, grid: tuple[int, int], options: DenseOptions) -> torch.Tensor:
    return _merge_heads(_neighbourhood_heads(block, x, grid, options.naclip_std)[0])


#: The attention kinds of :data:`MODE_SPECS` (but "block" and SC-CLIP's, which need more than one block).
_ATTENTION = {"value": _value_mixing, "qq": _qq_mixing, "qk": _qk_mixing, "qq+kk": _csa_mixing,
              "kk+neighbourhood": _naclip_mixing}


def _last_block(block: _Block, x: torch.Tensor, mode: str, options: DenseOptions, grid: tuple[int, int] = (0, 0),
                middle_attention: torch.Tensor | None = None, feedback: torch.Tensor | None = None) -> torch.Tensor:
    """Run the last residual block of a ViT as its mode's row of :data:`MODE_SPECS` says. x: (B, L, W).

    ``options`` holds the modes' parameters; ``grid`` is the patch grid (naclip, resclip);
    ``middle_attention`` (B, n, L, L) the mean attention of the middle blocks (resclip); ``feedback`` (B, L, L)
    SFR's attention (resclip).
    """
    spec = MODE_SPECS[mode]
    if spec.attention == "block":
        return _block(block, x)[0]
    if spec.middle_attention:
        if middle_attention is None:
            raise ValueError(f"{mode} needs the middle blocks' attention")
        sfr = None if feedback is None else (feedback, options.sfr_tau, options.sfr_lambda)
        heads, v = _neighbourhood_heads(block, x, grid, options.naclip_std, sfr)
        tau, lam = options.resclip_tau, options.resclip_lambda
        heads = tau * ((1 - lam) * heads + lam * middle_attention.to(v.dtype) @ v)  # (B, n, L, W/n)
        mixed = _merge_heads(heads)
    else:
        mixed = _ATTENTION[spec.attention](block, x, grid, options)  # (B, L, W)
    out = block.attn.out_proj(mixed)
    if not spec.residual:  # the attention output alone: no residual, no MLP
        return out
    # The block's residual and MLP (with its layer scales, identity in OpenAI's CLIP).
    y = x + block.ls_1(out)
    return y + block.ls_2(block.mlp(block.ln_2(y)))


def _scaled_range(count: int, start: int, stop: int) -> range:
    """Indices [start, stop) among the 11 blocks before the last of a 12-block ViT, scaled to ``count`` blocks.

    At least one index, all in [0, count): the papers' layer choices carried to towers of other depths.
    """
    first = min(round(start * count / 11), count - 1)
    return range(first, max(first + 1, min(round(stop * count / 11), count)))


@dataclass(frozen=True)
class LayerChoices:
    """The middle blocks resclip and scclip read, numbered from 0 among the blocks before the last.

    Attributes:
        rcs: ResCLIP's RCS blocks, whose own attention is averaged (its ``range(5, 9)``).
        scclip_pre: SC-CLIP's ``pre_adjust_idx``: the block whose similarity calibrates the last attention.
        scclip_post: SC-CLIP's ``post_adjust_idx``: the block whose similarity aggregates the result.
        scclip_fusion: SC-CLIP's multi-level fusion, ``range(multi_start_idx, multi_end_idx)``.
        scclip_res_cls: SC-CLIP's ``res_cls``: the weight of the CLS token added to every patch token.
        source: where the choice comes from: the authors' setting for this depth, or ViT-B's scaled.
    """

    rcs: range
    scclip_pre: int
    scclip_post: int
    scclip_fusion: range
    scclip_res_cls: float
    source: str


#: The authors' settings, by the number of blocks before the last. 11 (ViT-B/16, B/32: 12 blocks): ResCLIP's
#: and SC-CLIP's code. 23 (ViT-L/14, L/14@336: 24 blocks): ResCLIP's code keeps ``range(5, 9)`` for every
#: backbone (its ViT-L figures ran it); SC-CLIP's authors gave pre 16, post 6, fusion 8-18 and res_cls 0.1
#: for ViT-L/14 (SuleBai/SC-CLIP issue #5: multi_start_idx=8, multi_end_idx=19).
PUBLISHED_LAYERS: dict[int, LayerChoices] = {
    11: LayerChoices(range(5, 9), 8, 3, range(3, 10), SCCLIP_RES_CLS, "ResCLIP's and SC-CLIP's code for ViT-B"),
    23: LayerChoices(range(5, 9), 16, 6, range(8, 19), 0.1,
                     "ResCLIP's code; SC-CLIP's authors for ViT-L/14 (SuleBai/SC-CLIP issue #5)"),
}


def layer_choices(count: int) -> LayerChoices:
    """The middle blocks resclip and scclip use in a ViT with ``count`` blocks before the last.

    The authors' own settings for ViT-B (12 blocks) and ViT-L (24 blocks), :data:`PUBLISHED_LAYERS`;
    for any other depth (a tiny ViT, ViT-H, ViT-g) nobody published one, and ViT-B's indices are scaled
    to the depth (:func:`_scaled_range`) with ViT-B's res_cls.

    Raises:
        ValueError: a tower with no block between the first and the last.
    """
    if count in PUBLISHED_LAYERS:
        return PUBLISHED_LAYERS[count]
    if count < 1:
        raise ValueError(f"resclip and scclip read middle blocks: a ViT of {count + 1} block has none")
    return LayerChoices(_scaled_range(count, 5, 9), _scaled_range(count, 8, 9).start, _scaled_range(count, 3, 4).start,
                        _scaled_range(count, 3, 10), SCCLIP_RES_CLS,
                        f"no published setting for {count + 1} blocks: ViT-B's scaled to the depth")


def _outlier_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """SC-CLIP's anomaly tokens: local outlier factor above its 95th percentile. (B, N, W) -> (B, N) bool.

    As SC-CLIP computes it: squared Euclidean distances, k = 30 nearest neighbours (self excluded),
    reach distance ``max(d(p, o), k-distance of p)``, ``lrd = k / mean(reach)``, ``lof(p)`` the mean of
    ``lrd(o) / lrd(p)`` over p's neighbours o; per image, tokens above the 0.95 quantile of lof.
    """
    count = tokens.shape[1]
    neighbours = min(SCCLIP_NEIGHBOURS, count - 1)
    distances = torch.cdist(tokens, tokens, compute_mode="donot_use_mm_for_euclid_dist").square()  # (B, N, N)
    knn_distances, knn_indices = torch.topk(distances, k=neighbours + 1, dim=-1, largest=False)
    knn_distances, knn_indices = knn_distances[..., 1:], knn_indices[..., 1:]  # (B, N, k): self dropped
    reach = torch.maximum(knn_distances, knn_distances[..., -1:])  # (B, N, k)
    density = neighbours / torch.nan_to_num(reach.mean(dim=-1), nan=1e-6)  # (B, N)
    neighbour_density = torch.gather(density, 1, knn_indices.flatten(1)).view_as(knn_indices)  # (B, N, k)
    factor = (neighbour_density / density.unsqueeze(-1)).mean(dim=-1)  # (B, N)
    threshold = torch.quantile(factor.float(), 1 - SCCLIP_CONTAMINATION, dim=1, keepdim=True)  # (B, 1)
    return factor > threshold


def _fill_outliers(tokens: torch.Tensor, outliers: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Replace outlier patch tokens by the mean of their non-outlier 3x3 neighbours. (B, h*w, W) -> same.

    An outlier with no such neighbour keeps its value (SC-CLIP's mean interpolation).
    """
    batch, count, width = tokens.shape
    maps = tokens.transpose(1, 2).reshape(batch, width, *grid)  # (B, h*w, W) -> (B, W, h, w)
    keep = (~outliers).to(tokens.dtype).view(batch, 1, *grid)  # (B, 1, h, w)

    def neighbour_sum(x: torch.Tensor) -> torch.Tensor:  # the sum over each 3x3 window, less its centre
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True) * 9 - x

    sums, valid = neighbour_sum(maps * keep), neighbour_sum(keep)  # (B, W, h, w), (B, 1, h, w)
    update = outliers.view(batch, 1, *grid) & (valid > 0.5)
    filled = torch.where(update, sums / valid.clamp(min=1), maps)
    return filled.reshape(batch, width, count).transpose(1, 2)  # (B, W, h, w) -> (B, h*w, W)


def _similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of tokens: (B, N, W) -> (B, N, N)."""
    normed = F.normalize(tokens, dim=-1)
    return normed @ normed.transpose(1, 2)


def _aggregate(tokens: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """SC-CLIP's feature aggregation: tokens averaged with weights ``sim`` (below beta: 0), rows normalised."""
    weights = similarity.masked_fill(similarity < SCCLIP_BETA, 0.0)
    return weights / (weights.sum(dim=-1, keepdim=True) + 1e-6) @ tokens  # (B, N, N) x (B, N, W) -> (B, N, W)


def _scclip_attention(block: _Block, x: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """SC-CLIP's last-block attention for patch tokens x (B, N, W): ``out_proj(A v)``, no residual, no MLP.

    ``A = (softmax(3 (sim - mean(sim)), entries below the mean masked) + softmax(k k^T s)) / 2``, the
    first term shared by every head.
    """
    _, k, v = _qkv(block, x)
    centred = (similarity - similarity.mean(dim=(1, 2), keepdim=True)) * 3.0  # (B, N, N)
    calibrated = torch.softmax(centred.masked_fill(centred < 0, float("-inf")), dim=-1).unsqueeze(1)  # (B, 1, N, N)
    mixed = 0.5 * (calibrated.to(v.dtype) @ v + F.scaled_dot_product_attention(k, k, v))  # (B, n, N, W/n)
    return block.attn.out_proj(_merge_heads(mixed))


def _scclip_tokens(last: nn.Module, outputs: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """SC-CLIP's patch tokens before ``ln_post`` (B, h*w, W), from the outputs (B, 1+h*w, W) of every block but the last.

    Numbering those outputs from 0 (SC-CLIP's indices for 12 blocks; :func:`layer_choices` for others):
    anomaly tokens of the penultimate output are found (:func:`_outlier_tokens`) and filled from their
    neighbours, in it and in output 8 (pre); output 8's cosine similarity calibrates the last block's
    attention (:func:`_scclip_attention`) and, thresholded, aggregates the penultimate tokens before
    it; output 3's (post) aggregates the result; outputs 3 to 9 (fusion), summed, go through the last
    block's attention the same way and are added. The CLS token (times 0.3, res_cls) is added to each
    attention output.
    """
    choices = layer_choices(len(outputs))
    pre, post, res_cls = choices.scclip_pre, choices.scclip_post, choices.scclip_res_cls
    penultimate = outputs[-1]
    cls_token = penultimate[:, :1]  # (B, 1, W)
    outliers = _outlier_tokens(penultimate[:, 1:])  # (B, h*w)
    x = _fill_outliers(penultimate[:, 1:], outliers, grid)
    before = _similarity(_fill_outliers(outputs[pre][:, 1:], outliers, grid))  # (B, N, N)
    x = _aggregate(x, before)
    x = _scclip_attention(last, x, before) + res_cls * cls_token
    after = _similarity(outputs[post][:, 1:])  # (B, N, N)
    x = _aggregate(x, after)
    fused = torch.stack([outputs[i] for i in choices.scclip_fusion]).sum(dim=0)  # (B, 1+N, W)
    fused = _scclip_attention(last, fused[:, 1:], before) + res_cls * fused[:, :1]
    return x + _aggregate(fused, after)


#: ResCLIP's semantic feedback (:class:`mvpseg.feedback.SemanticFeedback`): windows (B, 3, H, W), their first pass's
#: projected patch tokens (B, L, D) and the patch size give SFR's attention (B, 1 + L, 1 + L).
Feedback: TypeAlias = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _vit_dense(visual: VisionTransformer, images: torch.Tensor, mode: str, options: DenseOptions,
               feedback: Feedback | None = None) -> torch.Tensor:
    if visual.attn_pool is not None:
        raise ValueError("ViT towers with an attentional pooler (CoCa) are not supported for dense features")
    x = visual.conv1(images)  # (B, W, h, w)
    batch, width, height, grid_width = x.shape
    x = x.reshape(batch, width, height * grid_width).permute(0, 2, 1)  # (B, W, h, w) -> (B, h*w, W)
    cls_token = visual.class_embedding.to(x.dtype).expand(batch, 1, width)
    x = torch.cat([cls_token, x], dim=1)  # (B, 1 + h*w, W)
    x = x + resized_positions(visual, (height, grid_width), options.position_resize).to(x.dtype)
    x = visual.ln_pre(x)
    blocks = list(visual.transformer.resblocks)
    spec = MODE_SPECS[mode]
    middle = layer_choices(len(blocks) - 1).rcs if spec.middle_attention else range(0)
    outputs: list[torch.Tensor] = []  # the output of every block but the last (scclip), (B, 1 + h*w, W)
    attentions: list[torch.Tensor] = []  # the middle blocks' own attention (resclip), (B, n, L, L)
    for index, block in enumerate(blocks[:-1]):
        x, weights = _block(block, x, keep_attention=index in middle)
        if weights is not None:
            attentions.append(weights)
        if spec.every_output:
            outputs.append(x)
    grid = (height, grid_width)
    if spec.attention == "self-calibration":
        x = visual.ln_post(_scclip_tokens(blocks[-1], outputs, grid))  # (B, h*w, W)
    else:
        middle_attention = torch.stack(attentions).mean(dim=0) if attentions else None
        sfr = None
        if feedback is not None:  # ResCLIP's SFR: the last block once without it, its segmentation steers the second
            first = _last_block(blocks[-1], x, mode, options, grid, middle_attention)
            sfr = feedback(images, _projected(visual, visual.ln_post(first[:, 1:])), feature_stride(visual))
        x = _last_block(blocks[-1], x, mode, options, grid, middle_attention, sfr)
        x = visual.ln_post(x[:, 1:])  # drop CLS: (B, h*w, W)
    x = _projected(visual, x)  # (B, h*w, D)
    return x.permute(0, 2, 1).reshape(batch, -1, height, grid_width)  # (B, h*w, D) -> (B, D, h, w)


def _projected(visual: VisionTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Tokens after ``ln_post`` (B, N, W) in the joint space (B, N, D) (towers without ``proj`` are already)."""
    return tokens if visual.proj is None else tokens @ visual.proj


def dense_features(clip_model: nn.Module, images: torch.Tensor, vit_mode: str = "maskclip",
                   options: DenseOptions | None = None, feedback: Feedback | None = None) -> torch.Tensor:
    """Per-location CLIP embeddings of normalised images, MaskCLIP-style.

    Args:
        clip_model: an open_clip ``CLIP`` (or its ``.visual`` tower) with a ModifiedResNet or
            VisionTransformer image tower. It is used frozen; no gradient flows.
        images: (B, 3, H, W) float, normalised with the model's mean and std. Any H and W
            (ViT positional embeddings are interpolated; sizes are floored to the stride).
        vit_mode: how the last ViT block runs, one of :data:`VIT_MODES`; ignored for ResNets.
        options: the ViT modes' parameters and the positional embedding's resize
            (:class:`mvpseg.config.DenseOptions`); None: its defaults. Ignored for ResNets.
        feedback: ResCLIP's semantic feedback of a vocabulary (:class:`mvpseg.feedback.SemanticFeedback`), for
            ``vit_mode="resclip"`` only: its last block runs twice, the second time steered by the first.

    Returns:
        (B, D, h, w) features in CLIP's joint embedding space, not normalised, with
        h = H // stride, w = W // stride (stride 32 for ResNets, the patch size for ViTs).
    """
    visual = getattr(clip_model, "visual", clip_model)
    check_vit_mode(vit_mode)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    # SFR steers the last block of the modes with RCS (middle_attention: _last_block hands it to their attention)
    if feedback is not None and not (isinstance(visual, VisionTransformer) and MODE_SPECS[vit_mode].middle_attention):
        raise ValueError(f"semantic feedback (SFR) is part of the resclip mode of ViTs, not of {vit_mode!r} "
                         f"on a {type(visual).__name__}: use vit_mode resclip or turn resclip_sfr off")
    with torch.no_grad():
        if isinstance(visual, ModifiedResNet):
            if visual.conv1.weight.is_contiguous(memory_format=torch.channels_last):
                images = images.contiguous(memory_format=torch.channels_last)  # an inference_tower's layout
            return _resnet_dense(visual, images)
        if isinstance(visual, VisionTransformer):
            return _vit_dense(visual, images, vit_mode, DenseOptions() if options is None else options, feedback)
    raise TypeError(_unsupported(visual))
