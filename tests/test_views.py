"""The view terms beyond the paper (Sinkhorn view assignment, map-overlap penalty) and the measures of where the
prompts look (which prompt leads where, the ceilings), on hand-made cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mvpseg.losses import (
    LossWeights,
    cell_weights,
    overlap_penalty,
    sinkhorn_plan,
    total_loss,
    view_assignment_loss,
)
from mvpseg.model import MVPSegOutput
from mvpseg.world.views import PartViews, prompt_lead, view_ceiling, view_diversity


def _output(segment_maps: torch.Tensor) -> MVPSegOutput:
    """An output whose K segmentation prompts' maps are (B, K, C, h, w), behind a zero global prompt."""
    maps = torch.cat([torch.zeros_like(segment_maps[:, :1]), segment_maps], dim=1)  # (B, K + 1, C, h, w)
    return MVPSegOutput(fused_logits=segment_maps.sum(dim=1), presence_logits=None, prompt_maps=maps)


# ----------------------------------------------------------------------------- Sinkhorn


def test_sinkhorn_plan_of_a_symmetric_case_is_the_hand_computed_one() -> None:
    # S = [[a, b], [b, a]], equal weights: by symmetry Q = [[p, q], [q, p]] with p / q = exp((a - b) / eps)
    # and every row and column summing to 1/2: p = e^(a/eps) / (2 (e^(a/eps) + e^(b/eps))).
    a, b, eps = 0.3, 0.1, 0.05
    plan = sinkhorn_plan(torch.tensor([[[a, b], [b, a]]]), torch.tensor([[1.0, 1.0]]), eps, 3)[0]
    p = math.exp(a / eps) / (2 * (math.exp(a / eps) + math.exp(b / eps)))
    torch.testing.assert_close(plan, torch.tensor([[p, 0.5 - p], [0.5 - p, p]]), rtol=1e-6, atol=1e-7)


def test_sinkhorn_marginals_are_one_over_k_and_the_cell_weights() -> None:
    scores = torch.tensor([[[0.3, 0.1, 0.2, 0.25], [0.1, 0.3, 0.2, 0.0], [0.2, 0.2, 0.9, 0.1]]])  # (1, K=3, N=4)
    weights = torch.tensor([[1.0, 0.5, 0.0, 0.25]])
    columns = weights / weights.sum()
    short = sinkhorn_plan(scores, weights, 0.05, 3)[0]
    torch.testing.assert_close(short.sum(dim=0), columns[0])  # the cells' marginal is exact after each iteration
    assert torch.all(short[:, 2] == 0)  # a cell of weight 0 gets no mass
    converged = sinkhorn_plan(scores, weights, 0.05, 500)[0]
    torch.testing.assert_close(converged.sum(dim=1), torch.full((3,), 1 / 3), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(converged.sum(dim=0), columns[0])
    # the balance is what splits: every cell prefers prompt 3's score on cell 3 ... yet each prompt gets 1/3
    assert converged[0].argmax() == 0 and converged[1].argmax() == 1


def test_cell_weights_are_the_fraction_of_each_cell_a_class_covers() -> None:
    labels = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 1], [2, 2, 2, 2], [2, 2, 255, 0]]])  # (1, 4, 4)
    weights = cell_weights(labels, (2, 2), 3)  # (1, 3, 2, 2): 2x2 pixels per cell
    torch.testing.assert_close(weights[0, 0], torch.tensor([[0.75, 0.0], [0.0, 0.25]]))
    torch.testing.assert_close(weights[0, 1], torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(weights[0, 2], torch.tensor([[0.0, 0.0], [1.0, 0.5]]))


# ----------------------------------------------------------------------------- the view-assignment loss


def _two_part_thing(text: torch.Tensor, dim: int = 8) -> MVPSegOutput:
    """A 4x4 crop, one thing (class 0): its top 8 cells have feature e0 (part A), its bottom 8 e1 (part B)."""
    features = torch.zeros(16, dim)
    features[:8, 0], features[8:, 1] = 1.0, 1.0
    maps = (features @ F.normalize(text, dim=1).T).T.reshape(1, len(text), 1, 4, 4)  # (N, K) -> (B, K, C, h, w)
    return _output(maps)


def test_two_prompts_on_a_two_part_thing_end_with_one_prompt_per_part() -> None:
    # K tau1 = 10 reads the maps less sharply than the plan does (1 / epsilon = 100): the targets are sharper
    # than the predictions, so a small difference between the prompts grows ...
    def train(tau1: float, epsilon: float) -> tuple[torch.Tensor, list[float]]:
        torch.manual_seed(0)
        text = torch.nn.Parameter(torch.ones(2, 8) + 0.01 * torch.randn(2, 8))  # two almost identical prompts
        optimizer = torch.optim.Adam([text], lr=0.05)
        labels = torch.zeros(1, 4, 4, dtype=torch.long)
        entropies = []
        for _ in range(40):
            loss, entropy = view_assignment_loss(_two_part_thing(text), labels, tau1=tau1, epsilon=epsilon)
            entropies.append(float(entropy))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return _two_part_thing(text.detach()).prompt_maps[0, 1:, 0].flatten(1), entropies  # (K, N)

    maps, entropies = train(tau1=5.0, epsilon=0.01)
    leader = maps.argmax(dim=0)
    assert len(set(leader[:8].tolist())) == 1 and len(set(leader[8:].tolist())) == 1  # each part has one leader
    assert leader[0] != leader[8]  # ... and they differ
    assert entropies[0] == pytest.approx(math.log(2), abs=0.05) and entropies[-1] < 0.1
    # ... and at K tau1 = 1 / epsilon (20) the targets are no sharper than the predictions: no split grows
    _, entropies = train(tau1=10.0, epsilon=0.05)
    assert entropies[-1] > 0.95 * math.log(2)


def test_the_loss_has_no_gradient_for_what_all_prompts_share() -> None:
    torch.manual_seed(1)
    maps = torch.randn(2, 3, 4, 4, 4) * 0.1  # (B, K, C, h, w)
    labels = torch.randint(0, 4, (2, 16, 16))
    shared = torch.randn(2, 1, 4, 4, 4)  # one map added to every prompt
    base = view_assignment_loss(_output(maps), labels, tau1=20.0)[0]
    moved = view_assignment_loss(_output(maps + shared), labels, tau1=20.0)[0]
    torch.testing.assert_close(moved, base, rtol=1e-4, atol=1e-5)
    leaf = maps.clone().requires_grad_(True)
    view_assignment_loss(_output(leaf), labels, tau1=20.0)[0].backward()
    assert leaf.grad.abs().sum() > 0
    torch.testing.assert_close(leaf.grad.sum(dim=1), torch.zeros(2, 4, 4, 4), rtol=0, atol=1e-7)


def test_the_view_terms_skip_classes_not_asked_for_and_single_prompts() -> None:
    maps = torch.randn(1, 2, 3, 2, 2)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)  # class 0 only
    loss, _ = view_assignment_loss(_output(maps), labels, tau1=10.0, classes=torch.tensor([False, True, True]))
    assert loss == 0
    assert view_assignment_loss(_output(maps[:, :1]), labels, tau1=10.0)[0] == 0  # K = 1: nothing to split
    assert overlap_penalty(_output(maps), labels, classes=torch.tensor([False, True, True])) == 0


