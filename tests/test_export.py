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
    assert metadata["kind"] == "prompts" and metadata["classes"] is None and metadata["stride"] == 32
    onnx_seg = mvpseg.Segmenter.from_onnx(path, config=world.config)  # its text side from the recorded checkpoint
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
    assert onnx_seg.stride == student.stride
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
    assert_parity(torch_seg, mvpseg.Segmenter.from_onnx(open_file, student=checkpoint, config=config),
                  image(80, 100, seed=3), NAMES)
    baked = export_onnx(torch_seg.model, tmp_path / "baked.onnx", crop_size=64, classes=NAMES[:3], dynamo=False)
    baked_seg = mvpseg.Segmenter.from_onnx(baked, config=config)
    assert baked_seg.model.text_model is None  # no CLIP, no checkpoint: the embeddings are in the file
    assert_parity(torch_seg, baked_seg, image(80, 100, seed=4), NAMES[:3])
    with pytest.raises(ValueError, match="exported for the classes stripes, grass, sky"):
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
