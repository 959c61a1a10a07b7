"""What the web page does, without a browser or gradio: mvpseg.web.PageModel and the examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mvpseg
from mvpseg.web import NOT_AN_IMAGE, PageInputError, PageModel, write_examples


@pytest.fixture()
def model(tiny_vit: mvpseg.ClipBundle) -> PageModel:
    net = mvpseg.build_mvpseg(tiny_vit, mvpseg.MVPSegConfig(num_prompts=2, num_context=4),
                              generator=torch.Generator().manual_seed(0))
    return PageModel(mvpseg.Segmenter(net, mvpseg.InferenceConfig(short_side=None, mode="whole"), device="cpu"))


def _image(height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_the_page_gives_what_the_segmenter_gives(model: PageModel) -> None:
    result = model.segment(_image(), "tv monitor|television, cat, grass", background="background|sky")
    expected = model.segmenter.predict(_image(), [("tv monitor", "television"), "cat", "grass"],
                                       background=("background", "sky"))
    np.testing.assert_array_equal(np.asarray(result.labels), expected.labels)
    assert result.class_names == expected.class_names == ["background", "tv monitor", "cat", "grass"]
    assert result.shares == pytest.approx(expected.class_shares())
    assert list(result.presence) == result.class_names
    assert result.overlay.width > 64 and result.size == (48, 64)
    maps = result.prompt_maps
    assert maps.maps.shape[:2] == (3, 4) and maps.titles == ["global", "prompt 1", "prompt 2"]
    assert maps.largest == result.class_names[int(np.bincount(expected.labels.ravel()).argmax())]
    assert maps.picture().size == (160 * 4, 160 + 18) and maps.picture("cat").size == (160 * 4, 160 + 18)
    lines = model.segment(_image(), "tv monitor, television\ncat\n# a comment\ngrass", background="background|sky")
    np.testing.assert_array_equal(np.asarray(lines.labels), expected.labels)  # SCLIP's file format, pasted
    cut = model.segment(_image(), "cat, grass", background="background", threshold=1.0)
    assert (np.asarray(cut.labels) == 0).all()


def test_the_page_segments_under_the_protocol_it_was_started_with(tiny_vit: mvpseg.ClipBundle) -> None:
    # `mvpseg serve --protocol sclip:voc21`: the page scores every pixel as SCLIP does (windows stitched on the
    # pixels, softmax over every name, prob_thd), not with mvpseg's cells; before, it took the cells' path.
    from mvpseg.protocols import get_protocol

    config = get_protocol("sclip:voc21").inference_config(short_side=64, crop_size=32, stride=16, resize_filter="bilinear")
    assert config.scores_at_pixels
    segmenter = mvpseg.Segmenter(mvpseg.build_mvpseg(tiny_vit, None, vit_mode="csa"), config, device="cpu")
    page = PageModel(segmenter)
    result = page.segment(_image(), "tv monitor|television, cat, grass", background="sky|wall")
    expected = segmenter.predict(_image(), [("tv monitor", "television"), "cat", "grass"], background=("sky", "wall"))
    np.testing.assert_array_equal(np.asarray(result.labels), expected.labels)
    cells = mvpseg.Segmenter(segmenter.model, mvpseg.InferenceConfig(short_side=64, crop_size=32, stride=16),
                             device="cpu").predict(_image(), [("tv monitor", "television"), "cat", "grass"],
                                                   background=("sky", "wall"))
    assert (cells.labels != expected.labels).any()  # the two paths differ here: the check can fail
    assert result.presence is None and result.prompt_maps.titles == ["probability"]
    assert result.prompt_maps.maps.shape == (1, 4, 48, 64) and result.prompt_maps.picture("cat").size[0] > 0


@pytest.mark.parametrize("classes, background, threshold, message", [
    ("", "", 0.0, "at least one class"),
    ("cat, , dog", "", 0.0, "empty"),
    ("cat, dog, cat", "", 0.0, "Duplicate class names: cat"),
    ("cat", "cat", 0.0, "Duplicate class names: cat"),
    ("cat, dog", "sky, ground", 0.0, "one class"),
    ("cat, dog", "", 0.3, "needs a background class"),
])
def test_bad_text_gets_one_message(model: PageModel, classes: str, background: str, threshold: float,
                                   message: str) -> None:
    with pytest.raises(PageInputError, match=message):
        model.segment(_image(), classes, background, threshold)


def test_the_page_python_and_the_command_line_say_the_same_threshold_rule(model: PageModel) -> None:
    """One rule (vocabulary.background_threshold_problem): the same sentence on the page and in Python."""
    from mvpseg.vocabulary import background_threshold_problem

    for background, threshold in (("", 0.3), ("background", 1.5)):
        problem = background_threshold_problem(threshold, background)
        assert problem
        with pytest.raises(PageInputError) as page_error:
            model.segment(_image(), "cat, dog", background, threshold)
        assert str(page_error.value).lower().rstrip(".") == problem.lower()
        with pytest.raises(ValueError) as python_error:
            model.segmenter.predict(_image(), ["cat", "dog"], background=background or None,
                                    background_threshold=threshold)
        assert str(python_error.value) == problem
    assert background_threshold_problem(None, None) is None and background_threshold_problem(0.0, "bg") is None


def test_a_file_that_is_not_an_image(model: PageModel, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(PageInputError) as error:
        model.segment(broken, "cat, dog")
    assert str(error.value) == NOT_AN_IMAGE and str(tmp_path) not in str(error.value)  # no server path shown


def test_examples_are_world_scenes_with_an_unseen_class(tmp_path: Path) -> None:
    from PIL import Image

    paths = write_examples(tmp_path, count=3)
    assert len(paths) == 3 and all(Image.open(path).size == (128, 128) for path in paths)
    assert write_examples(tmp_path / "again", count=3)[0].name == paths[0].name  # deterministic


def test_serve_says_what_is_missing_and_refuses_a_taken_port_at_once(monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    import importlib.machinery
    import socket
    import sys
    import types

    from mvpseg.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # the web extra not installed
    assert main(["serve"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and 'pip install "mvpseg[web]"' in error
    installed = types.ModuleType("gradio")  # installed (never imported before the checks below refuse)
    installed.__spec__ = importlib.machinery.ModuleSpec("gradio", None)
    monkeypatch.setitem(sys.modules, "gradio", installed)
    missing = ["--prompts", str(tmp_path / "missing.safetensors")]  # loading the model first would fail on this
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1]), *missing]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "choose another --port" in error
    assert main(["serve", "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err


def test_serve_defaults_to_the_shipped_tiny_clip_and_world_prompts() -> None:
    from mvpseg.cli import build_parser
    from mvpseg.cli.serve import load_segmenter
    from mvpseg.world.patterns import CLASS_NAMES, generate_scene, scene_rng

    segmenter = load_segmenter(build_parser().parse_args(["serve", "--device", "cpu"]))
    assert segmenter.clip.name == "mvpseg-tiny" and segmenter.model.prompts is not None
    assert (segmenter.config.short_side, segmenter.config.mode) == (128, "whole")
    accuracy = [(segmenter.predict(scene.image, list(CLASS_NAMES)).labels == scene.label).mean()
                for scene in (generate_scene(scene_rng(7, 1, index)) for index in range(4))]
    assert np.mean(accuracy) > 0.6  # the world prompts segment unseen scenes of their world


def test_the_share_panel_lists_only_classes_with_pixels(model: PageModel, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from PIL import Image

    from mvpseg.web import build_page

    page = build_page(model, workdir=tmp_path / "work")
    run = next(block.fn for block in page.fns.values() if block.name == "run")
    photo = tmp_path / "photo.png"
    Image.fromarray(_image()).save(photo)
    # A threshold of 1 sends every pixel to the background: the three classes have none.
    outputs = run({"path": str(photo), "orig_name": "photo.png"}, "cat, dog, grass", "background", 1.0)
    assert outputs[2] == {"background": 1.0}
    outputs = run({"path": str(photo), "orig_name": "photo.png"}, "cat, dog, grass", "", 0.0)
    result = model.segment(photo, "cat, dog, grass")
    assert outputs[2] == {name: share for name, share in result.shares.items() if share > 0}


def test_the_page_and_segment_agree_on_the_default_model(tmp_path: Path) -> None:
    """The page's default model (the shipped world prompts) and ``mvpseg segment --prompts`` those prompts
    segment at the scale the prompts were made for, so they give the same labels."""
    from PIL import Image

    from mvpseg.cli import build_parser, main
    from mvpseg.cli.serve import load_segmenter
    from mvpseg.world.patterns import CLASS_NAMES, generate_scene, scene_rng
    from mvpseg.world.prompts_asset import WORLD_PROMPTS

    photo = tmp_path / "scene.png"
    Image.fromarray(generate_scene(scene_rng(3, 1, 0)).image).resize((160, 144)).save(photo)
    classes = ", ".join(CLASS_NAMES)
    page = PageModel(load_segmenter(build_parser().parse_args(["serve", "--device", "cpu"]))).segment(photo, classes)
    assert main(["segment", str(photo), "--prompts", str(WORLD_PROMPTS), "--classes", classes, "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "scene.png")), np.asarray(page.labels))
    # A flag still overrides the checkpoint's settings.
    assert main(["segment", str(photo), "--prompts", str(WORLD_PROMPTS), "--classes", classes, "--out",
                 str(tmp_path / "slide"), "--device", "cpu", "--quiet", "--short-side", "512", "--mode", "slide"]) == 0
    assert (np.asarray(Image.open(tmp_path / "slide" / "scene.png")) != np.asarray(page.labels)).any()


def test_gradio_rewrites_a_pil_answer_in_place_so_the_page_hands_it_files(model: PageModel, tmp_path: Path) -> None:
    """Why the page writes its pictures itself: gradio writes a PIL answer to a file named by its content,
    in place (same inode), so an identical answer rewrites a file another client may be downloading."""
    pytest.importorskip("gradio")
    from gradio.processing_utils import save_pil_to_cache
    from PIL import Image

    from mvpseg.web import build_page

    picture = Image.fromarray(_image())
    first = Path(save_pil_to_cache(picture, str(tmp_path / "cache"), format="png"))
    inode = first.stat().st_ino
    assert Path(save_pil_to_cache(picture, str(tmp_path / "cache"), format="png")) == first
    assert first.stat().st_ino == inode  # rewritten in place: a reader can meet it truncated
    page = build_page(model, workdir=tmp_path / "work")
    run = next(block.fn for block in page.fns.values() if block.name == "run")
    photo = tmp_path / "photo.png"
    picture.save(photo)
    answers = [run({"path": str(photo), "orig_name": "photo.png"}, "cat, dog", "", 0.0) for _ in range(2)]
    for index in (0, 5, 6):  # overlay, prompt maps, labels: files of the page's own, one per answer
        paths = [Path(answer[index]) for answer in answers]
        assert all(isinstance(answer[index], str) for answer in answers) and paths[0] != paths[1]
        assert paths[0].read_bytes() == paths[1].read_bytes()
        Image.open(paths[0]).load()


def test_the_start_line_says_who_can_use_the_page() -> None:
    from mvpseg.web import exposure

    assert exposure("127.0.0.1", auth=False) == "this machine only"
    assert exposure("localhost", auth=True) == "this machine only (password required)"
    assert "ANYONE who can reach this machine" in exposure("0.0.0.0", auth=False)
    assert "has a password" in exposure("0.0.0.0", auth=True)


@pytest.mark.parametrize("argv, message", [
    (["--auth", "ann"], "--auth: write USER:PASSWORD"),
    (["--auth", "ann:"], "--auth: write USER:PASSWORD"),
    (["--auth-file", "missing.txt"], "--auth-file missing.txt: cannot read it"),
])
def test_bad_passwords_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    import socket

    from mvpseg.cli import main

    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:  # were the entry accepted, the taken port would stop serve (no hang)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", *argv, "--port", str(taken.getsockname()[1])]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message in error


def test_concurrent_clients_all_get_the_right_answer_behind_a_password(model: PageModel, tmp_path: Path) -> None:
    """Clients at once over loopback: each request waits its turn and gets the segmentation PageModel gives;
    without the password nothing is answered."""
    pytest.importorskip("gradio")
    import socket
    import threading

    from gradio_client import Client, handle_file
    from PIL import Image

    from mvpseg.cli import build_parser
    from mvpseg.cli.serve import read_auth
    from mvpseg.web import build_page, launch

    (tmp_path / "auth.txt").write_text("ann:s3cret\n")
    auth = read_auth(build_parser().parse_args(["serve", "--auth-file", str(tmp_path / "auth.txt")]))
    assert auth == [("ann", "s3cret")]
    photo = tmp_path / "photo.png"
    Image.fromarray(_image()).save(photo)
    expected = np.asarray(model.segment(photo, "cat, dog, grass").labels)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    page = build_page(model, workdir=tmp_path / "work")
    launch(page, port=port, auth=auth)
    url = f"http://127.0.0.1:{port}/"
    try:
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError, match="401"):  # the API refuses a request without login
            urllib.request.urlopen(url + "gradio_api/info", timeout=30)
        results: list[bool] = []

        def client(index: int) -> None:
            session = Client(url, auth=("ann", "s3cret"), verbose=False, download_files=str(tmp_path / f"c{index}"))
            for _ in range(2):
                answer = session.predict(handle_file(str(photo)), "cat, dog, grass", "", 0.0, api_name="/run")
                results.append(np.array_equal(np.asarray(Image.open(answer[6])), expected))

        threads = [threading.Thread(target=client, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert results == [True] * 8
    finally:
        page.close()