def test_overlap_penalty_of_identical_and_complementary_maps() -> None:
    top = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    same = _output(torch.stack([top, top])[None, :, None] + 0.2)  # (1, 2, 1, 2, 2), a shared offset on top
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    assert float(overlap_penalty(same, labels)) == pytest.approx(1.0)
    apart = _output(torch.stack([top, 1 - top])[None, :, None] + 0.2)
    assert float(overlap_penalty(apart, labels)) == pytest.approx(-1.0)


def test_the_view_terms_are_off_by_default_and_leave_the_paper_loss_as_it_was() -> None:
    weights = LossWeights()
    assert weights.views == 0 and weights.overlap == 0 and weights.views_classes == ()
    torch.manual_seed(2)
    output = MVPSegOutput(fused_logits=torch.randn(2, 3, 4, 4), presence_logits=torch.randn(2, 3),
                          prompt_maps=torch.randn(2, 3, 3, 4, 4))
    labels = torch.randint(0, 3, (2, 16, 16))
    contexts = torch.randn(2, 6)
    # Off, the view terms never run: the paper's loss needs neither the prompts' maps nor tau1, which they read.
    mapless = MVPSegOutput(fused_logits=output.fused_logits, presence_logits=output.presence_logits,
                           prompt_maps=torch.empty(0))
    losses = total_loss(mapless, labels, contexts, weights)
    assert set(losses) == {"loss", "seg", "cls", "oc"}
    assert torch.equal(losses["loss"], losses["seg"] + losses["cls"] + losses["oc"])
    for term in ({"views": 0.5}, {"overlap": 2.0}):  # on, each one reads them
        with pytest.raises(IndexError):
            total_loss(mapless, labels, contexts, LossWeights(**term), tau1=5.0)
    on = total_loss(output, labels, contexts, LossWeights(views=0.5, overlap=2.0), tau1=5.0)
    expected = on["seg"] + on["cls"] + on["oc"] + 0.5 * on["views"] + 2.0 * on["overlap"]
    torch.testing.assert_close(on["loss"], expected)
    assert 0 < float(on["views_entropy"]) <= math.log(2) + 1e-6


