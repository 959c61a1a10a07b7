"""Independent references for the training-free ViT modes: each paper's released code transcribed in its
own layout (sequence-first tokens, heads folded into the batch, ``bmm``), run on an open_clip tower.

- NACLIP: sinahmr/NACLIP ``clip/model.py`` (``VisionTransformer.forward``, ``gaussian_window``,
  ``get_attention_addition``, ``custom_attn`` with ``arch='reduced'``, ``attn_strategy='naclip'``).
- ResCLIP: yvhangyang/ResCLIP ``clip/model.py`` with ``use_rcs=True, use_sfr=False``,
  ``arch='wo_resi'``, ``attn_strategy='resclip'``, ``attn_rcs_weights=[2.0, lam]``.
- SC-CLIP: SuleBai/SC-CLIP ``clip/model.py`` (``VisionTransformer.forward``, ``lof_pytorch``,
  ``mean_interpolation``, ``adaptively_aggregate``, ``custom_attn``), one image at a time as its code runs.

Every function takes the open_clip ``VisionTransformer`` and normalised images at the tower's own size
(no positional interpolation) and returns patch features (B, h*w, D) before normalisation. Defaults are the
authors' ViT-B settings; their ViT-L ones are passed as arguments (ResCLIP's code keeps ``layers=range(5, 9)``
on every backbone; SC-CLIP's authors give ``pre_adjust_idx=16, post_adjust_idx=6, multi_start_idx=8,
multi_end_idx=19, res_cls=0.1`` for ViT-L/14 in SuleBai/SC-CLIP issue #5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _tokens(visual, images: torch.Tensor) -> torch.Tensor:
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = x + visual.positional_embedding
    return visual.ln_pre(x).permute(1, 0, 2)  # LND


def _block(blk, x: torch.Tensor) -> torch.Tensor:
    """An open_clip block (batch first) on LND tokens."""
    return blk(x.permute(1, 0, 2)).permute(1, 0, 2)


def _heads(attn_layer, x: torch.Tensor):
    num_tokens, bsz, embed_dim = x.size()
    head_dim = embed_dim // attn_layer.num_heads
    q, k, v = F.linear(x, attn_layer.in_proj_weight, attn_layer.in_proj_bias).chunk(3, dim=-1)
    q = q.contiguous().view(-1, bsz * attn_layer.num_heads, head_dim).transpose(0, 1)
    k = k.contiguous().view(-1, bsz * attn_layer.num_heads, head_dim).transpose(0, 1)
    v = v.contiguous().view(-1, bsz * attn_layer.num_heads, head_dim).transpose(0, 1)
    return q, k, v, head_dim ** -0.5


def _output(attn_layer, attn_weights: torch.Tensor, v: torch.Tensor, bsz: int, embed_dim: int) -> torch.Tensor:
    attn_output = torch.bmm(attn_weights, v)
    attn_output = attn_output.transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    return attn_layer.out_proj(attn_output)


def gaussian_window(dim1: int, dim2: int, std: float = 1.0) -> torch.Tensor:
    constant = 1 / (std * math.sqrt(2))
    ks = []
    for dim in [dim1, dim2]:
        start = -(dim - 1) / 2.0
        ks.append(torch.linspace(start=start * constant, end=(start + (dim - 1)) * constant, steps=dim))
    dist_square_to_mu = (torch.stack(torch.meshgrid(*ks, indexing="ij")) ** 2).sum(0)
    return torch.exp(-dist_square_to_mu)


def attention_addition(dim1: int, dim2: int, window: torch.Tensor) -> torch.Tensor:
    m = torch.einsum("ij,kl->ijkl", torch.eye(dim1), torch.eye(dim2))
    m = m.permute((0, 3, 1, 2)).contiguous()
    out = F.conv2d(m.view(-1, dim1, dim2).unsqueeze(1), window.unsqueeze(0).unsqueeze(1), padding="same").squeeze(1)
    out = out.view(dim1 * dim2, dim1 * dim2)
    v_adjusted = torch.vstack([torch.zeros((1, dim1 * dim2)), out])
    return torch.hstack([torch.zeros((dim1 * dim2 + 1, 1)), v_adjusted])


def _naclip_weights(attn_layer, x, n_patches, std):
    q, k, v, scale = _heads(attn_layer, x)
    window = gaussian_window(*[side * 2 - 1 for side in n_patches], std=std)
    omega = attention_addition(*n_patches, window).unsqueeze(0)
    attn_weights = torch.bmm(k, k.transpose(1, 2)) * scale
    attn_weights += omega
    return F.softmax(attn_weights, dim=-1), v


def naclip(visual, images: torch.Tensor, std: float = 5.0) -> torch.Tensor:
    n_patches = (images.shape[2] // visual.conv1.kernel_size[0], images.shape[3] // visual.conv1.kernel_size[0])
    x = _tokens(visual, images)
    for blk in visual.transformer.resblocks[:-1]:
        x = _block(blk, x)
    blk = visual.transformer.resblocks[-1]
    normed = blk.ln_1(x)
    attn_weights, v = _naclip_weights(blk.attn, normed, n_patches, std)
    x = _output(blk.attn, attn_weights, v, normed.shape[1], normed.shape[2]).permute(1, 0, 2)
    return (visual.ln_post(x) @ visual.proj)[:, 1:]


def resclip(visual, images: torch.Tensor, tau: float = 2.0, lam: float = 0.4,
            layers: range = range(5, 9), std: float = 5.0) -> torch.Tensor:
    n_patches = (images.shape[2] // visual.conv1.kernel_size[0], images.shape[3] // visual.conv1.kernel_size[0])
    x = _tokens(visual, images)
    attn_map = []
    for blk in visual.transformer.resblocks[:-1]:
        normed = blk.ln_1(x)
        q, k, v, scale = _heads(blk.attn, normed)
        attn_i = F.softmax(torch.bmm(q * scale, k.transpose(1, 2)), dim=-1)
        x = x + _output(blk.attn, attn_i, v, normed.shape[1], normed.shape[2])
        x = x + blk.mlp(blk.ln_2(x))
        attn_map.append(attn_i)
    attention_rcs = torch.stack([attn_map[i] for i in layers]).mean(dim=0)
    blk = visual.transformer.resblocks[-1]
    normed = blk.ln_1(x)
    attn_weights, v = _naclip_weights(blk.attn, normed, n_patches, std)
    attn_weights = tau * ((1 - lam) * attn_weights + lam * attention_rcs)
    x = _output(blk.attn, attn_weights, v, normed.shape[1], normed.shape[2]).permute(1, 0, 2)
    return (visual.ln_post(x) @ visual.proj)[:, 1:]


def lof_pytorch(x: torch.Tensor, n_neighbors: int = 30, contamination: float = 0.05):
    distances = torch.norm(x[:, None] - x[None, :], dim=2, p=2) ** 2
    knn_distances, knn_indices = torch.topk(distances, k=n_neighbors + 1, largest=False)
    knn_distances, knn_indices = knn_distances[:, 1:], knn_indices[:, 1:]
    k_distances = knn_distances[:, -1].unsqueeze(1).expand_as(knn_distances)
    reach_distances = torch.max(knn_distances, k_distances)
    LRD = n_neighbors / torch.nan_to_num(reach_distances.mean(dim=1), nan=1e-6)
    LRD_ratios = LRD[knn_indices] / LRD.unsqueeze(1)
    LOF_scores = LRD_ratios.mean(dim=1)
    threshold = torch.quantile(LOF_scores.to(torch.float32), 1 - contamination)
    return torch.where(LOF_scores > threshold)[0], LOF_scores


def mean_interpolation(feature_map: torch.Tensor, top_indices) -> torch.Tensor:
    B, C, H, W = feature_map.shape
    kernel = torch.ones(C, 1, 3, 3)
    kernel[:, 0, 1, 1] = 0
    mask = torch.ones((H, W))
    indices = torch.tensor(top_indices, dtype=torch.long)
    mask[indices[:, 0], indices[:, 1]] = 0
    mask = mask.unsqueeze(0).unsqueeze(0)
    padded_feature_map = F.pad(feature_map * mask, (1, 1, 1, 1), mode="constant", value=0)
    padded_mask = F.pad(mask, (1, 1, 1, 1), mode="constant", value=0)
    neighbor_sum = F.conv2d(padded_feature_map, kernel, groups=C)
    valid_neighbors = F.conv2d(padded_mask, kernel[:, :1, :, :], groups=1)
    valid_neighbor_mask = (valid_neighbors > 0).to(feature_map.dtype)
    safe_valid_neighbors = valid_neighbors.clone()
    safe_valid_neighbors[safe_valid_neighbors == 0] = 1
    mean_neighbors = neighbor_sum / safe_valid_neighbors
    top_indices_mask = torch.zeros((H, W))
    top_indices_mask[indices[:, 0], indices[:, 1]] = 1
    update_mask = top_indices_mask.unsqueeze(0).unsqueeze(0) * valid_neighbor_mask
    return feature_map * (1 - update_mask) + mean_neighbors * update_mask


def _scclip_attn(attn_layer, x, mid_simi):
    q, k, v, scale = _heads(attn_layer, x)
    mid_simi = (mid_simi - torch.mean(mid_simi)) * 3.0
    mid_simi[mid_simi < 0.0] = float("-inf")
    mid_simi = mid_simi.repeat(attn_layer.num_heads, 1, 1)
    attn_weights = F.softmax(mid_simi, dim=-1)
    attn_weights += F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, dim=-1)
    attn_weights /= 2
    return _output(attn_layer, attn_weights, v, x.shape[1], x.shape[2])


def _aggregate(maskclip_feats: torch.Tensor, corrs: torch.Tensor) -> torch.Tensor:
    corrs_normalized = corrs / (corrs.sum(dim=-1, keepdim=True) + 1e-6)
    return torch.matmul(corrs_normalized, maskclip_feats.permute(1, 0, 2)).permute(1, 0, 2)


def scclip(visual, images: torch.Tensor, beta: float = 0.4, pre_adjust_idx: int = 8, post_adjust_idx: int = 3,
           multi_start_idx: int = 3, multi_end_idx: int = 10, res_cls: float = 0.3) -> torch.Tensor:
    """SC-CLIP's forward, one image at a time (its LOF takes one image)."""
    return torch.cat([_scclip_one(visual, image[None], beta, pre_adjust_idx, post_adjust_idx, multi_start_idx,
                                  multi_end_idx, res_cls) for image in images])


