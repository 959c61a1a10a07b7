"""Independent references for the training-free ViT modes: each paper's released code transcribed in its
own layout (sequence-first tokens, heads folded into the batch, ``bmm``), run on an open_clip tower.

- Tokens and positions: the ``VisionTransformer.forward`` prologue and ``interpolate_pos_encoding`` that
  wangf3014/SCLIP ``clip/model.py`` (l.229-281) has, and sinahmr/NACLIP, yvhangyang/ResCLIP, SuleBai/SC-CLIP
  ``clip/model.py`` and mc-lan/ClearCLIP ``open_clip/transformer.py`` repeat: at another size than the
  tower's, ``F.interpolate(scale_factor=((h + 0.1) / g, (w + 0.1) / g), mode="bicubic")``.
- The blocks before the last: as ResCLIP's ``forward`` runs them (each block's attention written out,
  ``softmax(q s k^T)``, ``x + out_proj(A v)``, ``x + mlp(ln_2 x)``); the others run ``blk(x)``, the same
  sums. :func:`trunk` runs them once; every mode's last block (``*_tail``) starts from its result.
- SCLIP: ``custom_attn`` with ``csa=True`` (``csa``), or ``csa=False`` (the untouched block, ``vanilla``),
  the residual and MLP kept.
- ClearCLIP: ``custom_attn`` with ``model_type`` 'ClearCLIP' (q-q: ``qq``), 'vanilla' (q-k: ``qk`` with
  ``ignore_residual=True``, its released config; ``vanilla`` with False), 'MaskCLIP' (each token's own
  value: ``value`` with ``ignore_residual=True``, ``maskclip`` with False).
- NACLIP: ``gaussian_window``, ``get_attention_addition``, ``custom_attn`` with ``arch='reduced'``,
  ``attn_strategy='naclip'``.
- ResCLIP: ``custom_attn`` with ``use_rcs=True, use_sfr=False``, ``arch='wo_resi'``,
  ``attn_strategy='resclip'``, ``attn_rcs_weights=[tau, lam]``; :func:`resclip_sfr_tail` with its semantic
  feedback refinement as well (``use_sfr=True``, the names' embeddings, ``temp_thd``, ``attn_sfr_weights``).
- SC-CLIP: ``forward``, ``lof_pytorch``, ``mean_interpolation``, ``adaptively_aggregate``, ``custom_attn``,
  one image at a time as its code runs.

Every mode function takes the open_clip ``VisionTransformer`` and normalised images (any size) and returns
patch features (B, h*w, D) before normalisation. Defaults are the authors' ViT-B settings; their ViT-L ones
are passed as arguments (ResCLIP's code keeps ``layers=range(5, 9)`` on every backbone; SC-CLIP's authors
give ``pre_adjust_idx=16, post_adjust_idx=6, multi_start_idx=8, multi_end_idx=19, res_cls=0.1`` for
ViT-L/14 in SuleBai/SC-CLIP issue #5).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def peaked(visual):
    """A copy of a random ViT tower made more like a trained one: every block's query and key weights times 3
    (attention logits times 9: the largest weight of a row averages 0.46 in the penultimate block of ViT-B/16
    instead of 0.01), positions 15 times stronger (as strong as the patch embeddings, so that where they are
    sampled shows), and biases of N(0, 0.1) instead of zeros (so that ResCLIP's tau, a factor on the attention, is
    not undone by ln_post). The tests' and ``benchmarks/studies/modes_vs_authors.py``'s peaked weights."""
    visual = copy.deepcopy(visual)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for block in visual.transformer.resblocks:
            width = block.attn.embed_dim
            block.attn.in_proj_weight[: 2 * width] *= 3.0
            for bias in (block.attn.in_proj_bias, block.attn.out_proj.bias, block.mlp.c_fc.bias, block.mlp.c_proj.bias):
                bias.copy_(torch.randn(bias.shape, generator=generator) * 0.1)
        visual.positional_embedding *= 15.0
    return visual


def regions(count: int, size: int, seed: int = 5) -> torch.Tensor:
    """Images (count, 3, size, size) of four flat regions and noise: regions give tokens similar enough for
    SC-CLIP's aggregation (similarity >= 0.4) to act, which pure noise on random weights does not. The tests' and
    ``benchmarks/studies/modes_vs_authors.py``'s images (cut to H x W for the other sizes)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, size, size, generator=generator) * 0.3
    colours = torch.randn(count, 4, 3, 1, 1, generator=generator)
    half = size // 2
    images[:, :, :half, :half] += colours[:, 0]
    images[:, :, :half, half:] += colours[:, 1]
    images[:, :, half:, :] += colours[:, 2]
    images[:, :, size * 60 // 224 : size * 170 // 224, size * 80 // 224 : size * 150 // 224] = colours[:, 3]
    return images


def interpolate_pos_encoding(visual, x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    """SCLIP ``clip/model.py`` l.263-281 (``w`` the image's height, ``h`` its width, as its forward names them)."""
    patch_size = visual.conv1.kernel_size[0]
    npatch = x.shape[1] - 1
    N = visual.positional_embedding.shape[0] - 1
    if npatch == N and w == h:
        return visual.positional_embedding
    class_pos_embed = visual.positional_embedding[[0]]
    patch_pos_embed = visual.positional_embedding[1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def _tokens(visual, images: torch.Tensor) -> torch.Tensor:
    B, nc, w, h = images.shape
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    if x.shape[1] != visual.positional_embedding.shape[0]:
        x = x + interpolate_pos_encoding(visual, x, w, h)
    else:
        x = x + visual.positional_embedding
    return visual.ln_pre(x).permute(1, 0, 2)  # LND


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


@dataclass
class Trunk:
    """The tokens the last block starts from, and what the middle blocks leave for ResCLIP and SC-CLIP."""

    x: torch.Tensor  # the penultimate block's output, LND
    feats_list: list  # every block's output but the last's (SC-CLIP), LND
    attn_map: list  # every block's attention but the last's (ResCLIP), (B * heads, L, L)
    n_patches: tuple  # (rows, columns), NACLIP's and ResCLIP's n_patches


def trunk(visual, images: torch.Tensor) -> Trunk:
    """Every block but the last, as ResCLIP's ``forward`` runs them (l.297-323)."""
    B, nc, w, h = images.shape
    n_patches = (w // visual.conv1.kernel_size[0], h // visual.conv1.kernel_size[0])
    x = _tokens(visual, images)
    feats_list, attn_map = [], []
    for blk in visual.transformer.resblocks[:-1]:
        normed = blk.ln_1(x)
        q, k, v, scale = _heads(blk.attn, normed)
        attn_i = F.softmax(torch.bmm(q * scale, k.transpose(1, 2)), dim=-1)
        x = x + _output(blk.attn, attn_i, v, normed.shape[1], normed.shape[2])
        x = x + blk.mlp(blk.ln_2(x))
        feats_list.append(x)
        attn_map.append(attn_i)
    return Trunk(x, feats_list, attn_map, n_patches)


def _patches(visual, x: torch.Tensor) -> torch.Tensor:
    """LND tokens after the last block -> (B, h*w, D), CLS dropped."""
    return (visual.ln_post(x.permute(1, 0, 2)) @ visual.proj)[:, 1:]


def sclip_tail(visual, t: Trunk, csa: bool = True) -> torch.Tensor:
    """SCLIP's last block (l.249-251) and its ``custom_attn`` (l.283-313)."""
    x = t.x
    blk = visual.transformer.resblocks[-1]
    normed = blk.ln_1(x)
    q, k, v, scale = _heads(blk.attn, normed)
    if csa:
        q_attn = torch.bmm(q, q.transpose(1, 2)) * scale
        k_attn = torch.bmm(k, k.transpose(1, 2)) * scale
        attn_weights = F.softmax(q_attn, dim=-1) + F.softmax(k_attn, dim=-1)
    else:
        attn_weights = torch.bmm(q * scale, k.transpose(1, 2))
        attn_weights = F.softmax(attn_weights, dim=-1)
    x = x + _output(blk.attn, attn_weights, v, normed.shape[1], normed.shape[2])
    x = x + blk.mlp(blk.ln_2(x))
    return _patches(visual, x)


def clearclip_tail(visual, t: Trunk, model_type: str = "ClearCLIP", ignore_residual: bool = True) -> torch.Tensor:
    """ClearCLIP's last block (``open_clip/transformer.py`` l.523-536) and ``custom_attn`` (l.589-622)."""
    x = t.x
    blk = visual.transformer.resblocks[-1]
    normed = blk.ln_1(x)
    q, k, v, scale = _heads(blk.attn, normed)
    if model_type == "vanilla":
        attn_weights = F.softmax(torch.bmm(q, k.transpose(1, 2)) * scale, dim=-1)
    elif model_type == "MaskCLIP":
        mask = torch.empty(q.shape[1], q.shape[1], dtype=q.dtype)
        mask.fill_(float("-inf"))
        mask.fill_diagonal_(0)
        attn_weights = F.softmax(mask.unsqueeze(0).repeat(q.shape[0], 1, 1), dim=-1)
    elif model_type == "SCLIP":
        attn_weights = (F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
                        + F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, dim=-1))
    elif model_type == "ClearCLIP":
        attn_weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
    else:
        raise ValueError(model_type)
    out = _output(blk.attn, attn_weights, v, normed.shape[1], normed.shape[2])
    if not ignore_residual:
        out = x + out
        out = out + blk.mlp(blk.ln_2(out))
    return _patches(visual, out)


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


def naclip_tail(visual, t: Trunk, std: float = 5.0) -> torch.Tensor:
    blk = visual.transformer.resblocks[-1]
    normed = blk.ln_1(t.x)
    attn_weights, v = _naclip_weights(blk.attn, normed, t.n_patches, std)
    return _patches(visual, _output(blk.attn, attn_weights, v, normed.shape[1], normed.shape[2]))


def resclip_tail(visual, t: Trunk, tau: float = 2.0, lam: float = 0.4, layers: range = range(5, 9),
                 std: float = 5.0) -> torch.Tensor:
    attention_rcs = torch.stack([t.attn_map[i] for i in layers]).mean(dim=0)
    blk = visual.transformer.resblocks[-1]
    normed = blk.ln_1(t.x)
    attn_weights, v = _naclip_weights(blk.attn, normed, t.n_patches, std)
    attn_weights = tau * ((1 - lam) * attn_weights + lam * attention_rcs)
    return _patches(visual, _output(blk.attn, attn_weights, v, normed.shape[1], normed.shape[2]))


def resclip_sfr_tail(visual, t: Trunk, images: torch.Tensor, query_features: torch.Tensor, temp_thd: float,
                     attn_sfr_weights: tuple[float, float], tau: float = 2.0, lam: float = 0.4,
                     layers: range = range(5, 9), std: float = 5.0, logit_scale: float = 40.0) -> torch.Tensor:
    """ResCLIP with its semantic feedback refinement, one image (``use_rcs=True, use_sfr=True``,
    ``delete_same_entity=True``): ``forward`` l.326-360, ``create_logit_temp`` l.242-291, ``create_patch_matrix``
    l.106-127, ``check_path`` l.132-149, ``generate_attention_sfr`` l.152-240 and ``custom_attn``'s resclip branch
    l.470-495. Its PAMR is mvpseg's (checked against NACLIP's ``pamr.py``, which ResCLIP's equals)."""
    from mvpseg.pamr import pamr

    attention_rcs = torch.stack([t.attn_map[i] for i in layers]).mean(dim=0)
    blk = visual.transformer.resblocks[-1]
    normed = blk.ln_1(t.x)
    patch_size = visual.conv1.kernel_size[0]
    # create_logit_temp: the last block with RCS alone, the window's names' probabilities.
    attn_weights, v = _naclip_weights(blk.attn, normed, t.n_patches, std)
    attn_weights = tau * ((1 - lam) * attn_weights + lam * attention_rcs)
    image_features = _patches(visual, _output(blk.attn, attn_weights, v, normed.shape[1], normed.shape[2]))
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    logits = image_features @ query_features.T
    w, h = images[0].shape[-2] // patch_size, images[0].shape[-1] // patch_size
    logits = logits.permute(0, 2, 1).reshape(-1, logits.shape[-1], w, h)
    logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    logits = pamr(images, logits, 10, (8, 16))
    seg_logit_temp = torch.softmax(logits[0] * logit_scale, dim=0)
    # create_patch_matrix
    seg_pred = seg_logit_temp.argmax(0, keepdim=True)
    seg_pred[seg_logit_temp.max(0, keepdim=True)[0] < temp_thd] = 0
    seg_pred = seg_pred.squeeze(0)
    patches = seg_pred.unfold(0, patch_size, patch_size).unfold(1, patch_size, patch_size)
    patch_logit_temp = torch.mode(patches.reshape(t.n_patches[0], t.n_patches[1], -1), dim=-1)[0]
    # generate_attention_sfr
    hh, ww = t.n_patches
    total = hh * ww
    attention_sfr = torch.zeros((total + 1, total + 1))
    idx = torch.arange(total)
    i, j = torch.meshgrid(idx, idx, indexing="ij")
    i_w, i_h = torch.div(i, ww, rounding_mode="floor"), i % ww
    j_w, j_h = torch.div(j, ww, rounding_mode="floor"), j % ww
    attention_sfr[1:, 1:] = (patch_logit_temp[i_w, i_h] == patch_logit_temp[j_w, j_h]).float()
    attention_sfr.diagonal().fill_(1)
    attention_sfr[0, :] = 0
    attention_sfr[:, 0] = 0
    non_cls = attention_sfr[1:, 1:]
    start_coords = torch.stack((i_w, i_h), dim=-1).view(-1, 2)
    end_coords = torch.stack((j_w, j_h), dim=-1).view(-1, 2)
    steps = torch.max(torch.abs(end_coords - start_coords), dim=1)[0]
    max_steps = steps.max().item()
    tt = torch.linspace(0, 1, steps=max_steps + 1).unsqueeze(1).unsqueeze(0)
    current = (start_coords.unsqueeze(1) * (1 - tt) + end_coords.unsqueeze(1) * tt).round().long()
    valid_steps = torch.arange(max_steps + 1).unsqueeze(0) <= steps.unsqueeze(1)
    start_values = patch_logit_temp[start_coords[:, 0], start_coords[:, 1]].unsqueeze(1)
    current_values = patch_logit_temp[current[:, :, 0], current[:, :, 1]]
    valid_paths = ((current_values == start_values) | ~valid_steps).all(dim=1).view(total, total)
    decay_factor = torch.exp(-steps.view(total, total) / max_steps)
    non_cls = torch.where(valid_paths, non_cls, non_cls * decay_factor)
    kernel_size = min(total, int(6 * std + 1))
    kernel_size = kernel_size if kernel_size % 2 == 1 else kernel_size + 1
    xs = torch.arange(kernel_size) - kernel_size // 2
    kernel = torch.exp(-(xs ** 2) / (2 * std ** 2))
    kernel = kernel / kernel.sum()
    blurred = F.relu(F.conv1d(non_cls.unsqueeze(1), kernel.view(1, 1, -1), padding=kernel_size // 2).squeeze(1))
    attention_sfr[1:, 1:] = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
    attention_sfr = attention_sfr.unsqueeze(0)
    # custom_attn, resclip branch, with attn_sfr
    q, k, v, scale = _heads(blk.attn, normed)
    window = gaussian_window(*[side * 2 - 1 for side in t.n_patches], std=std)
    omega = attention_addition(*t.n_patches, window).unsqueeze(0)
    attn_weights = torch.bmm(k, k.transpose(1, 2)) * scale
    attn_sfr = (attention_sfr / torch.max(attention_sfr)).to(torch.float16)
    tau_sfr, lambda_sfr = attn_sfr_weights
    attn_weights = tau_sfr * ((1 - lambda_sfr) * attn_weights + lambda_sfr * attn_sfr)
    attn_weights += omega
    attn_weights = F.softmax(attn_weights, dim=-1)
    attn_weights = tau * ((1 - lam) * attn_weights + lam * attention_rcs)
    return _patches(visual, _output(blk.attn, attn_weights, v, normed.shape[1], normed.shape[2]))


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


def scclip_tail(visual, t: Trunk, beta: float = 0.4, pre_adjust_idx: int = 8, post_adjust_idx: int = 3,
                multi_start_idx: int = 3, multi_end_idx: int = 10, res_cls: float = 0.3,
                outlier_row_length: str = "rows") -> torch.Tensor:
    """SC-CLIP's forward after the blocks, one image at a time (its LOF takes one image).

    ``outlier_row_length``: SC-CLIP turns an outlier's flat index into ``(index // feat_w, index % feat_w)``
    with ``feat_w`` the grid's rows ("rows", its line 275), which is the position on square grids only;
    "columns" divides by the row length the flattening used, as a non-square grid needs.
    """
    images = []
    for image in range(t.x.shape[1]):
        one = Trunk(t.x[:, image : image + 1], [f[:, image : image + 1] for f in t.feats_list], [], t.n_patches)
        images.append(_scclip_one(visual, one, beta, pre_adjust_idx, post_adjust_idx, multi_start_idx,
                                  multi_end_idx, res_cls, outlier_row_length))
    return torch.cat(images)


def _scclip_one(visual, t, beta, pre_adjust_idx, post_adjust_idx, multi_start_idx, multi_end_idx, res_cls,
                outlier_row_length):
    B = 1
    width = visual.conv1.out_channels
    feat_w, feat_h = t.n_patches  # SC-CLIP: x.shape[-2], x.shape[-1] of conv1's output
    feats_list = t.feats_list
    x = feats_list[-1]
    cls_token = x[:1, ...]
    outlier_indices, _ = lof_pytorch(x[1:, ...].squeeze(1), n_neighbors=30, contamination=0.05)
    row = feat_w if outlier_row_length == "rows" else feat_h
    top_indices = [(torch.div(index, row, rounding_mode="trunc"), index % row) for index in outlier_indices]
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
    blk = visual.transformer.resblocks[-1]
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


# Each mvpseg mode as its authors' code runs it: the tail and its setting.
TAILS = {
    "vanilla": lambda visual, t, **kw: sclip_tail(visual, t, csa=False),  # SCLIP, csa=False: the untouched block
    "maskclip": lambda visual, t, **kw: clearclip_tail(visual, t, "MaskCLIP", ignore_residual=False),
    "value": lambda visual, t, **kw: clearclip_tail(visual, t, "MaskCLIP", ignore_residual=True),
    "qq": lambda visual, t, **kw: clearclip_tail(visual, t, "ClearCLIP", ignore_residual=True),
    "qk": lambda visual, t, **kw: clearclip_tail(visual, t, "vanilla", ignore_residual=True),  # its base_config.py
    "csa": lambda visual, t, **kw: sclip_tail(visual, t, csa=True),
    "naclip": naclip_tail,
    "resclip": resclip_tail,
    "scclip": scclip_tail,
}


def reference(mode: str, visual, images: torch.Tensor, **settings) -> torch.Tensor:
    """``mode``'s features as its authors' code computes them: (B, h*w, D)."""
    return TAILS[mode](visual, trunk(visual, images), **settings)


def naclip(visual, images: torch.Tensor, std: float = 5.0) -> torch.Tensor:
    return naclip_tail(visual, trunk(visual, images), std=std)


def resclip(visual, images: torch.Tensor, tau: float = 2.0, lam: float = 0.4, layers: range = range(5, 9),
            std: float = 5.0) -> torch.Tensor:
    return resclip_tail(visual, trunk(visual, images), tau=tau, lam=lam, layers=layers, std=std)


def scclip(visual, images: torch.Tensor, **settings) -> torch.Tensor:
    return scclip_tail(visual, trunk(visual, images), **settings)
