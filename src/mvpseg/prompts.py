"""Text side: the multi-view prompt learner and MaskCLIP's template classifier.

Both produce L2-normalised class embeddings from the frozen CLIP text tower. The prompt learner
owns ``K + 1`` learnable contexts of ``M`` token vectors each, placed before the class name
(CoOp's "end" position): ``[SOS] p_i [class-name tokens] [.] [EOS]``. Index 0 is the global
prompt used by Global Prompt Refining; indices 1..K are the segmentation prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn

__all__ = [
    "PromptLearner",
    "TEMPLATES",
    "TEMPLATE_SETS",
    "encode_text_embeddings",
    "template_embeddings",
    "validate_class_names",
]

#: MaskCLIP's 85 hand-crafted templates: OpenAI's 80 ImageNet templates plus five scene templates.
TEMPLATES: tuple[str, ...] = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES) + (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

#: The template sets of the zero-training classifier by name (:data:`mvpseg.config.TemplateSet`): MaskCLIP's 85
#: (mvpseg's) and OpenAI's 80 ImageNet templates alone (the training-free peers' ``openai_imagenet_template``).
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"maskclip-85": TEMPLATES, "openai-imagenet-80": TEMPLATES[:80]}

_PLACEHOLDER = "X"  # one BPE token ("x</w>"); its embedding is replaced by the learned context


def validate_class_names(class_names: Sequence[str]) -> list[str]:
    """Strip class names and reject an empty vocabulary, empty names and duplicates.

    Args:
        class_names: the vocabulary, in label order.

    Returns:
        The stripped names.

    Raises:
        ValueError: naming the offending entries.
    """
    names = [str(name).strip() for name in class_names]
    if not names:
        raise ValueError("the list of class names is empty: give at least one class name")
    if any(not name for name in names):
        raise ValueError("a class name is empty: remove empty entries from the class list")
    seen: set[str] = set()
    duplicates = sorted({name for name in names if name in seen or seen.add(name)})  # type: ignore[func-returns-value]
    if duplicates:
        raise ValueError(f"duplicate class names: {', '.join(duplicates)}; give each class once")
    return names


def encode_text_embeddings(clip_model: nn.Module, embeddings: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Run CLIP's text tower from token embeddings instead of token ids.

    Mirrors open_clip's ``CLIP.encode_text`` after its embedding lookup. With a causal attention
    mask (every CLIP text tower), the pooled end-of-text output depends only on positions up to it,
    so sequences are cut after the longest end-of-text position: the same numbers, less work.

    Args:
        clip_model: an open_clip ``CLIP``.
        embeddings: (N, L, W) token embeddings (the learned contexts already in place).
        token_ids: (N, L) int64 token ids, used to find the end-of-text position.

    Returns:
        (N, D) text embeddings, not normalised.
    """
    clip: Any = clip_model  # open_clip's CLIP: its parts are attributes set at run time, untyped
    cast_dtype = clip.transformer.get_cast_dtype()
    attn_mask = clip.attn_mask
    length = token_ids.shape[1]
    if attn_mask is not None and clip.text_pool_type == "argmax":
        length = int(token_ids.argmax(dim=-1).max()) + 1
        attn_mask = attn_mask[:length, :length]
        embeddings, token_ids = embeddings[:, :length], token_ids[:, :length]
    x = embeddings.to(cast_dtype) + clip.positional_embedding[:length].to(cast_dtype)  # (N, L, W)
    x = clip.transformer(x, attn_mask=attn_mask)
    x = clip.ln_final(x)
    x = text_global_pool(x, token_ids, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    projection = clip.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x  # (N, D)


@torch.no_grad()
def template_embeddings(
    clip_model: nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    batch_size: int = 1024,
) -> torch.Tensor:
    """MaskCLIP's zero-training classifier: class embeddings averaged over hand-crafted templates.

    Args:
        clip_model: an open_clip ``CLIP``.
        tokenizer: its tokenizer.
        class_names: C readable class names.
        templates: format strings with one ``{}``; default the 85 templates.
        batch_size: sentences encoded at once.

    Returns:
        (C, D) float32, L2-normalised.

    Raises:
        ValueError: a class name that does not fit CLIP's text window in some template (the message
            names it); the tokenizer would cut such a sentence short without a word.
    """
    names = validate_class_names(class_names)
    clip: Any = clip_model  # open_clip's CLIP: its parts are attributes set at run time, untyped
    device = clip.positional_embedding.device
    window = clip.positional_embedding.shape[0]  # CLIP's text window (77 tokens)
    sentences = [template.format(name) for name in names for template in templates]
    encoded = []
    for start in range(0, len(sentences), batch_size):
        # One token more than the window: a sentence that fits ends (EOS, the largest id) within the
        # window; one that does not would otherwise be truncated silently.
        ids = tokenizer(sentences[start : start + batch_size], context_length=window + 1)  # (N, L + 1)
        ends = ids.argmax(dim=-1)
        if bool((ends >= window).any()):
            row = int((ends >= window).nonzero()[0])
            name, template = names[(start + row) // len(templates)], templates[(start + row) % len(templates)]
            raise ValueError(
                f"class name {name!r} is too long: in the template {template!r} it does not fit CLIP's "
                f"{window}-token text window; shorten it"
            )
        ids = ids[:, :window].to(device)  # (N, L)
        encoded.append(F.normalize(encode_text_embeddings(clip_model, clip.token_embedding(ids), ids).float(), dim=-1))
    per_template = torch.cat(encoded).reshape(len(names), len(templates), -1)  # (C*T, D) -> (C, T, D)
    return F.normalize(per_template.mean(dim=1), dim=-1)


#: Noise added to phrase-initialised segmentation prompts, relative to the phrase's RMS.
_PHRASE_NOISE = 0.1


class PromptLearner(nn.Module):
    """K segmentation prompts plus one global prompt, each ``num_context`` learnable token vectors.

    Args:
        clip_model: an open_clip ``CLIP``; it is used frozen and is not registered as a submodule
            (so the learner's ``state_dict`` holds only what is trained).
        tokenizer: the model's tokenizer.
        num_prompts: K, the number of segmentation prompts (the global prompt comes on top).
        num_context: M, context vectors per prompt. Default 16 (CoOp); with ``init_text`` the
            phrase's token count.
        init_text: a phrase such as "a photo of a" whose token embeddings initialise every prompt
            (the segmentation prompts with 10 % noise, so that they can diverge); None draws the
            contexts from N(0, 0.02).
        generator: random generator for the initialisation.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        num_prompts: int = 3,
        num_context: int | None = None,
        init_text: str | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be at least 1, got {num_prompts}")
        self._clip = [clip_model]  # a list hides it from nn.Module registration and state_dict
        self.tokenizer = tokenizer
        self.num_prompts = num_prompts
        self.init_text = init_text
        token_embedding = cast(nn.Embedding, clip_model.token_embedding)  # open_clip's CLIP: set at run time
        width = token_embedding.weight.shape[1]
        device = token_embedding.weight.device
        if init_text is not None:
            ids = tokenizer([init_text]).to(device)  # (1, L)
            phrase_length = int(ids.argmax(dim=-1)) - 1  # tokens between SOS and EOS
            if num_context is not None and num_context != phrase_length:
                raise ValueError(
                    f"init_text {init_text!r} has {phrase_length} tokens but num_context is {num_context}: "
                    f"leave num_context unset to use the phrase's length"
                )
            num_context = phrase_length
            with torch.no_grad():
                phrase = token_embedding(ids)[0, 1 : 1 + phrase_length].float()  # (M, W)
            contexts = phrase.unsqueeze(0).repeat(num_prompts + 1, 1, 1)  # (K+1, M, W)
            # Identical segmentation prompts would stay identical (the fused map sums them, and the
            # OC loss has no gradient at cosine 1), so they start from the phrase plus a little noise
            # (10 % of its RMS); the global prompt starts from the phrase exactly.
            noise = torch.randn(num_prompts, phrase_length, width, generator=generator).to(device)
            contexts[1:] += _PHRASE_NOISE * phrase.square().mean().sqrt() * noise
        else:
            num_context = 16 if num_context is None else num_context
            if num_context < 1:
                raise ValueError(f"num_context must be at least 1, got {num_context}")
            contexts = torch.randn(num_prompts + 1, num_context, width, generator=generator) * 0.02
        self.num_context = num_context
        self.contexts = nn.Parameter(contexts.to(device))  # (K+1, M, W)
        self._vocabulary: tuple[str, ...] | None = None
        self._token_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def clip_model(self) -> nn.Module:
        return self._clip[0]

    def _tokens(self, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (C, L) and frozen token embeddings (C, L, W) of the prompt sentences, cached."""
        names = tuple(validate_class_names(class_names))
        device = self.contexts.device
        if self._vocabulary == names and self._token_cache is not None and self._token_cache[0].device == device:
            return self._token_cache
        clip_model: Any = self.clip_model  # open_clip's CLIP: its parts are attributes set at run time, untyped
        context_length = clip_model.positional_embedding.shape[0]
        name_ids = self.tokenizer([f"{name}." for name in names])  # (C, L)
        end_positions = name_ids.argmax(dim=-1)  # EOS index = 1 + name tokens (with the period)
        for name, end in zip(names, end_positions.tolist()):
            if end + self.num_context + 1 > context_length:
                raise ValueError(
                    f"class name {name!r} is too long: with {self.num_context} context tokens it does not fit "
                    f"CLIP's {context_length}-token text window; shorten it"
                )
        placeholder = " ".join([_PLACEHOLDER] * self.num_context)
        ids = self.tokenizer([f"{placeholder} {name}." for name in names]).to(device)  # (C, L)
        with torch.no_grad():
            embeddings = clip_model.token_embedding(ids)  # (C, L, W)
        self._vocabulary, self._token_cache = names, (ids, embeddings)
        return ids, embeddings

    def forward(self, class_names: Sequence[str]) -> torch.Tensor:
        """Encode every prompt for every class.

        Args:
            class_names: C readable class names.

        Returns:
            (K+1, C, D) L2-normalised text embeddings; index 0 is the global prompt. Gradients reach
            only the contexts.
        """
        ids, embeddings = self._tokens(class_names)
        num_classes, length, width = embeddings.shape
        num_views, num_context = self.contexts.shape[:2]
        prefix = embeddings[:, :1].unsqueeze(0).expand(num_views, -1, -1, -1)  # (K+1, C, 1, W)
        suffix = embeddings[:, 1 + num_context :].unsqueeze(0).expand(num_views, -1, -1, -1)  # (K+1, C, L-1-M, W)
        contexts = self.contexts.to(embeddings.dtype).unsqueeze(1).expand(-1, num_classes, -1, -1)  # (K+1, C, M, W)
        prompts = torch.cat([prefix, contexts, suffix], dim=2).reshape(num_views * num_classes, length, width)
        repeated_ids = ids.repeat(num_views, 1)  # (K+1 * C, L)
        text = encode_text_embeddings(self.clip_model, prompts, repeated_ids)  # (K+1 * C, D)
        return F.normalize(text.float(), dim=-1).reshape(num_views, num_classes, -1)  # -> (K+1, C, D)

    def mean_contexts(self) -> torch.Tensor:
        """(K, W) the mean of each segmentation prompt's context vectors (for the orthogonality loss)."""
        return self.contexts[1:].mean(dim=1)
