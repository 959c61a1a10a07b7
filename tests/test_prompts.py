"""The prompt learner and the template classifier against open_clip's own encode_text."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mvpseg
from mvpseg.prompts import TEMPLATES, PromptLearner, template_embeddings

NAMES = ["cat", "potted plant", "tv monitor", "grass"]


def _reference(clip: mvpseg.ClipBundle, sentences: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(clip.model.encode_text(clip.tokenizer(sentences)), dim=-1)


@pytest.mark.parametrize("name", ["test-tiny-rn", "RN50"])
def test_phrase_initialised_prompts_equal_encode_text(name: str, tiny_rn: mvpseg.ClipBundle) -> None:
    clip = tiny_rn if name == "test-tiny-rn" else mvpseg.load_clip("RN50", pretrained=None)
    learner = PromptLearner(clip.model, clip.tokenizer, num_prompts=3, init_text="a photo of a")
    assert learner.num_context == 4
    embeddings = learner(NAMES)
    assert embeddings.shape == (4, len(NAMES), clip.model.text_projection.shape[1])
    expected = _reference(clip, [f"a photo of a {n}." for n in NAMES])
    torch.testing.assert_close(embeddings[0], expected, atol=1e-4, rtol=0)  # the global prompt: the phrase
    # segmentation prompts: the phrase plus 10 % noise, so that K of them can diverge in training
    phrase = learner.contexts[0].detach()
    for view, contexts in zip(embeddings[1:], learner.contexts[1:].detach()):
        relative = (contexts - phrase).square().mean().sqrt() / phrase.square().mean().sqrt()
        assert 0.08 < float(relative) < 0.12
        assert (view * expected).sum(dim=-1).min() > 0.9
    assert not torch.allclose(embeddings[1], embeddings[2])


def test_random_contexts_differ_per_prompt_and_are_unit_norm(tiny_rn: mvpseg.ClipBundle) -> None:
    learner = PromptLearner(tiny_rn.model, tiny_rn.tokenizer, num_prompts=3, num_context=16,
                            generator=torch.Generator().manual_seed(0))
    assert learner.contexts.shape == (4, 16, 32)
    assert abs(float(learner.contexts.detach().std()) - 0.02) < 0.003
    embeddings = learner(NAMES)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(4, len(NAMES)))
    assert not torch.allclose(embeddings[1], embeddings[2])


def test_gradients_reach_only_the_contexts(tiny_rn: mvpseg.ClipBundle) -> None:
    learner = PromptLearner(tiny_rn.model, tiny_rn.tokenizer, num_prompts=2, num_context=4)
    learner(NAMES).square().sum().backward()
    assert learner.contexts.grad is not None and learner.contexts.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_rn.model.parameters())
    assert [name for name, _ in learner.named_parameters()] == ["contexts"]


def test_too_long_class_name_is_an_error_naming_it(tiny_rn: mvpseg.ClipBundle) -> None:
    learner = PromptLearner(tiny_rn.model, tiny_rn.tokenizer, num_prompts=1, num_context=16)
    long_name = " ".join(["giraffe"] * 60)
    with pytest.raises(ValueError, match="too long") as info:
        learner(["cat", long_name])
    assert "giraffe giraffe" in str(info.value)


def test_bad_vocabularies(tiny_rn: mvpseg.ClipBundle) -> None:
    learner = PromptLearner(tiny_rn.model, tiny_rn.tokenizer, num_prompts=1, num_context=4)
    with pytest.raises(ValueError, match="empty"):
        learner([])
    with pytest.raises(ValueError, match="duplicate class names: cat"):
        learner(["cat", "dog", "cat"])
    with pytest.raises(ValueError, match="num_context"):
        PromptLearner(tiny_rn.model, tiny_rn.tokenizer, num_context=16, init_text="a photo of a")


def test_template_classifier_is_the_mean_of_85_templates(tiny_rn: mvpseg.ClipBundle) -> None:
    assert len(TEMPLATES) == 85 and all("{}" in t for t in TEMPLATES)
    embeddings = template_embeddings(tiny_rn.model, tiny_rn.tokenizer, NAMES[:2], batch_size=50)
    for index, name in enumerate(NAMES[:2]):
        per_template = _reference(tiny_rn, [t.format(name) for t in TEMPLATES])
        torch.testing.assert_close(embeddings[index], F.normalize(per_template.mean(0), dim=0), atol=1e-5, rtol=0)


def test_too_long_class_name_is_refused_in_every_mode(tiny_rn: mvpseg.ClipBundle) -> None:
    # 67 words: 68 tokens alone (fits 77), but "a jpeg corrupted photo of a {}." makes 78: past the window.
    too_long, longest_fitting = " ".join(["giraffe"] * 67), " ".join(["giraffe"] * 66)
    with pytest.raises(ValueError, match="too long") as info:
        template_embeddings(tiny_rn.model, tiny_rn.tokenizer, ["cat", too_long])
    assert too_long in str(info.value) and "\n" not in str(info.value)
    baseline = mvpseg.build_mvpseg(tiny_rn, None)  # the template baseline as Segmenter and eval run it
    with pytest.raises(ValueError, match="giraffe giraffe"):
        baseline.text_embeddings([too_long])
    learned = mvpseg.build_mvpseg(tiny_rn, mvpseg.MVPSegConfig(num_prompts=1, num_context=16))
    with pytest.raises(ValueError, match="giraffe giraffe"):
        learned.text_embeddings([too_long])
    # The longest name that fits every template exactly (its EOS at the window's last position) is kept,
    # and its embedding is the one open_clip's own encode_text gives.
    embedding = template_embeddings(tiny_rn.model, tiny_rn.tokenizer, [longest_fitting])
    per_template = _reference(tiny_rn, [t.format(longest_fitting) for t in TEMPLATES])
    torch.testing.assert_close(embedding[0], F.normalize(per_template.mean(0), dim=0), atol=1e-5, rtol=0)


def test_mean_contexts_average_the_segmentation_prompts_only(tiny_rn: mvpseg.ClipBundle) -> None:
    learner = PromptLearner(tiny_rn.model, tiny_rn.tokenizer, num_prompts=2, num_context=3)
    contexts = torch.arange(3 * 3 * 32, dtype=torch.float32).reshape(3, 3, 32) ** 1.5  # (K+1, M, W)
    with torch.no_grad():
        learner.contexts.copy_(contexts)
    expected = torch.stack([(contexts[i, 0] + contexts[i, 1] + contexts[i, 2]) / 3 for i in (1, 2)])  # not the global p_0
    means = learner.mean_contexts()
    assert means.shape == (2, 32)
    torch.testing.assert_close(means, expected)
    assert not torch.allclose(means, contexts[1:, 0])  # the mean, not each prompt's first vector
