"""Prompt checkpoints: round trip, compatibility checks, atomic writes, no pickle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mvpseg
from mvpseg.build import load_mvpseg
from mvpseg.checkpoint import CheckpointError, read_prompt_checkpoint, save_prompt_checkpoint


def _trained(clip: mvpseg.ClipBundle) -> mvpseg.MVPSeg:
    config = mvpseg.MVPSegConfig(num_prompts=2, num_context=3, gpr_gamma=5.0)
    model = mvpseg.build_mvpseg(clip, config, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.head.log_tau1.fill_(1.5)
        model.head.gpr_offset.fill_(0.2)
    return model


def test_round_trip_gives_the_same_model(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> None:
    model = _trained(tiny_rn)
    path = save_prompt_checkpoint(tmp_path / "prompts.safetensors", model, extra={"dataset": "voc"})
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.safetensors"]  # no temp file left behind
    tensors, metadata = read_prompt_checkpoint(path)
    assert set(tensors) == {"prompts.contexts", "head.log_tau1", "head.log_tau2", "head.gpr_offset"}
    assert metadata["config"]["num_prompts"] == 2 and metadata["config"]["gpr_gamma"] == 5.0
    assert metadata["extra"] == {"dataset": "voc"} and metadata["mvpseg_version"] == mvpseg.__version__
    loaded = load_mvpseg(path, tiny_rn)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images, ["a", "b"]).final_logits(), model(images, ["a", "b"]).final_logits())


def test_changes_on_load_are_built_in_and_recorded(tiny_vit: mvpseg.ClipBundle, tmp_path: Path) -> None:
    """load_mvpseg(changes=...): the config says what the model does (GPR off, another mode), and so the record."""
    from mvpseg.outputs import run_record

    path = save_prompt_checkpoint(tmp_path / "prompts.safetensors", _trained(tiny_vit))
    plain = load_mvpseg(path, tiny_vit)
    changed = load_mvpseg(path, tiny_vit, {"use_gpr": False, "vit_mode": "naclip"})
    assert plain.head.use_gpr and plain.config.vit_mode == "maskclip"
    assert not changed.head.use_gpr and changed.config.use_gpr is False and changed.config.vit_mode == "naclip"
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        output = changed(images, ["a", "b"])
        assert output.presence is None  # GPR off: no presence scores
        assert not torch.allclose(output.final_logits(), plain(images, ["a", "b"]).final_logits())
    records = [run_record(mvpseg.Segmenter(model, device="cpu"), ["a", "b"])["model"] for model in (plain, changed)]
    assert records[0]["weights"] == records[1]["weights"] and records[0]["config"] != records[1]["config"]
    with pytest.raises(ValueError, match="vit_mode must be one of"):
        load_mvpseg(path, tiny_vit, {"vit_mode": "nope"})


def test_checkpoint_for_another_clip_is_refused(tiny_rn: mvpseg.ClipBundle, tiny_vit: mvpseg.ClipBundle,
                                                tmp_path: Path) -> None:
    path = save_prompt_checkpoint(tmp_path / "p.safetensors", _trained(tiny_rn))
    with pytest.raises(CheckpointError, match="learned on CLIP 'test-tiny-rn'.*'test-tiny-vit'"):
        load_mvpseg(path, tiny_vit)


def test_wrong_files_get_one_clear_sentence(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_mvpseg(tmp_path / "missing.safetensors", tiny_rn)
    pickle = tmp_path / "model.pt"
    torch.save({"contexts": torch.zeros(2)}, pickle)
    with pytest.raises(CheckpointError, match="not an mvpseg prompt checkpoint"):
        load_mvpseg(pickle, tiny_rn)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match="without mvpseg metadata"):
        load_mvpseg(bare, tiny_rn)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    from mvpseg.files import atomic_write

    def explode(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.safetensors", explode)
    assert list(tmp_path.iterdir()) == []


def test_format_v1_files_still_load(tiny_rn: mvpseg.ClipBundle, tiny_vit: mvpseg.ClipBundle, tmp_path: Path) -> None:
    import json

    model = _trained(tiny_rn)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    config = {**model.config.to_dict(), "clip_name": "test-tiny-rn", "num_context": 3}  # v1 kept the name here
    metadata = {"format": "mvpseg-prompts", "format_version": 1, "mvpseg_version": "0.1.0", "config": config,
                "clip": {"token_width": 32, "embed_dim": 32}, "extra": {}}
    path = tmp_path / "v1.safetensors"
    save_file(tensors, path, metadata={"mvpseg": json.dumps(metadata)})
    assert read_prompt_checkpoint(path)[1]["clip"]["name"] == "test-tiny-rn"
    loaded = load_mvpseg(path, tiny_rn)
    torch.testing.assert_close(loaded.prompts.contexts, model.prompts.contexts)
    with pytest.raises(CheckpointError, match="learned on CLIP 'test-tiny-rn'"):
        load_mvpseg(path, tiny_vit)
    metadata["format_version"] = 99
    save_file(tensors, path, metadata={"mvpseg": json.dumps(metadata)})
    with pytest.raises(CheckpointError, match="upgrade mvpseg"):
        load_mvpseg(path, tiny_rn)


def test_the_header_alone_can_be_read(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> None:
    path = save_prompt_checkpoint(tmp_path / "p.safetensors", _trained(tiny_rn))
    tensors, metadata = read_prompt_checkpoint(path, with_tensors=False)
    assert tensors == {} and metadata == read_prompt_checkpoint(path)[1]
    other = tmp_path / "model.pt"
    other.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not an mvpseg prompt checkpoint"):
        read_prompt_checkpoint(other, with_tensors=False)


def _rewritten(path: Path, out: Path, drop: str | None = None, add: str | None = None) -> Path:
    """A copy of a prompt checkpoint with one tensor left out or one unknown tensor added (same header)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys() if name != drop}
    if add:
        tensors[add] = torch.zeros(2)
    save_file(tensors, out, metadata=header)
    assert json.loads(header["mvpseg"])["format"] == "mvpseg-prompts"
    return out