# ----------------------------------------------------------------------------- the measures


def test_which_prompt_leads_is_a_softmax_over_the_prompts() -> None:
    logits = torch.randn(1, 3, 2, 2, 2)  # (B, K, C, h, w)
    lead = prompt_lead(logits)
    torch.testing.assert_close(lead.sum(dim=1), torch.ones(1, 2, 2, 2))
    torch.testing.assert_close(lead, logits.softmax(dim=1))
    same = prompt_lead(logits[:, :1].expand(1, 3, 2, 2, 2), size=(4, 4))
    torch.testing.assert_close(same, torch.full((1, 3, 2, 4, 4), 1 / 3))
    # identical prompts lead 1/K everywhere: their lead shares follow the parts' areas, JS 0
    sums = np.full((3, 2), 1 / 3) * np.array([[6.0, 2.0]])
    assert view_diversity(sums, np.array([6.0, 2.0]))["js"] == pytest.approx(0.0)


class _Split:
    """A one-image split of a parts world written to ``root``: a 4x4 thing (class 0), its left half part kind 2,
    its right half part kind 5 (in ROOT/SegmentationPart/, beside the label, as a world writes them)."""

    class info:
        unseen = (0,)

    def __init__(self, root: Path) -> None:
        self.label = np.full((4, 4), 1, dtype=np.uint8)
        self.label[:, :] = 0
        self.parts = np.full((4, 4), 2, dtype=np.uint8)
        self.parts[:, 2:] = 5
        self.label_paths = [root / "SegmentationClass" / "val_000000.png"]
        (root / "SegmentationPart").mkdir()
        Image.fromarray(self.parts, mode="L").save(root / "SegmentationPart" / "val_000000.png")

    def __len__(self) -> int:
        return 1

    def load(self, index: int):
        return np.zeros((4, 4, 3), dtype=np.uint8), self.label


@pytest.mark.parametrize(("num_prompts", "expected"), [(2, 1.0), (3, 2 / 3)])
def test_ceiling_is_the_best_hard_assignment_of_parts_to_prompts(tmp_path: Path, num_prompts: int,
                                                                 expected: float) -> None:
    # At a grid as fine as the labels nothing blurs: 2 prompts on the 2 parts are disjoint (JS 1); with 3, one
    # part is reused, and of the 3 pairs two are disjoint and one identical: JS 2/3 on both measures.
    split = _Split(tmp_path)
    ceiling = view_ceiling(split, [(2, 5), (0, 1)], num_prompts, grid=(4, 4))
    assert ceiling["js"] == pytest.approx(expected) and ceiling["lead_js"] == pytest.approx(expected)
    assert ceiling["js_unseen"] == pytest.approx(expected) and list(ceiling["classes"]) == ["0"]
    assignment = ceiling["classes"]["0"]["assignment"]
    assert set(assignment) == {0, 1}  # both parts used
    # pooled to a coarser grid (one cell per 2x2 pixels, then upsampled), the part boundary blurs: lower
    coarse = view_ceiling(split, [(2, 5), (0, 1)], num_prompts, grid=(1, 2))
    assert coarse["js"] < expected and coarse["lead_js"] < expected


def test_part_views_accumulate_which_prompt_leads() -> None:
    label = np.zeros((2, 2), dtype=np.uint8)
    part = np.array([[3, 3], [4, 4]], dtype=np.uint8)
    probabilities = np.ones((2, 1, 2, 2))
    lead = np.zeros((2, 1, 2, 2))
    lead[0, 0, 0], lead[1, 0, 1] = 1.0, 1.0  # prompt 1 leads on part 3, prompt 2 on part 4
    views = PartViews(2, [(3, 4)])
    views.update(probabilities, label, part, lead)
    entry = views.result(["thing"], [f"k{k}" for k in range(5)], unseen=[])["classes"]["thing"]
    assert entry["js"] == pytest.approx(0.0)  # both prompts give the thing everywhere: the saturating measure
    assert entry["lead_js"] == pytest.approx(1.0) and entry["lead_differ"] == 1.0


def test_the_view_terms_are_train_flags_and_views_classes_takes_any_number_of_names() -> None:
    from mvpseg.cli import build_parser
    from mvpseg.cli.flags import overrides

    args = build_parser().parse_args(["train", "--views", "1", "--views-epsilon", "0.02", "--overlap", "0.5",
                                      "--views-classes", "red car", "grass", "tree"])
    given = overrides(args)
    assert given["loss.views"] == 1.0 and given["loss.views_epsilon"] == 0.02 and given["loss.overlap"] == 0.5
    assert given["loss.views_classes"] == ("red car", "grass", "tree")
    one = overrides(build_parser().parse_args(["train", "--views-classes", "owl"]))
    assert one["loss.views_classes"] == ("owl",)
