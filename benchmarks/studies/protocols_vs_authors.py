"""Each peer's protocol in mvpseg against that repository's own segmentor, run here on the same random weights.

For every (repository, benchmark) asked, this script exports the repository from its local mirror, imports its
segmentor and its ``clip`` package unmodified (stand-ins for the four mmseg/mmengine names they import:
``BaseSegmentor``, ``SegDataPreProcessor``, ``PixelData``, ``MODELS``), builds it from the benchmark's config file
(``configs/base_config.py`` then ``configs/cfg_*.py``, executed as the plain Python they are) with a random
ViT-B/16 whose attention is peaked, and feeds it images as its mmseg pipeline would (mmcv's ``imrescale``:
``cv2.resize`` with bilinear interpolation to the size ``rescale_size`` gives, then the pre-processor's mean and
std). mvpseg segments the same images with ``--protocol NAME`` on the same weights. Reported per image: the
share of pixels whose labels agree, the largest difference of the class probabilities before any threshold
(the repository's own ``softmax(logit_scale * cosines)`` and maximum over each class's queries, on its own
upsampled cosines), and the same with PAMR on.

    python benchmarks/studies/protocols_vs_authors.py --out benchmarks/results/protocols_vs_authors.json

Needs the mirrors (``/work/.mirror/<owner>+<repo>/repo``), opencv-python-headless, ftfy and regex; not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

MIRRORS = Path("/work/.mirror")
#: protocol -> (mirror, segmentor module, class, config file of each benchmark)
REPOSITORIES: dict[str, tuple[str, str, str]] = {
    "sclip": ("wangf3014+SCLIP", "clip_segmentor", "CLIPForSegmentation"),
    "naclip": ("sinahmr+NACLIP", "naclip", "NACLIP"),
    "scclip": ("SuleBai+SC-CLIP", "scclip_segmentor", "SCCLIPForSegmentation"),
    "resclip": ("yvhangyang+ResCLIP", "resclip_segmentor", "ResCLIPSegmentation"),
    "clearclip": ("mc-lan+ClearCLIP", "clearclip_segmentor", "ClearCLIPSegmentation"),
}
#: ClearCLIP's model_type for each mvpseg mode: its released config's "vanilla" (q-k) and its paper's "ClearCLIP" (q-q).
CLEARCLIP_MODEL_TYPES = {"qk": "vanilla", "qq": "ClearCLIP"}
CONFIG_FILES = {"voc21": "cfg_voc21.py", "context60": "cfg_context60.py", "coco-object": "cfg_coco_object.py",
                "voc20": "cfg_voc20.py", "context59": "cfg_context59.py", "coco-stuff": "cfg_coco_stuff164k.py",
                "cityscapes": "cfg_city_scapes.py", "ade20k": "cfg_ade20k.py"}
MEAN, STD = [122.771, 116.746, 104.094], [68.501, 66.632, 70.323]


# --- the repository, as its code runs -------------------------------------------------------------------------

def stand_ins() -> None:
    """The mmseg and mmengine names the segmentors import, as small modules."""

    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor: Any = None) -> None:
            super().__init__()

    class SegDataPreProcessor:
        def __init__(self, mean: list[float], std: list[float], rgb_to_bgr: bool = False, bgr_to_rgb: bool = False) -> None:
            self.mean, self.std = mean, std

    class PixelData:
        def __init__(self, data: torch.Tensor) -> None:
            self.data = data

    class DataSample:
        def __init__(self, metainfo: dict[str, Any]) -> None:
            self.metainfo = metainfo
            self.outputs: dict[str, Any] = {}

        def set_data(self, values: dict[str, Any]) -> None:
            self.outputs.update(values)

    class Registry:
        def register_module(self, *args: Any, **kwargs: Any):
            return lambda cls: cls

    modules = {name: types.ModuleType(name) for name in
               ("mmseg", "mmseg.models", "mmseg.models.segmentors", "mmseg.models.data_preprocessor", "mmseg.registry",
                "mmengine", "mmengine.structures")}
    import packaging  # noqa: F401
    modules["mmseg.models.segmentors"].BaseSegmentor = BaseSegmentor  # type: ignore[attr-defined]
    modules["mmseg.models.data_preprocessor"].SegDataPreProcessor = SegDataPreProcessor  # type: ignore[attr-defined]
    modules["mmengine.structures"].PixelData = PixelData  # type: ignore[attr-defined]
    modules["mmseg.registry"].MODELS = Registry()  # type: ignore[attr-defined]
    import packaging.version

    modules["pkg_resources"] = types.ModuleType("pkg_resources")  # clip.py: "from pkg_resources import packaging"
    modules["pkg_resources"].packaging = packaging  # type: ignore[attr-defined]
    sys.modules.update(modules)
    globals()["DataSample"] = DataSample


def _export(mirror: str, into: Path) -> Path:
    """The repository's HEAD as files (its code and configs; the mirror leaves out some large files)."""
    git = ["git", "-C", str(MIRRORS / mirror / "repo")]
    listing = subprocess.run([*git, "ls-tree", "-r", "HEAD"], check=True, capture_output=True, text=True).stdout
    target = into / mirror
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        if not path.endswith((".py", ".txt", ".gz", ".json")):
            continue
        blob = subprocess.run([*git, "cat-file", "blob", meta.split()[2]], capture_output=True)
        if blob.returncode == 0:
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(blob.stdout)
    return target