def _scclip_one(visual, images, beta, pre_adjust_idx, post_adjust_idx, multi_start_idx, multi_end_idx, res_cls):
    B = images.shape[0]
    width = visual.conv1.out_channels
    feat_w = images.shape[2] // visual.conv1.kernel_size[0]
    feat_h = images.shape[3] // visual.conv1.kernel_size[0]
    x = _tokens(visual, images)
    blocks = visual.transformer.resblocks
    feats_list = []
    for idx, blk in enumerate(blocks[:-1], start=1):
        x = _block(blk, x)
        feats_list.append(x)
        if idx == len(blocks) - 1:
            cls_token = x[:1, ...]
            outlier_indices, _ = lof_pytorch(x[1:, ...].squeeze(1), n_neighbors=30, contamination=0.05)
            top_indices = [(torch.div(index, feat_w, rounding_mode="trunc"), index % feat_w)
                           for index in outlier_indices]
            feature_map = x[1:, :, :].permute(1, 2, 0).reshape(B, width, feat_w, feat_h)
            feature_map = mean_interpolation(feature_map, top_indices)
            x = feature_map.reshape(B, width, feat_w * feat_h).permute(2, 0, 1)
    feats = feats_list[pre_adjust_idx][1:, ...].clone()
    feats = feats.permute(1, 2, 0).reshape(B, width, feat_w, feat_h)
    feats = mean_interpolation(feats, top_indices)
    feats = feats.reshape(B, width, feat_w * feat_h).permute(2, 0, 1)
    feats = feats / feats.norm(dim=2, keepdim=True)
    before_simi = torch.matmul(feats.permute(1, 0, 2), feats.permute(1, 2, 0))
    mid_simi = before_simi.clone()
    before_simi[before_simi < beta] = 0.0
    x = _aggregate(x, before_simi)
    blk = blocks[-1]
    x = _scclip_attn(blk.attn, blk.ln_1(x), mid_simi=mid_simi) + res_cls * cls_token
    feats = feats_list[post_adjust_idx][1:, ...].clone()
    feats = feats / feats.norm(dim=2, keepdim=True)
    after_simi = torch.matmul(feats.permute(1, 0, 2), feats.permute(1, 2, 0))
    after_simi[after_simi < beta] = 0.0
    x = _aggregate(x, after_simi)
    re_feats = torch.zeros_like(feats_list[0])
    for i in range(multi_start_idx, multi_end_idx):
        re_feats += feats_list[i]
    cls_token = re_feats[:1, ...]
    re_feats = _scclip_attn(blk.attn, blk.ln_1(re_feats[1:, ...]), mid_simi=mid_simi) + res_cls * cls_token
    re_feats = _aggregate(re_feats, after_simi)
    x += re_feats
    x = x.permute(1, 0, 2)
    return visual.ln_post(x) @ visual.proj
