"""load_clip: random weights, local files of every kind, and the offline error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import mvpseg
from mvpseg.clip import ClipWeightsUnavailable, load_clip


def test_random_weights_frozen_and_eval(tiny_rn: mvpseg.ClipBundle) -> None:
    assert not tiny_rn.model.training
    assert not any(p.requires_grad for p in tiny_rn.model.parameters())
    assert tiny_rn.image_size == 64 and len(tiny_rn.mean) == 3
    assert tiny_rn.tokenizer(["a cat"]).shape == (1, 77)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".bin"])
def test_local_state_dict_files(tiny_rn: mvpseg.ClipBundle, tmp_path: Path, suffix: str) -> None:
    state = {k: v.clone() for k, v in tiny_rn.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.manual_seed(123)  # a different random init, which the file must overwrite
    loaded = load_clip("test-tiny-rn", pretrained=path)
    for key, value in state.items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)


def test_openai_torchscript_archive(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> None:
    class Holder(torch.nn.Module):
        """A TorchScript module with OpenAI's key names, like their released .pt archives."""

        def __init__(self, state: dict[str, torch.Tensor]) -> None:
            super().__init__()
            for key, value in state.items():
                module: torch.nn.Module = self
                *parents, leaf = key.split(".")
                for part in parents:
                    if not hasattr(module, part):
                        module.add_module(part, torch.nn.Module())
                    module = getattr(module, part)
                module.register_buffer(leaf, value.half() if value.is_floating_point() else value)  # OpenAI ships fp16

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    state = {k: v.clone() for k, v in tiny_rn.model.state_dict().items()}
    holder = Holder(state)
    path = tmp_path / "RN-tiny.pt"
    torch.jit.save(torch.jit.script(holder), str(path))
    loaded = load_clip("test-tiny-rn", pretrained=path)
    for key, value in state.items():
        expected = value.half().float() if value.is_floating_point() else value
        torch.testing.assert_close(loaded.model.state_dict()[key], expected)


def test_wrong_inputs_get_clear_errors(tiny_rn: mvpseg.ClipBundle, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown CLIP architecture 'RN5O'"):
        load_clip("RN5O")
    with pytest.raises(ValueError, match="neither a known open_clip tag"):
        load_clip("RN50", pretrained="not-a-tag")
    with pytest.raises(ClipWeightsUnavailable, match="not found"):
        load_clip("test-tiny-rn", pretrained=tmp_path / "missing.pt")
    other = tmp_path / "vit.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(3)}, other)
    with pytest.raises(ClipWeightsUnavailable, match="does not hold weights of the CLIP architecture"):
        load_clip("test-tiny-rn", pretrained=other)


def test_offline_tag_names_the_file_and_the_way_to_pass_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def no_network(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': no network")

    monkeypatch.setattr(open_clip, "create_model", no_network)
    with pytest.raises(ClipWeightsUnavailable) as info:
        load_clip("RN50", pretrained="openai")
    message = str(info.value)
    assert "RN50.pt" in message and "--clip-weights PATH" in message and "MVPSEG_CLIP_CACHE" in message


def _no_network(*args, **kwargs):
    raise RuntimeError("Failed to download weights for tag 'openai': no network")


@pytest.mark.parametrize("level", [logging.INFO, logging.CRITICAL])
def test_load_clip_keeps_the_callers_logging_disable_level(level: int, monkeypatch: pytest.MonkeyPatch,
                                                           tiny_configs: Path) -> None:
    import open_clip

    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        load_clip("test-tiny-rn", pretrained=None)  # random weights: open_clip's warning is silenced
        assert logging.root.manager.disable == level
        monkeypatch.setattr(open_clip, "create_model", _no_network)
        with pytest.raises(ClipWeightsUnavailable):
            load_clip("RN50", pretrained="openai")  # a tag: the download's logging is silenced
        assert logging.root.manager.disable == level
    finally:
        logging.disable(previous)