@pytest.mark.parametrize("drop", ["head.gpr_offset", "prompts.contexts"])
def test_a_checkpoint_missing_a_tensor_is_refused(tiny_rn: mvpseg.ClipBundle, tmp_path: Path, drop: str) -> None:
    path = save_prompt_checkpoint(tmp_path / "p.safetensors", _trained(tiny_rn))
    broken = _rewritten(path, tmp_path / "broken.safetensors", drop=drop)
    with pytest.raises(CheckpointError, match=f"does not match the model its config describes \\(missing: {drop}"):
        load_mvpseg(broken, tiny_rn)  # never a model with a random tensor in it
    extra = _rewritten(path, tmp_path / "extra.safetensors", add="head.unknown")
    with pytest.raises(CheckpointError, match="unexpected: head.unknown"):
        load_mvpseg(extra, tiny_rn)


def test_a_checkpoint_carries_the_inference_settings_it_was_made_for(tiny_rn: mvpseg.ClipBundle,
                                                                    tmp_path: Path) -> None:
    from mvpseg.checkpoint import set_inference_settings

    model = _trained(tiny_rn)
    path = save_prompt_checkpoint(tmp_path / "p.safetensors", model,
                                  inference={"short_side": 96, "mode": "whole", "batch_size": 2})
    assert read_prompt_checkpoint(path, with_tensors=False)[1]["inference"] == {"short_side": 96, "mode": "whole"}
    loaded = load_mvpseg(path, tiny_rn)
    segmenter = mvpseg.Segmenter(loaded, device="cpu")  # Python's default: the checkpoint's settings
    assert (segmenter.config.short_side, segmenter.config.mode, segmenter.config.crop_size) == (96, "whole", 512)
    assert mvpseg.Segmenter(loaded, mvpseg.InferenceConfig(), device="cpu").config.short_side == 512  # explicit wins
    # A file without them: InferenceConfig's defaults; set_inference_settings adds them, tensors untouched.
    plain = save_prompt_checkpoint(tmp_path / "plain.safetensors", model)
    assert mvpseg.Segmenter(load_mvpseg(plain, tiny_rn), device="cpu").config.short_side == 512
    before = read_prompt_checkpoint(plain)[0]
    set_inference_settings(plain, {"long_side": 80, "mode": "whole"})
    tensors, metadata = read_prompt_checkpoint(plain)
    assert metadata["inference"] == {"long_side": 80, "mode": "whole"}
    assert all(torch.equal(tensors[name], before[name]) for name in before) and set(tensors) == set(before)


def test_the_shipped_world_prompts_carry_the_worlds_scale() -> None:
    from mvpseg.config import DemoConfig
    from mvpseg.world.prompts_asset import WORLD_PROMPTS

    metadata = read_prompt_checkpoint(WORLD_PROMPTS, with_tensors=False)[1]
    assert metadata["inference"] == {"short_side": DemoConfig().short_side, "mode": "whole"}
