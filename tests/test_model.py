"""Fusion, GPR and the losses against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import mvpseg
from mvpseg.losses import (
    LossWeights,
    orthogonality_loss,
    presence_loss,
    presence_targets,
    segmentation_loss,
    total_loss,
)
from mvpseg.model import MVPHead, MVPSegOutput


def test_fusion_and_gpr_by_hand() -> None:
    # One image, P = 3 (global + K = 2), C = 2 classes, a 1x2 feature grid.
    maps = torch.tensor([[[[[0.2, 0.4]], [[0.1, 0.0]]],     # global prompt: class 0, class 1
                          [[[0.3, 0.1]], [[0.2, 0.5]]],     # prompt 1
                          [[[0.1, 0.3]], [[0.0, 0.1]]]]])   # prompt 2
    head = MVPHead(has_global=True, use_gpr=True, tau1=10.0, tau2=0.5, gamma=2.0)
    out = head(maps)
    # fused = tau1 * (m1 + m2): class 0 -> [4, 4], class 1 -> [2, 6]
    torch.testing.assert_close(out.fused_logits, torch.tensor([[[[4.0, 4.0]], [[2.0, 6.0]]]]))
    # class 0: softmax(2 * [0.2, 0.4]) = [e^.4, e^.8] / sum; s0 = weighted mean of [0.2, 0.4]
    w = [math.exp(0.4), math.exp(0.8)]
    s0 = (w[0] * 0.2 + w[1] * 0.4) / sum(w)
    w = [math.exp(0.2), math.exp(0.0)]
    s1 = (w[0] * 0.1 + w[1] * 0.0) / sum(w)
    expected_g = torch.tensor([[1 / (1 + math.exp(-s0 / 0.5)), 1 / (1 + math.exp(-s1 / 0.5))]])
    torch.testing.assert_close(out.presence, expected_g)
    # final map = softmax_c(fused) * g, at pixel 1: softmax([4, 6]) * g
    p = torch.tensor([4.0, 6.0]).softmax(0) * expected_g[0]
    torch.testing.assert_close(out.final_logits()[0, :, 0, 1].exp(), p)


def test_templates_head_has_no_gpr_and_one_view() -> None:
    head = MVPHead(has_global=False, use_gpr=False, tau1=100.0, learnable=False)
    maps = torch.rand(2, 1, 3, 4, 5)
    out = head(maps)
    assert out.presence is None
    torch.testing.assert_close(out.fused_logits, 100.0 * maps[:, 0])
    assert not any(p.requires_grad for p in head.parameters())
    with pytest.raises(ValueError, match="global prompt"):
        MVPHead(has_global=False, use_gpr=True, tau1=1.0)


def _output(fused: torch.Tensor, presence_logits: torch.Tensor | None = None) -> MVPSegOutput:
    return MVPSegOutput(fused_logits=fused, presence_logits=presence_logits, prompt_maps=fused[:, None])


def test_segmentation_loss_by_hand() -> None:
    fused = torch.tensor([[[[2.0]], [[0.0]]]])  # (1, 2, 1, 1): one cell, upsampled to 2x2 labels
    labels = torch.tensor([[[0, 1], [255, 0]]])
    # p(class 0) = e^2 / (e^2 + 1) everywhere; pixels: two of class 0, one of class 1, one ignored
    p0 = math.exp(2) / (math.exp(2) + 1)
    expected = (-2 * math.log(p0) - math.log(1 - p0)) / 3
    assert segmentation_loss(_output(fused), labels).item() == pytest.approx(expected, rel=1e-6)
    # With GPR: final map renormalised, p(c) proportional to softmax * g
    g = torch.tensor([0.5, 0.25])
    q0 = p0 * 0.5 / (p0 * 0.5 + (1 - p0) * 0.25)
    expected = (-2 * math.log(q0) - math.log(1 - q0)) / 3
    out = _output(fused, torch.logit(g)[None])
    assert segmentation_loss(out, labels).item() == pytest.approx(expected, rel=1e-5)
    assert segmentation_loss(out, torch.full((1, 2, 2), 255)).item() == 0.0


def test_presence_targets_and_loss_by_hand() -> None:
    labels = torch.tensor([[[0, 0], [2, 255]], [[255, 255], [1, 1]]])
    targets = presence_targets(labels, num_classes=3)
    torch.testing.assert_close(targets, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    g = torch.tensor([[0.9, 0.2, 0.6], [0.3, 0.7, 0.1]])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.7) + math.log(0.7) + math.log(0.9)) / 6
    out = _output(torch.zeros(2, 3, 1, 1), torch.logit(g))
    assert presence_loss(out, labels).item() == pytest.approx(expected, rel=1e-5)


def test_orthogonality_loss_by_hand() -> None:
    contexts = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    # |cos| pairs: (0,1) = 1/sqrt2, (0,2) = 0, (1,2) = |-2 / (sqrt2 * 2)| = 1/sqrt2
    assert orthogonality_loss(contexts).item() == pytest.approx(2 / math.sqrt(2), rel=1e-6)
    assert orthogonality_loss(torch.randn(1, 8)).item() == 0.0


def test_total_loss_weights_each_term() -> None:
    fused = torch.randn(1, 3, 2, 2)
    out = _output(fused, torch.randn(1, 3))
    labels = torch.randint(0, 3, (1, 4, 4))
    contexts = torch.randn(3, 5)
    parts = total_loss(out, labels, contexts, LossWeights(seg=1.0, cls=2.0, oc=0.5))
    expected = parts["seg"] + 2.0 * parts["cls"] + 0.5 * parts["oc"]
    torch.testing.assert_close(parts["loss"], expected)
    assert total_loss(out, labels, contexts, LossWeights(oc=0.0))["oc"].item() == 0.0
    # Each part and the total against values computed here, not by the losses module.
    seg, cls, oc = _losses_by_hand(out, labels, contexts)
    torch.testing.assert_close(parts["seg"], seg)
    torch.testing.assert_close(parts["cls"], cls)
    torch.testing.assert_close(parts["oc"], oc)
    torch.testing.assert_close(parts["loss"], seg + 2.0 * cls + 0.5 * oc)
    for weights, value in (((3.0, 0.0, 0.0), 3.0 * seg), ((0.0, 0.7, 0.0), 0.7 * cls), ((0.0, 0.0, 4.0), 4.0 * oc)):
        torch.testing.assert_close(total_loss(out, labels, contexts, LossWeights(*weights))["loss"], value)


def _losses_by_hand(out: MVPSegOutput, labels: torch.Tensor,
                    contexts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_seg, L_cls and L_OC written out from their definitions (METHOD.md), labels without ignore pixels."""
    up = F.interpolate(out.fused_logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    g = torch.sigmoid(out.presence_logits)  # (B, C)
    final = up.softmax(dim=1) * g[:, :, None, None]  # softmax_c(fused) * g
    probability = final / final.sum(dim=1, keepdim=True)  # renormalised over classes
    seg = -probability.gather(1, labels[:, None]).log().mean()
    present = torch.stack([torch.isin(torch.arange(g.shape[1]), labels[b].unique()) for b in range(len(labels))])
    cls = -torch.where(present, g.log(), (1 - g).log()).mean()
    oc = torch.zeros(())
    for i in range(len(contexts)):
        for j in range(i + 1, len(contexts)):
            oc = oc + F.cosine_similarity(contexts[i], contexts[j], dim=0).abs()
    return seg, cls, oc


def test_presence_logits_subtract_the_offset_by_hand() -> None:
    # g = sigmoid((s - b) / tau2), s the softmax(gamma m0)-weighted spatial mean of m0, b a learned offset.
    head = MVPHead(has_global=True, use_gpr=True, tau1=1.0, tau2=0.25, gamma=3.0)
    with torch.no_grad():
        head.gpr_offset.fill_(0.45)
    global_maps = torch.tensor([[[[0.5, -0.1]], [[0.6, 0.8]]]])  # (1, 2, 1, 2)
    expected = []
    for values in ([0.5, -0.1], [0.6, 0.8]):
        w = [math.exp(3.0 * v) for v in values]
        s = sum(wi * v for wi, v in zip(w, values)) / sum(w)
        expected.append((s - 0.45) / 0.25)
    torch.testing.assert_close(head.presence_logits(global_maps), torch.tensor([expected]))
    assert expected[0] < 0 < expected[1]  # the offset's sign decides these: (s + b) would make both positive


def test_final_logits_upsample_before_the_log_softmax() -> None:
    # Two classes on a 1x2 grid whose log-partition differs between the cells: interpolating the logits
    # and then normalising differs from interpolating log-probabilities.
    fused = torch.tensor([[[[0.0, 6.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    presence = torch.tensor([[0.5, -1.0]])
    out = _output(fused, presence)
    up = F.interpolate(fused, size=(3, 5), mode="bilinear", align_corners=False)
    expected = up.log_softmax(dim=1) + F.logsigmoid(presence)[:, :, None, None]
    torch.testing.assert_close(out.final_logits(size=(3, 5)), expected)
    wrong = F.interpolate(fused.log_softmax(dim=1), size=(3, 5), mode="bilinear", align_corners=False)
    assert (wrong + F.logsigmoid(presence)[:, :, None, None] - expected).abs().max() > 0.1


def test_model_forward_shapes_and_training_signal(tiny_clip: mvpseg.ClipBundle) -> None:
    config = mvpseg.MVPSegConfig(num_prompts=3, num_context=4)
    model = mvpseg.build_mvpseg(tiny_clip, config, generator=torch.Generator().manual_seed(0))
    images = torch.randn(2, 3, 64, 64)
    out = model(images, ["cat", "dog", "grass"])
    cells = 2 if tiny_clip.name == "test-tiny-rn" else 8
    assert out.fused_logits.shape == (2, 3, cells, cells)
    assert out.prompt_maps.shape == (2, 4, 3, cells, cells)
    assert out.presence.shape == (2, 3)
    labels = torch.randint(0, 3, (2, 64, 64))
    loss = total_loss(out, labels, model.prompts.mean_contexts(), LossWeights())["loss"]
    loss.backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None}
    assert trained == {"prompts.contexts", "head.log_tau1", "head.log_tau2", "head.gpr_offset"}
    # cosine maps are cosines: features and text are unit vectors
    assert out.prompt_maps.abs().max() <= 1.0 + 1e-5
    features = model.features(images)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2, cells, cells))
    expected = torch.einsum("bdhw,cd->bchw", features, F.normalize(model.text_embeddings(["cat", "dog", "grass"])[2], dim=-1))
    torch.testing.assert_close(out.prompt_maps[:, 2], expected, atol=1e-5, rtol=1e-5)


def test_template_baseline_model(tiny_rn: mvpseg.ClipBundle) -> None:
    model = mvpseg.build_mvpseg(tiny_rn, None)
    assert model.prompts is None
    assert not any(p.requires_grad for p in model.parameters())
    out = model(torch.randn(1, 3, 64, 64), ["cat", "dog"])
    assert out.prompt_maps.shape[1] == 1 and out.presence is None
    assert model.head.tau1.item() == pytest.approx(tiny_rn.model.logit_scale.exp().item(), rel=1e-5)
