"""Open-vocabulary inference: any image, any list of class names. Glue only.

Layers, top to bottom: :meth:`Segmenter.predict` (paths, PIL or NumPy in, NumPy out), then
:meth:`Segmenter.predict_torch` (a normalised tensor from :meth:`Segmenter.resize` in, log-scores at feature
resolution out), then :class:`mvpseg.MVPSeg` itself; :meth:`Segmenter.probabilities` and :meth:`Segmenter.labels`
are the peers' protocols' path (every class's probability at every pixel). The public surface is what callers
use: those, the image tower on crops (:meth:`~Segmenter.features`), the text cache (:meth:`~Segmenter.text_embeddings`, :meth:`~Segmenter.cache_text_embeddings`,
:meth:`~Segmenter.clear_text_cache`), :meth:`~Segmenter.upsample_log_scores` and :meth:`~Segmenter.identity`; the
steps between (padding, windows, features, stitching) are private. The heavy parts live elsewhere: the windows'
rule in :meth:`mvpseg.InferenceConfig.window_boxes`, dense features and the inference tower in :mod:`mvpseg.dense`,
label upsampling in :mod:`mvpseg.upsample`, the protocols' scoring in :mod:`mvpseg.scoring`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import build
from .clip import weights_fingerprint
from .config import InferenceConfig, ModelSource, ViTMode, to_dict, with_overrides
from .dense import MODE_SPECS
from .feedback import SemanticFeedback
from .image import ImageInput, load_image, resize_cv2
from .model import MVPSeg, MVPSegOutput, SegmentationModel
from .prediction import Prediction
from .prompts import TEMPLATE_SETS, template_embeddings, validate_class_names
from .protocols import Protocol, get_protocol
from .runtime import autocast, default_device
from .scoring import refined_probabilities, threshold_labels
from .upsample import interpolate_cells, label_log_scores, upsample_log_scores
from .vocabulary import ClassNames, Vocabulary, background_threshold_problem, max_over_names
from .windows import Box, pad_to_cells, sliding_windows

__all__ = ["InferenceConfig", "Prediction", "Segmenter", "sliding_windows", "with_overrides"]



class Segmenter:
    """MVP-SEG (or the MaskCLIP template baseline) ready to segment images.

    Args:
        model: an :class:`MVPSeg` or a student (:class:`mvpseg.model.ClipModel`s: each carries its CLIP), or any
            model offering what the Segmenter uses of one (``mvpseg.export.OnnxSegmenter``'s windows in onnxruntime).
        config: how images are resized and windowed; default the settings the model's checkpoint was
            made for (``model.inference_settings``, set by the loaders) over InferenceConfig's defaults.
        device: where to run; default CUDA when available.
    """

    def __init__(self, model: SegmentationModel, config: InferenceConfig | None = None,
                 device: str | torch.device | None = None) -> None:
        self.device = default_device(device)
        self.config = config or InferenceConfig(**model.inference_settings)
        #: The frozen CLIP the model holds (None for an ONNX file whose classes are baked in).
        self.clip = model.clip
        if self.clip is not None:
            self.clip.model.to(self.device)
        self.model = model.to(self.device).eval()
        #: Pixels per feature cell of the model's map (32 for ResNet towers, the patch size for ViTs).
        self.feature_stride = model.feature_stride
        #: The image tower inference runs: for ResNets a BatchNorm-folded, NHWC copy (the CLIP's own is kept).
        self.tower = model.inference_tower(fold=self.config.fold_batchnorm, channels_last=self.config.channels_last)
        self._mean, self._std = model.normalisation(self.device)  # (1, 3, 1, 1) each
        self._text_cache: dict[tuple[str, ...], torch.Tensor] = {}
        self._identity: dict[str, Any] | None = None
        if self.config.dense.resclip_sfr and not (self._is_template_model()
                                                  and MODE_SPECS[model.config.vit_mode].middle_attention):
            raise ValueError("dense.resclip_sfr (ResCLIP's semantic feedback) runs with the template classifier in the "
                             "resclip mode only: choose vit_mode resclip without prompts, or turn it off")

    @classmethod
    def from_pretrained(
        cls,
        clip: str | None = None,
        pretrained: str | os.PathLike[str] | None = "auto",
        prompts: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        config: InferenceConfig | None = None,
        student: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        vit_mode: ViTMode | None = None,
        protocol: str | Protocol | None = None,
    ) -> Segmenter:
        """Load CLIP and, optionally, learned prompts or an MVP-SEG+ student.

        Args:
            clip: open_clip architecture; default the checkpoint's, else (templates) "ViT-B-16".
            pretrained: open_clip tag, local weights file, or None for random weights; "auto": the
                weights the prompt checkpoint was learned on when it names a tag, else "openai".
            prompts: a prompt checkpoint: a file, a model folder or a Hugging Face Hub id (``org/name[@revision]``;
                :mod:`mvpseg.hub`); None uses MaskCLIP's 85 templates.
            device: where to run; default CUDA when available.
            config: inference options; default the settings the checkpoint was made for (when it
                records them) over InferenceConfig's defaults.
            student: a student checkpoint from ``mvpseg transfer`` (file, folder or Hub id) instead of prompts
                (it holds its own).
            overrides: InferenceConfig fields laid over ``config`` (or the checkpoint's settings): what
                a user typed (``{"short_side": 512}``).
            vit_mode: a ViT's dense mode; default the prompts', else (templates) "scclip"
                (:func:`mvpseg.build.from_pretrained`).
            protocol: an evaluation protocol (:mod:`mvpseg.protocols`; a name, ``"NAME:BENCHMARK"`` or a
                :class:`~mvpseg.protocols.Protocol`): its settings over the checkpoint's, under ``overrides``; with
                the templates its ViT mode unless ``vit_mode`` is given.

        Returns:
            A ready :class:`Segmenter`.
        """
        source = ModelSource(clip=clip, pretrained=None if pretrained is None else str(pretrained),
                             prompts=None if prompts is None else str(prompts),
                             student=None if student is None else str(student), vit_mode=vit_mode)
        return cls.from_source(source, device=device, config=config, overrides=overrides, protocol=protocol)

    @classmethod
    def from_source(cls, source: ModelSource, device: str | torch.device | None = None,
                    config: InferenceConfig | None = None, overrides: Mapping[str, Any] | None = None,
                    protocol: str | Protocol | None = None) -> Segmenter:
        """The Segmenter of a :class:`mvpseg.ModelSource`, as every command builds it (:meth:`from_pretrained`'s
        arguments in one value; an ONNX file loads with ``mvpseg.export.OnnxSegmenter.from_source``)."""
        if source.onnx is not None:
            raise ValueError("this model source names an ONNX file: load it with "
                             "mvpseg.export.OnnxSegmenter.from_source (the export extra)")
        if protocol is not None:
            protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
            source = protocol.source_for(source)
            overrides = {**protocol.overrides(), **(overrides or {})}
        target = default_device(device)
        model = build.from_pretrained(source.clip, source.pretrained, source.prompts, device=target,
                                      student=source.student, vit_mode=source.vit_mode)
        base = config or InferenceConfig(**model.inference_settings)
        return cls(model, config=with_overrides(base, overrides), device=target)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of ``config.precision`` on this device (:mod:`mvpseg.runtime`)."""
        return autocast(self.device, self.config.precision)

    def identity(self) -> dict[str, Any]:
        """What this segmenter's outputs come from: the model's kind ("prompts", "templates" or "student"), its
        CLIP's and its own trained weights' fingerprints (:func:`mvpseg.clip.weights_fingerprint`), its config
        (the ViT mode among it) and the runtime ("torch"). ``mvpseg segment`` records it in each summary;
        ``--skip-existing`` compares it."""
        if self._identity is None:
            kind = "student" if not isinstance(self.model, MVPSeg) else (
                "prompts" if self.model.prompts is not None else "templates")
            self._identity = {"kind": kind, "clip": None if self.clip is None else self.clip.fingerprint,
                              "weights": weights_fingerprint(self.model), "config": to_dict(self.model.config),
                              "runtime": "torch"}
        return dict(self._identity)

    # --- text -------------------------------------------------------------------------------------

    def text_embeddings(self, class_names: Sequence[str]) -> torch.Tensor:
        """(P, C, D) class embeddings, computed once per vocabulary and cached.

        Classes go through the text tower ``config.text_batch`` at a time: each class's prompts are
        encoded on their own (causal text tower), so the embeddings are those of one batch, with a
        fraction of its activations in memory (171 classes x 4 prompts at once: about 700 MiB).
        """
        names = tuple(validate_class_names(class_names))
        key = self._text_key(names)
        if key not in self._text_cache:
            step = self.config.text_batch
            with torch.inference_mode(), self._autocast():
                parts = [self._encode_text(names[start : start + step]).float()
                         for start in range(0, len(names), step)]  # (P, c, D) each
            self._text_cache[key] = torch.cat(parts, dim=1)  # (P, C, D)
        return self._text_cache[key]

    def _is_template_model(self) -> bool:  # the zero-training template classifier (no prompts, not a student)
        return isinstance(self.model, MVPSeg) and self.model.prompts is None

    def _text_key(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The text cache's key: the names, and the template set when it is not the model's own."""
        return names if self.config.templates == "maskclip-85" or not self._is_template_model() else (
            f"<{self.config.templates}>", *names)

    def _encode_text(self, names: Sequence[str]) -> torch.Tensor:
        """(P, c, D) embeddings of some names: the template classifier's with ``config.templates``, else the model's."""
        model = self.model
        if self.config.templates != "maskclip-85" and isinstance(model, MVPSeg) and model.prompts is None:
            return template_embeddings(model.clip_model, model.clip.tokenizer, names,
                                       templates=TEMPLATE_SETS[self.config.templates]).unsqueeze(0)  # (c, D) -> (1, c, D)
        return self.model.text_embeddings(names)

    def cache_text_embeddings(self, class_names: Sequence[str], embeddings: torch.Tensor) -> None:
        """Use ``embeddings`` (P, C, D) for this vocabulary instead of running the text tower."""
        names = tuple(validate_class_names(class_names))
        if embeddings.ndim != 3 or embeddings.shape[1] != len(names):
            raise ValueError(f"embeddings must be (P, {len(names)}, D), got {tuple(embeddings.shape)}")
        self._text_cache[self._text_key(names)] = embeddings.to(self.device)

    def clear_text_cache(self) -> None:
        """Forget every vocabulary's embeddings (the next call runs the text tower again)."""
        self._text_cache.clear()

    # --- images -----------------------------------------------------------------------------------

    def resize(self, image: np.ndarray) -> torch.Tensor:
        """An HWC uint8 image as the model's input: resized to ``config.long_side`` when set, else to
        ``config.short_side``, and normalised.

        Args:
            image: (H, W, 3) uint8 RGB in [0, 255].

        Returns:
            (1, 3, H', W') float32 on this device, normalised with CLIP's mean and std.
        """
        size = self.config.resized_size(image.shape[0], image.shape[1])
        smooth = self.config.resize_filter == "antialias"
        if self.config.resize_filter == "cv2" and size != image.shape[:2]:
            image = resize_cv2(image, size)  # the peers' mmcv Resize, exactly
        # uint8 -> float on the contiguous HWC array (a copy), then scaled in place; the "bilinear" filter
        # resizes the 8-bit levels and rounds them as cv2 does, and scales them after.
        tensor = torch.from_numpy(image).to(self.device).float()  # (H, W, 3) in [0, 255]
        tensor = tensor.div_(255.0) if smooth else tensor
        tensor = tensor.permute(2, 0, 1)[None]  # HWC -> (1, 3, H, W) (a view)
        if size != image.shape[:2]:
            tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=smooth)
            tensor = tensor if smooth else tensor.round_().clamp_(0, 255)
        tensor = tensor if smooth else tensor.div_(255.0)
        return tensor.sub_(self._mean).div_(self._std)  # in place: no full-size temporaries

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) padded to whole feature cells (:func:`mvpseg.windows.pad_to_cells`)."""
        return pad_to_cells(images, self.feature_stride)

    def _window_batches(self, padded: torch.Tensor) -> Iterator[tuple[list[Box], torch.Tensor]]:
        """The crops the image tower sees, batched: ``config.batch_size`` windows at a time, those
        of one size together.

        Args:
            padded: (B, 3, H, W) images from ``_pad``.

        Yields:
            (boxes, crops): G window boxes and their crops (G * B, 3, h', w'), window-major.
        """
        boxes = self.config.window_boxes(padded.shape[-2], padded.shape[-1], self.feature_stride)
        for start in range(0, len(boxes), self.config.batch_size):
            chunk = boxes[start : start + self.config.batch_size]
            same_size = len({(y1 - y0, x1 - x0) for y0, y1, x0, x1 in chunk}) == 1
            for group in [chunk] if same_size else [[box] for box in chunk]:
                yield group, torch.cat([padded[:, :, y0:y1, x0:x1] for y0, y1, x0, x1 in group])

    def features(self, crops: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, h, w) L2-normalised dense features of normalised crops (B, 3, H, W), with the inference tower.

        ``text`` (1, N, D): the vocabulary's embeddings, which ResCLIP's semantic feedback needs
        (``config.dense.resclip_sfr``; :mod:`mvpseg.feedback`); other features ignore it.
        """
        model, options = self.model, self.config.dense
        if not options.resclip_sfr:
            return model.features(crops, tower=self.tower, options=options)
        if text is None:
            raise ValueError("semantic feedback (dense.resclip_sfr) segments each window first: give the text embeddings")
        assert isinstance(model, MVPSeg)  # checked when the segmenter was made
        feedback = SemanticFeedback(text[0], self._template_scale(), options.sfr_threshold, options.naclip_std)
        return model.features(crops, tower=self.tower, options=options, feedback=feedback)

    def _template_scale(self) -> float:
        """The template classifier's logit scale: ``config.logit_scale``, else the classifier's own."""
        return self.config.logit_scale or float(self.model.head.tau1)

    def _window_maps(self, crops: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, P, C, h, w) float32 cosine maps of normalised crops (B, 3, H, W) against text (P, C, D)."""
        return self.model.cosine_maps(self.features(crops, text), text).float()

    def _stitched_maps(self, padded: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, P, N, h, w) float32 cosine maps of padded images (B, 3, H, W) against text (P, N, D) on the feature
        grid: the windows' maps averaged on the cells where they overlap (``stitch="cells"``)."""
        batch, step = padded.shape[0], self.feature_stride
        grid = (padded.shape[-2] // step, padded.shape[-1] // step)
        canvas = torch.zeros(batch, text.shape[0], text.shape[1], *grid, device=self.device)  # (B, P, N, h, w)
        counts = torch.zeros(1, 1, 1, *grid, device=self.device)
        with torch.inference_mode(), self._autocast():
            for group, crops in self._window_batches(padded):  # crops: (G*B, 3, h', w')
                maps = self._window_maps(crops, text)  # (G*B, P, N, h', w')
                for index, (y0, y1, x0, x1) in enumerate(group):
                    cells = (..., slice(y0 // step, y1 // step), slice(x0 // step, x1 // step))
                    canvas[cells] += maps[index * batch : (index + 1) * batch]
                    counts[cells] += 1
        return canvas / counts

    def _pixel_maps(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, P, N, H, W) float32 cosine maps of images (B, 3, H, W) against text (P, N, D) at the images' pixels:
        each window's maps upsampled (bilinear) to the window, summed and divided by the windows over each pixel
        (``stitch="pixels"``, the peers' ``forward_slide``; a window whose side is not a whole number of patches
        is seen on its whole patches and its maps stretched over all of it, as theirs are)."""
        batch, _, height, width = images.shape
        canvas = torch.zeros(batch, text.shape[0], text.shape[1], height, width, device=self.device)  # (B, P, N, H, W)
        counts = torch.zeros(1, 1, 1, height, width, device=self.device)
        with torch.inference_mode(), self._autocast():
            for group, crops in self._window_batches(images.to(self.device)):  # crops: (G*B, 3, h', w')
                rows, cols = crops.shape[-2:]
                pad = [0, 0, 0, 0]  # left, right, top, bottom
                if self.config.partial_patches == "pad":  # ClearCLIP: zeros (the mean colour) to whole patches
                    extra = [-cols % self.feature_stride, -rows % self.feature_stride]
                    pad = [extra[0] // 2, extra[0] - extra[0] // 2, extra[1] // 2, extra[1] - extra[1] // 2]
                    crops = F.pad(crops, pad)
                maps = self._window_maps(crops, text)  # (G*B, P, N, h, w)
                stretched = F.interpolate(maps.flatten(1, 2), size=crops.shape[-2:], mode="bilinear",
                                          align_corners=False)  # (G*B, P*N, h, w) -> (G*B, P*N, h', w')
                stretched = stretched[..., pad[2] : pad[2] + rows, pad[0] : pad[0] + cols]  # padding cut back
                stretched = stretched.unflatten(1, maps.shape[1:3])  # -> (G*B, P, N, h', w')
                for index, (y0, y1, x0, x1) in enumerate(group):
                    canvas[..., y0:y1, x0:x1] += stretched[index * batch : (index + 1) * batch]
                    counts[..., y0:y1, x0:x1] += 1
        return canvas / counts

    def predict_torch(self, images: torch.Tensor, class_names: Sequence[ClassNames] | Vocabulary) -> MVPSegOutput:
        """Segment already resized, normalised images.

        Args:
            images: (B, 3, H, W) float, normalised with CLIP's mean and std, on any device.
            class_names: C classes, each a name or a sequence of names (synonyms, the first shown); or
                a :class:`mvpseg.vocabulary.Vocabulary`.

        Returns:
            :class:`MVPSegOutput` over the feature grid (ceil(H / s), ceil(W / s)), s the feature stride;
            windows are stitched on that grid by averaging where they overlap. Every name is scored and
            each class takes the maximum over its names of the fused logits, the presence logits and
            the prompt maps.
        """
        vocabulary = Vocabulary.of(class_names)
        text = self.text_embeddings(vocabulary.names)  # (P, N, D): one entry per distinct name
        maps = self._stitched_maps(self._pad(images.to(self.device)), text)  # (B, P, N, h, w)
        with torch.inference_mode(), self._autocast():
            output = self.model.head(maps)  # over the N names
            presence = output.presence_logits
            return MVPSegOutput(
                fused_logits=max_over_names(output.fused_logits, vocabulary, dim=1),  # (B, N, h, w) -> (B, C, h, w)
                presence_logits=None if presence is None else max_over_names(presence, vocabulary, dim=1),
                prompt_maps=max_over_names(output.prompt_maps, vocabulary, dim=2),  # (B, P, N, h, w) -> (B, P, C, h, w)
            )

    def _upsample(self, output: MVPSegOutput, resized: tuple[int, int], size: tuple[int, int],
                 with_scores: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (H, W) int32 and, optionally, scores (C, H, W) float32 at an image's own size.

        Args:
            output: :meth:`predict_torch`'s output for one image.
            resized: (H', W') the size the image was segmented at (:meth:`resize`).
            size: (H, W) the size to return.
            with_scores: also return ``exp`` of the final log-scores.
        """
        return self.upsample_log_scores(output.final_logits()[0], resized, size, with_scores)

    def _cells_per_pixel(self, resized: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
        """Feature cells per output pixel, rows and columns: the resized image's grid over the output size."""
        return resized[0] / (size[0] * self.feature_stride), resized[1] / (size[1] * self.feature_stride)

    def upsample_log_scores(self, log_scores: torch.Tensor, resized: tuple[int, int], size: tuple[int, int],
                            with_scores: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (H, W) int32 and, with ``with_scores``, scores ``exp`` (C', H, W) float32 at an image's own size, of
        any log-scores (C', h, w) on this segmenter's feature grid (e.g. a subset of :meth:`predict_torch`'s classes),
        for an image resized to ``resized`` (H', W') by :meth:`resize`."""
        cells_per_pixel = self._cells_per_pixel(resized, size)
        with torch.inference_mode():
            return upsample_log_scores(log_scores.float(), size, cells_per_pixel,
                                       budget_bytes=self.config.upsample_budget_mib * 2**20,
                                       rows=self.config.upsample_rows, with_scores=with_scores)

    def predict(self, image: ImageInput, class_names: Sequence[ClassNames] | Vocabulary,
                background: ClassNames | None = None, return_scores: bool = False,
                background_threshold: float | None = None, return_output: bool = False) -> Prediction:
        """Segment one image against any list of class names.

        Args:
            image: a path, a PIL image, or an HWC uint8 array in [0, 255] (see :func:`mvpseg.load_image`).
            class_names: C classes, each a readable name ("cat", "grass", ...) or a tuple or list of
                synonyms (``("tv monitor", "television")``: scored as the best of its names, shown as the first).
            background: a name (or names) for everything else (e.g. "background"); it becomes class 0.
            return_scores: also return the (C, H, W) final map.
            background_threshold: P in [0, 1]: pixels whose best class score (the final map's largest
                value) is below P become the background (needs ``background``).
            return_output: also return the feature-grid output (:attr:`Prediction.output`: the prompt maps).

        Returns:
            :class:`Prediction` at the image's own resolution; its ``class_names`` are the display names.

        Raises:
            ValueError: a bad vocabulary, or a threshold without a background or outside [0, 1].
        """
        vocabulary = Vocabulary.of(class_names, background)
        problem = background_threshold_problem(background_threshold, background)
        if problem:
            raise ValueError(problem)
        array = load_image(image)
        if self.config.scores_at_pixels:
            probabilities = self.probabilities(array, vocabulary)  # (C, H, W)
            labels = self.labels(probabilities, background_threshold)
            return Prediction(labels=labels.cpu().numpy(), class_names=vocabulary.display_names,
                              scores=probabilities.cpu().numpy() if return_scores else None)
        resized = self.resize(array)
        output = self.predict_torch(resized, vocabulary)
        size = array.shape[:2]
        resized_size = (resized.shape[-2], resized.shape[-1])
        labels, scores = self._upsample(output, resized_size, size, return_scores)
        if background_threshold is not None:
            labels = self._threshold_background(output, labels, resized_size, size, background_threshold)
        presence = output.presence[0].cpu().numpy() if output.presence is not None else None
        return Prediction(
            labels=labels.cpu().numpy(),
            class_names=vocabulary.display_names,
            scores=scores.cpu().numpy() if scores is not None else None,
            presence=presence,
            output=output if return_output else None,
        )

    # --- the peers' protocols: every class's probability at every pixel -------------------------------------

    def probabilities(self, image: np.ndarray, vocabulary: Vocabulary) -> torch.Tensor:
        """(C, H, W) float32 class probabilities at an image's (H, W, 3) own size, as the settings score them: the
        template classifier's names' cosine maps (stitched on the cells or the pixels), upsampled, refined by PAMR,
        scaled by ``logit_scale`` (default the classifier's), by the synonym rule; learned prompts' and students'
        final map ``softmax(fused) * g`` upsampled as log-scores. ``stitch="pixels"`` is for the templates alone."""
        config = self.config
        template = self._is_template_model()
        if config.stitch == "pixels" and not template:
            raise ValueError("stitch 'pixels' is the training-free protocol of the template classifier: learned prompts "
                             "and students segment with stitch 'cells'")
        resized = self.resize(image)  # (1, 3, H', W')
        size = (int(image.shape[0]), int(image.shape[1]))
        cells_per_pixel = self._cells_per_pixel((resized.shape[-2], resized.shape[-1]), size)
        if template:
            text = self.text_embeddings(vocabulary.names)  # (1, N, D)
            if config.stitch == "pixels":
                maps = self._pixel_maps(resized, text)[:, 0]  # (1, N, H', W')
                with torch.inference_mode():
                    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)  # (1, N, H, W)
            else:
                grid = self._stitched_maps(self._pad(resized), text)[0, 0]  # (N, h, w)
                with torch.inference_mode():
                    maps = interpolate_cells(grid, size, cells_per_pixel)[None]  # (1, N, H, W)
        else:
            output = self.predict_torch(resized, vocabulary)
            with torch.inference_mode():
                maps = interpolate_cells(output.final_logits()[0].float(), size, cells_per_pixel)[None]  # (1, C, H, W)
        with torch.inference_mode():
            guide = F.interpolate(resized, size=size, mode="bilinear", align_corners=False) if config.pamr_steps else None
            scale = self._template_scale() if template else None
            return refined_probabilities(maps, vocabulary, scale, config, guide)

    def labels(self, probabilities: torch.Tensor, background_threshold: float | None = None) -> torch.Tensor:
        """(H, W) int32 labels of class probabilities (C, H, W) under ``area_thd`` and ``prob_thd`` (or a higher
        ``background_threshold``): :func:`mvpseg.scoring.threshold_labels` (``probabilities`` changed in place)."""
        with torch.inference_mode():
            return threshold_labels(probabilities, self.config.area_thd,
                                    max(self.config.prob_thd, background_threshold or 0.0))

    def _threshold_background(self, output: MVPSegOutput, labels: torch.Tensor, resized: tuple[int, int],
                             size: tuple[int, int], threshold: float) -> torch.Tensor:
        """Labels with every pixel whose best class score is below ``threshold`` set to class 0 (the background).

        The score is the final map's value of the pixel's own label, its largest (SCLIP's ``prob_thd``).

        Args:
            output: :meth:`predict_torch`'s output for one image.
            labels: (H, W) int32 labels from ``_upsample`` (changed in place).
            resized: (H', W') the size the image was segmented at.
            size: (H, W) the labels' size.
            threshold: P in [0, 1]; strictly lower scores become 0.

        Returns:
            ``labels``.
        """
        if threshold <= 0.0:
            return labels
        log_scores = output.final_logits()[0].float()  # (C, h, w)
        cells_per_pixel = self._cells_per_pixel(resized, size)
        with torch.inference_mode():
            best = label_log_scores(log_scores, labels, cells_per_pixel,
                                    budget_bytes=self.config.upsample_budget_mib * 2**20, rows=self.config.upsample_rows)
            labels[best.to(labels.device) < math.log(threshold)] = 0
        return labels