def _config(root: Path, benchmark: str) -> tuple[dict[str, Any], tuple[int, int]]:
    """The benchmark's model settings (base config, then its own) and its Resize scale."""
    values: dict[str, Any] = {}
    exec((root / "configs" / "base_config.py").read_text(), values)
    model = dict(values["model"])
    own: dict[str, Any] = {}
    exec((root / "configs" / CONFIG_FILES[benchmark]).read_text(), own)
    model.update(own["model"])
    scale = next(step["scale"] for step in own["test_pipeline"] if step["type"] == "Resize")
    return model, tuple(scale)


def _forget(prefixes: tuple[str, ...]) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in prefixes:
            del sys.modules[name]


def _their_inputs(image: np.ndarray, scale: tuple[int, int]) -> torch.Tensor:
    """mmcv's Resize(scale, keep_ratio=True) and mmseg's SegDataPreProcessor on an RGB uint8 image."""
    import cv2

    height, width = image.shape[:2]
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    size = (int(width * factor + 0.5), int(height * factor + 0.5))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)  # channel order does not matter here
    tensor = torch.from_numpy(resized).permute(2, 0, 1).float()
    tensor = (tensor - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return tensor[None]


def _clearclip_imports(root: Path, weights: Path) -> dict[str, Any]:
    """ClearCLIP imports its own copy of open_clip (and BLIP and GEM, unused here): pip's open_clip is set aside
    (returned, to be put back), stand-ins take BLIP's and GEM's names, and its create_model builds the compared
    architecture from the compared weights whatever name ClearCLIP asks for."""
    kept = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "open_clip"}
    for name in ("BLIP", "BLIP.models", "BLIP.models.blip_retrieval", "gem"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["BLIP.models.blip_retrieval"].blip_retrieval = None  # type: ignore[attr-defined]
    sys.path.insert(0, str(root))
    theirs = __import__("open_clip")
    theirs.add_model_config(weights.parent)
    kept["__create__"] = lambda *args, **kwargs: theirs.create_model(ARCHITECTURE, pretrained=str(weights))
    return kept


@contextlib.contextmanager
def _fp32_everywhere(active: bool) -> Iterator[None]:
    """ClearCLIP's predict casts its inputs to fp16 for its fp16 CUDA model; on the CPU every repository here runs in
    fp32, so ``Tensor.half`` is the identity while it runs."""
    if not active:
        yield
        return
    half = torch.Tensor.half
    torch.Tensor.half = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.half = half  # type: ignore[method-assign]


@contextlib.contextmanager
def _cpu_for_cuda() -> Iterator[None]:
    """ResCLIP's semantic feedback refinement moves tensors and a PAMR module to CUDA by name (``.cuda()``,
    ``.to(torch.device('cuda'))``); on this CPU-only machine those moves stay on the CPU while it runs."""
    tensor_cuda, module_to = torch.Tensor.cuda, nn.Module.to

    def to(module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            return module
        return module_to(module, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.to = to  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda = tensor_cuda  # type: ignore[method-assign]
        nn.Module.to = module_to  # type: ignore[method-assign]


def _restore_open_clip(kept: dict[str, Any]) -> None:
    for name in [name for name in sys.modules if name.split(".")[0] in ("open_clip", "BLIP", "gem")]:
        del sys.modules[name]
    sys.modules.update({name: module for name, module in kept.items() if name != "__create__"})


def run_repository(protocol: str, benchmark: str, weights: Path, images: list[np.ndarray], workdir: Path,
                   pamr_steps: int | None, vit_mode: str | None = None, keep_cosines: bool = False
                   ) -> list[dict[str, Any]]:
    """The repository's labels and class probabilities (before thresholds) for each image; with ``keep_cosines``
    its upsampled cosines (Q, H, W) too (``protocol_gap.py``)."""
    mirror, module_name, class_name = REPOSITORIES[protocol]
    root = workdir / mirror
    if not root.exists():
        _export(mirror, workdir)
    model_cfg, scale = _config(root, benchmark)
    model_cfg.pop("type")
    model_cfg["name_path"] = str(root / "configs" / Path(model_cfg["name_path"]).name)
    model_cfg["device"] = torch.device("cpu")
    kept: dict[str, Any] | None = None
    if protocol == "clearclip":  # no PAMR in its segmentor
        model_cfg["model_type"] = CLEARCLIP_MODEL_TYPES[vit_mode or "qk"]
        kept = _clearclip_imports(root, weights)
    else:
        model_cfg["clip_path"] = str(weights)
        if pamr_steps is not None:
            model_cfg["pamr_steps"] = pamr_steps
    _forget(("clip", "pamr", "prompts", module_name))
    sys.path.insert(0, str(root))
    try:
        module = __import__(module_name)
        if kept is not None:
            module.create_model = kept["__create__"]
        segmentor = getattr(module, class_name)(**model_cfg).eval()
        captured: dict[str, torch.Tensor] = {}
        original = segmentor.postprocess_result

        def capture(seg_logits: torch.Tensor, data_samples: Any) -> Any:
            captured["cosines"] = seg_logits.detach().clone()
            return original(seg_logits, data_samples)

        segmentor.postprocess_result = capture
        results: list[dict[str, Any]] = []
        for image in images:
            inputs = _their_inputs(image, scale)
            sample = DataSample({"ori_shape": image.shape[:2], "img_shape": tuple(inputs.shape[-2:])})  # noqa: F821
            try:
                with torch.no_grad(), _fp32_everywhere(kept is not None), _cpu_for_cuda():
                    segmentor.predict(inputs, [sample])
            except Exception as error:  # their code failing on an input is a finding, not the end of the study
                results.append({"error": f"{type(error).__name__}: {error}", "resized": tuple(inputs.shape[-2:])})
                continue
            cosines = captured["cosines"][0].float()  # (Q, H, W)
            probabilities = (cosines * segmentor.logit_scale).softmax(0)
            index = segmentor.query_idx.cpu()
            classes = int(index.max()) + 1
            per_class = torch.stack([probabilities[index == c].amax(0) for c in range(classes)])  # (C, H, W)
            results.append({"labels": sample.outputs["pred_sem_seg"].data[0].cpu().numpy(),
                            "probabilities": per_class.numpy(), "resized": tuple(inputs.shape[-2:]),
                            **({"cosines": cosines} if keep_cosines else {})})
        return results
    finally:
        while str(root) in sys.path:
            sys.path.remove(str(root))
        _forget(("clip", "pamr", "prompts", module_name))
        if kept is not None:
            _restore_open_clip(kept)


# --- mvpseg ------------------------------------------------------------------------------------------------------

def run_mvpseg(protocol: str, benchmark: str, weights: Path, images: list[np.ndarray], workdir: Path,
               pamr_steps: int | None, vit_mode: str | None = None) -> list[dict[str, Any]]:
    from mvpseg.config import ModelSource
    from mvpseg.inference import Segmenter
    from mvpseg.protocols import get_protocol
    from mvpseg.vocabulary import Vocabulary, read_classes_file

    preset = get_protocol(protocol, benchmark)
    overrides = {} if pamr_steps is None else {"pamr_steps": pamr_steps}
    config = preset.inference_config(**overrides)
    source = ModelSource(clip=ARCHITECTURE, pretrained=str(weights), vit_mode=vit_mode or preset.vit_mode)
    segmenter = Segmenter.from_source(source, device="cpu", config=config)
    # The repository's own class file: the one its config names.
    model_cfg, _ = _config(workdir / REPOSITORIES[protocol][0], benchmark)
    vocabulary = Vocabulary.of(read_classes_file(workdir / REPOSITORIES[protocol][0] / "configs" /
                                                 Path(model_cfg["name_path"]).name), warn=False)
    results = []
    for image in images:
        probabilities = segmenter.probabilities(image, vocabulary)
        labels = segmenter.labels(probabilities.clone())
        results.append({"labels": labels.numpy(), "probabilities": probabilities.numpy()})
    return results


# --- the comparison ----------------------------------------------------------------------------------------------

#: The CLIP compared: OpenAI's ViT-B/16 image tower (QuickGELU) with a 2-block, 128-wide text tower, which the
#: repositories' build_model reads from the weights as it reads OpenAI's; the text tower is small only so that
#: encoding 80 templates per name on a CPU takes seconds, not many minutes.
ARCHITECTURE = "ViT-B-16-quickgelu-text128"
_ARCHITECTURE_CONFIG = {"embed_dim": 512, "quick_gelu": True,
                        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
                        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2}}


def register_architecture(folder: Path) -> None:
    """Make :data:`ARCHITECTURE` an open_clip model name in this process."""
    import open_clip

    (folder / f"{ARCHITECTURE}.json").write_text(json.dumps(_ARCHITECTURE_CONFIG))
    open_clip.add_model_config(folder)


def random_weights(path: Path, peak: float, seed: int) -> None:
    """Random weights of :data:`ARCHITECTURE` (OpenAI's layout) whose attention is peaked: queries and keys scaled."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(ARCHITECTURE, pretrained=None)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            width = block.attn.in_proj_weight.shape[1]
            block.attn.in_proj_weight[: 2 * width] *= peak
    # The repositories' clip.load builds the model in fp16 (convert_weights) and casts it back to fp32 on the CPU:
    # weights that fp16 holds exactly are what both sides then run.
    torch.save({key: value.half().float() if value.is_floating_point() else value
                for key, value in model.state_dict().items()}, path)


def test_images(seed: int) -> dict[str, np.ndarray]:
    """Three smooth random images: VOC-sized, one narrower than a window once resized (600x60 -> 2048x205 at
    (2048, 336)), one Cityscapes-sized."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"voc-500x375": (375, 500), "narrow-600x60": (60, 600), "cityscapes-2048x1024": (1024, 2048)}
    images = {}
    for name, (height, width) in shapes.items():
        coarse = torch.rand(1, 3, max(height // 48, 2), max(width // 48, 2), generator=generator)
        smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        noise = 0.05 * torch.rand(1, 3, height, width, generator=generator)
        images[name] = (smooth + noise).clamp(0, 1).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
    return images


def summary(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table: per repository, benchmark and mode, the worst agreement over images and PAMR."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["protocol"], row["benchmark"], row.get("vit_mode", "")), []).append(row)
    lines = ["| repository | benchmark | images x PAMR | labels agree (lowest) | probabilities (largest diff) | "
             "their code failed |", "|---|---|---|---:|---:|---|"]
    for (protocol, benchmark, mode), group in groups.items():
        ran = [row for row in group if "labels_agree" in row]
        failed = sorted({f"{row['image']}: {row['repository_failed'].split(':')[0]}" for row in group
                         if "repository_failed" in row})
        name = f"{protocol} ({mode})" if mode else protocol
        agree = f"{100 * min(row['labels_agree'] for row in ran):.3f} %" if ran else "-"
        diff = f"{max(row['max_probability_diff'] for row in ran):.1e}" if ran else "-"
        runs = f"{len({row['image'] for row in group})} x {sorted({row['pamr_steps'] for row in group})}"
        lines.append(f"| {name} | {benchmark} | {runs} | {agree} | {diff} | {'; '.join(failed) or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", nargs="+", default=list(REPOSITORIES))
    parser.add_argument("--benchmarks", nargs="+", default=["voc21", "coco-object", "cityscapes"])
    parser.add_argument("--images", nargs="+", default=None,
                        help="image names of test_images (default: the Cityscapes frame for cityscapes, the others "
                             "for the other benchmarks)")
    parser.add_argument("--pamr", nargs="+", type=int, default=[0, 10], help="PAMR steps to try (each a run)")
    parser.add_argument("--peak", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--append", action="store_true", help="keep the rows already in --out (another run's) but those of the protocols and benchmarks rerun")
    parser.add_argument("--summary", action="store_true", help="print --out's rows as a markdown table and stop")
    args = parser.parse_args()
    if args.summary:
        print(summary(json.loads(args.out.read_text())["rows"]))
        return
    earlier = json.loads(args.out.read_text()) if args.append and args.out.exists() else {}
    stand_ins()
    torch.set_grad_enabled(False)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        weights = workdir / "vit-b-16-peaked.pt"
        register_architecture(workdir)
        random_weights(weights, args.peak, args.seed)
        images = test_images(args.seed)
        for protocol in args.protocols:
            for benchmark in args.benchmarks:
                names = args.images or [name for name in images if name.startswith("cityscapes") == (
                    benchmark == "cityscapes")]
                runs = [(steps, None) for steps in args.pamr]
                if protocol == "clearclip":  # no PAMR in ClearCLIP's segmentor; its released mode and its paper's
                    runs = [(0, mode) for mode in CLEARCLIP_MODEL_TYPES]
                for steps, mode in runs:
                    start = time.perf_counter()
                    chosen = [images[n] for n in names]
                    theirs = run_repository(protocol, benchmark, weights, chosen, workdir, steps, mode)
                    ours = run_mvpseg(protocol, benchmark, weights, chosen, workdir, steps, mode)
                    for name, their, our in zip(names, theirs, ours):
                        row = {"protocol": protocol, "benchmark": benchmark, "pamr_steps": steps, "image": name,
                               "resized": their["resized"]}
                        if "error" in their:
                            row["repository_failed"] = their["error"]
                        else:
                            row["labels_agree"] = float((their["labels"] == our["labels"]).mean())
                            row["max_probability_diff"] = float(np.abs(their["probabilities"] - our["probabilities"]).max())
                        if mode is not None:
                            row["vit_mode"] = mode
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        _write(args.out, earlier, rows, args)  # after every row: a long study never loses its rows
                    print(f"  {protocol} {benchmark} pamr {steps} {mode or ''}: {time.perf_counter() - start:.0f} s",
                          flush=True)


def _write(out: Path, earlier: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import platform

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cpuinfo import cpu_summary  # type: ignore[import-not-found]

    commands = [*earlier.get("commands", []), " ".join(sys.argv)]
    rerun = {(row["protocol"], row["benchmark"]) for row in rows}  # an earlier run's rows of these are replaced
    kept = [row for row in earlier.get("rows", []) if (row["protocol"], row["benchmark"]) not in rerun]
    out.write_text(json.dumps({"commands": commands, "cpu": cpu_summary(), "python": platform.python_version(),
                               "torch": torch.__version__, "peak": args.peak, "seed": args.seed,
                               "rows": [*kept, *rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
