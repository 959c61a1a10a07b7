"""The hybrid ViT's convolutional stem: built by name, started from a ResNet CLIP's stages, frozen, loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mvpseg
from mvpseg.stems import STEMS, ResNetStem, ResNetStemConfig, attach_stem
from mvpseg.world.pretrain import PretrainConfig, build_tiny_clip, pretrain

ASSETS = Path(mvpseg.__file__).parent / "world" / "assets"
HYBRID = "mvpseg-tiny-parts-hvit"


def test_the_stem_ends_on_the_patch_grid_and_its_stride_must_be_the_towers_patch(tiny_vit) -> None:
    for layers, stride in (((1, 1, 1), 16), ((1, 1), 8), ((1,), 4)):
        stem = ResNetStem(ResNetStemConfig(width=16, layers=layers), out_width=40)
        assert ResNetStemConfig(layers=layers).stride == stride
        assert stem(torch.zeros(2, 3, 256, 320)).shape == (2, 40, 256 // stride, 320 // stride)
    model = build_tiny_clip(HYBRID)
    visual = model.visual
    assert isinstance(visual.conv1, ResNetStem) and visual.patch_size == (16, 16)
    assert visual(torch.zeros(1, 3, 256, 256)).shape == (1, 128)
    with pytest.raises(ValueError, match="stride 16 but its tower's patch size is 8"):
        attach_stem(tiny_vit.model, HYBRID)
    plain = build_tiny_clip("mvpseg-tiny-parts-vit")
    assert attach_stem(plain, "mvpseg-tiny-parts-vit") is plain and isinstance(plain.visual.conv1, torch.nn.Conv2d)
    assert set(STEMS) == {HYBRID}


def test_pretraining_starts_the_stem_from_a_resnet_clip_and_can_keep_it(tmp_path: Path) -> None:
    """--init-towers text+stem copies the ResNet's stages; --freeze-stem keeps them and their BatchNorm statistics."""
    torch.manual_seed(0)
    resnet = build_tiny_clip(str(ASSETS / "mvpseg-tiny-parts.json"))
    source = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in resnet.state_dict().items()}, source)
    common = dict(model=str(ASSETS / f"{HYBRID}.json"), world="parts", image_size=256, steps=2, batch_size=4, pool=8,
                  warmup=1, lr=1e-2, log_every=1, progress=False, threads=1, init=str(source), init_towers="text+stem")
    frozen = load_file(str(pretrain(PretrainConfig(out=str(tmp_path / "frozen"), freeze_stem=True, **common))))
    trained = load_file(str(pretrain(PretrainConfig(out=str(tmp_path / "trained"), **common))))
    trunk = [k for k in frozen if k.startswith("visual.conv1.trunk.")]
    assert any("running_mean" in k for k in trunk) and any("layer3" in k for k in trunk)
    for key in trunk:  # the saved weights are fp16
        assert torch.equal(frozen[key], resnet.state_dict()["visual." + key[len("visual.conv1.trunk."):]].half()), key
    assert not torch.equal(trained["visual.conv1.trunk.conv1.weight"], frozen["visual.conv1.trunk.conv1.weight"])
    assert not torch.equal(trained["visual.conv1.trunk.bn1.running_mean"], frozen["visual.conv1.trunk.bn1.running_mean"])
    assert not torch.equal(frozen["visual.conv1.proj.weight"], trained["visual.conv1.proj.weight"])  # trained alike
    with pytest.raises(ValueError, match="needs a hybrid ViT"):
        pretrain(PretrainConfig(out=str(tmp_path / "plain"), **{**common, "model": "mvpseg-tiny-parts-vit",
                                                                "init_towers": "text"}, freeze_stem=True))
    vit_source = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in build_tiny_clip("mvpseg-tiny-parts-vit").state_dict().items()}, vit_source)
    with pytest.raises(ValueError, match="lacks visual.bn1.weight"):
        pretrain(PretrainConfig(out=str(tmp_path / "bad"), **{**common, "init": str(vit_source)}))


def test_load_clip_builds_the_stem_for_a_weights_file_and_refuses_another_architectures(tmp_path: Path) -> None:
    from mvpseg.clip import ClipWeightsUnavailable
    from mvpseg.dense import dense_features

    torch.manual_seed(3)
    model = build_tiny_clip(HYBRID)
    path = tmp_path / "hybrid.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    bundle = mvpseg.load_clip(HYBRID, pretrained=str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(bundle.model.state_dict()[key], value), key
    images = torch.randn(1, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    for mode in ("maskclip", "naclip", "scclip", "resclip"):
        features = dense_features(bundle.model, images, vit_mode=mode)
        assert features.shape == (1, 128, 16, 20) and torch.isfinite(features).all(), mode
    random = mvpseg.load_clip(HYBRID, pretrained=None)
    assert isinstance(random.model.visual.conv1, ResNetStem)
    with pytest.raises(ClipWeightsUnavailable, match="does not hold weights of the CLIP architecture"):
        mvpseg.load_clip(HYBRID, pretrained=str(ASSETS / "mvpseg-tiny-parts-vit.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not safetensors")
    with pytest.raises(ClipWeightsUnavailable, match="could not be read as CLIP weights"):
        mvpseg.load_clip(HYBRID, pretrained=str(broken))


def test_the_hybrid_exports_to_onnx_with_the_same_labels(tmp_path: Path) -> None:
    """The stem traces like any module: an image larger than a crop, through ONNX and PyTorch, in naclip's mode."""
    import numpy as np

    from mvpseg.export import OnnxSegmenter, export_onnx, read_onnx_metadata

    torch.manual_seed(0)
    clip = mvpseg.load_clip(HYBRID, pretrained=None)
    model = mvpseg.build_mvpseg(clip, None, vit_mode="naclip")
    config = mvpseg.InferenceConfig(short_side=None, crop_size=256, stride=128, precision="fp32")
    torch_seg = mvpseg.Segmenter(model, config=config, device="cpu")
    path = export_onnx(model, tmp_path / "hybrid.onnx", inference={"crop_size": 256, "stride": 128})
    assert read_onnx_metadata(path)["feature_stride"] == 16
    onnx_seg = OnnxSegmenter(path, model, config=config)
    image = np.random.default_rng(0).integers(0, 256, (300, 420, 3), dtype=np.uint8)
    names = ["owl", "turtle", "grass", "sky"]
    got = onnx_seg.predict(image, names, return_scores=True)
    expected = torch_seg.predict(image, names, return_scores=True)
    assert (got.labels == expected.labels).mean() >= 0.999
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-3, rtol=0)
