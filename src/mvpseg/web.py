"""The web page of ``mvpseg serve``: segment any photo with any words, in the browser, on this machine.

:class:`PageModel` does the work with no web framework (tests call it directly); :func:`build_page`
lays it out with gradio, imported there only (``pip install "mvpseg[web]"``); :func:`serve` runs it.

Local and private by default: the server listens on 127.0.0.1 only, gradio's analytics are off
whatever the environment says (``Blocks(analytics_enabled=False)``: no version check, no launch
report), the theme uses the system's fonts and the page loads nothing from another host, uploads are
capped in the browser and by the server, and an upload that is not an image gets one message while
the server keeps serving. The model is loaded once, before the page starts.

Under load: requests wait in one bounded queue and are segmented one at a time (one model); every
picture an answer shows is written by the page itself, atomically, under a name no other answer
uses, and handed to gradio as a file. (Handed a PIL image, gradio writes it to a file named by its
content, in place: two identical answers, e.g. two people pressing the same example, rewrote the
file while the first was being downloaded, and that download came out truncated.)
"""

from __future__ import annotations

import html
import ipaddress
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .files import atomic_write
from .image import ImageInput, ImageReadError, load_image
from .viz import colorize, overlay, prompt_map_grid
from .vocabulary import Vocabulary, background_threshold_problem, parse_class_lines, parse_classes

if TYPE_CHECKING:
    import gradio

    from .inference import Segmenter

__all__ = ["PageInputError", "PageModel", "PageResult", "PromptMaps", "build_page", "exposure", "launch", "serve",
           "write_examples"]

#: Fonts of the page's theme: the system's, so that no font is fetched from anywhere.
SYSTEM_SANS = ["ui-sans-serif", "system-ui", "DejaVu Sans", "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "DejaVu Sans Mono", "monospace"]
NOT_AN_IMAGE = "The uploaded file is not a readable image: upload a photo (PNG, JPEG, WebP, ...)."
_THUMBNAIL = 320  # longest side of the photo kept for redrawing the prompt maps
#: Requests waiting for the model at most; more are refused with gradio's "queue is full" message.
QUEUE_SIZE = 64
#: Answers whose files are kept on disk (gradio copies each into its cache when it sends the answer).
KEPT_ANSWERS = 256
#: Seconds a browser session's prompt maps are kept after its last use.
SESSION_SECONDS = 1800


class PageInputError(ValueError):
    """Something the user gave that cannot be segmented, worded for the page."""


@dataclass
class PromptMaps:
    """Each prompt's map of each class, and what drawing one class's maps needs.

    Attributes:
        maps: (P, C, h, w) on the feature grid.
        titles: P captions ("global", "prompt 1", ...; "templates" for the baseline).
        class_names: the C classes' display names.
        largest: the class with most pixels (drawn by default).
        thumbnail: the photo, at most :data:`_THUMBNAIL` pixels on a side.
    """

    maps: np.ndarray
    titles: list[str]
    class_names: list[str]
    largest: str
    thumbnail: np.ndarray

    def picture(self, class_name: str | None = None) -> Image.Image:
        """The photo and each prompt's map of one class side by side (default, or unknown: the largest class)."""
        name = class_name if class_name in self.class_names else self.largest
        return prompt_map_grid(self.thumbnail, self.maps[:, self.class_names.index(name)], self.titles)


@dataclass
class PageResult:
    """One segmentation, ready to show.

    Attributes:
        overlay: the photo with class colours and a legend of the classes found.
        labels: palette PNG of class indices (what ``mvpseg segment`` writes as STEM.png).
        class_names: the classes' display names (index = label value).
        shares: each class's share of the image's pixels.
        presence: GPR's class scores, or None when the model has no GPR (the templates).
        prompt_maps: each prompt's map of each class.
        size: (H, W) of the photo.
        seconds: time the segmentation took.
    """

    overlay: Image.Image
    labels: Image.Image
    class_names: list[str]
    shares: dict[str, float]
    presence: dict[str, float] | None
    prompt_maps: PromptMaps
    size: tuple[int, int]
    seconds: float


class PageModel:
    """What the page does, without the page: text in, pictures and numbers out.

    Args:
        segmenter: the loaded model (shared by every request).
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    @staticmethod
    def vocabulary(classes: str, background: str = "") -> Vocabulary:
        """The page's class text and background text as a vocabulary.

        The class text is one line as ``--classes`` reads it (``"cat, tv monitor|television"``), or lines
        as a class file holds them (one class per line, its synonyms after commas: SCLIP's files pasted).

        Raises:
            PageInputError: no classes, an empty or repeated class, or a background of several classes.
        """
        if not (classes or "").strip():
            raise PageInputError("Type at least one class name (classes separated by commas).")
        entries = parse_class_lines(classes.strip().strip(","))
        back = None
        if (background or "").strip():
            parsed = parse_classes(background.strip())
            if len(parsed) != 1:
                raise PageInputError("The background is one class: separate its names with | (not commas).")
            back = parsed[0]
        try:
            return Vocabulary.of(entries, back)
        except ValueError as error:
            raise PageInputError(f"{str(error)[:1].upper()}{str(error)[1:]}.") from error

    def segment(self, image: ImageInput, classes: str, background: str = "", threshold: float = 0.0) -> PageResult:
        """Segment a photo against the page's class text.

        Args:
            image: a path, PIL image or HWC array.
            classes: classes separated by commas, a class's synonyms by ``|``.
            background: an optional class for everything else (class 0).
            threshold: pixels whose best class score is below it become the background (0: off).

        Returns:
            The :class:`PageResult`.

        Raises:
            PageInputError: bad text, a threshold without a background, or a file that is not an image.
        """
        vocabulary = self.vocabulary(classes, background)
        threshold = float(threshold or 0.0)
        problem = background_threshold_problem(threshold or None, background)  # 0 on the page: no threshold
        if problem:
            raise PageInputError(problem[0].upper() + problem[1:] + ".")
        try:
            array = load_image(image)
        except ImageReadError as error:
            raise PageInputError(NOT_AN_IMAGE) from error
        start = time.perf_counter()
        # predict itself, so the page gives what ``mvpseg segment`` gives under the same settings (a protocol's too)
        back = vocabulary.classes[0] if (background or "").strip() else None  # the vocabulary holds it first
        prediction = self.segmenter.predict(array, Vocabulary(vocabulary.classes[1:]) if back else vocabulary,
                                            background=back, background_threshold=threshold or None, return_output=True,
                                            return_scores=self.segmenter.config.scores_at_pixels)
        label_array = prediction.labels
        seconds = time.perf_counter() - start
        names = vocabulary.display_names
        counts = np.bincount(label_array.ravel(), minlength=len(names))
        if prediction.output is not None:
            maps = prediction.output.prompt_maps[0].float().cpu().numpy()  # (P, C, h, w)
            titles = ["templates"] if maps.shape[0] == 1 else ["global"] + [f"prompt {i}" for i in range(1, maps.shape[0])]
        else:  # a protocol scoring pixels: its class probabilities, at most the thumbnail's size
            maps, titles = _shrunk(prediction.scores)[None], ["probability"]  # (C, H, W) -> (1, C, h, w)
        thumbnail = Image.fromarray(array)
        thumbnail.thumbnail((_THUMBNAIL, _THUMBNAIL))
        return PageResult(
            overlay=overlay(array, label_array, names),
            labels=colorize(label_array),
            class_names=names,
            shares={name: float(count) / label_array.size for name, count in zip(names, counts.tolist())},
            presence=None if prediction.presence is None else dict(zip(names, map(float, prediction.presence))),
            prompt_maps=PromptMaps(maps, titles, names, names[int(counts.argmax())], np.asarray(thumbnail)),
            size=(int(array.shape[0]), int(array.shape[1])),
            seconds=seconds,
        )


def _shrunk(scores: np.ndarray | None) -> np.ndarray:
    """(C, h, w) class scores (C, H, W) subsampled to at most :data:`_THUMBNAIL` pixels on a side (for drawing)."""
    assert scores is not None  # predict returns them when asked
    step = max(-(-max(scores.shape[1:]) // _THUMBNAIL), 1)
    return np.ascontiguousarray(scores[:, ::step, ::step])


def write_examples(folder: str | Path, count: int = 4, seed: int = 0) -> list[Path]:
    """Draw world scenes (validation stream) holding an unseen class, as example photos for the page.

    Args:
        folder: where the PNGs go (created).
        count: how many.
        seed: the world's seed.

    Returns:
        The files written.
    """
    from .world.patterns import CLASS_NAMES, UNSEEN_CLASSES, generate_scene, scene_rng

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unseen = [CLASS_NAMES.index(name) for name in UNSEEN_CLASSES]
    paths: list[Path] = []
    index = 0
    while len(paths) < count and index < 50 * max(count, 1):
        scene = generate_scene(scene_rng(seed, 1, index))
        if np.isin(scene.label, unseen).mean() >= 0.1:  # a tenth of the picture is a class never trained on
            path = folder / f"world-{index:03d}.png"
            Image.fromarray(scene.image).save(path)
            paths.append(path)
        index += 1
    return paths


def _safe_stem(name: str | None) -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(name or "photo").stem).strip("._")[:80]
    return stem or "photo"


class _AnswerFiles:
    """The files of the page's answers: each answer in a folder of its own, written atomically; only the
    last :data:`KEPT_ANSWERS` answers' folders are kept, so the disk use is bounded."""

    def __init__(self, root: Path, keep: int = KEPT_ANSWERS) -> None:
        self.root, self.keep = root, keep
        self.root.mkdir(parents=True, exist_ok=True)
        self.folders: deque[Path] = deque()
        self.lock = threading.Lock()

    def folder(self) -> Path:
        """A new folder for one answer (the oldest beyond ``keep`` are removed)."""
        folder = Path(tempfile.mkdtemp(dir=self.root))
        with self.lock:
            self.folders.append(folder)
            while len(self.folders) > self.keep:
                shutil.rmtree(self.folders.popleft(), ignore_errors=True)
        return folder

    @staticmethod
    def png(folder: Path, name: str, picture: Image.Image) -> str:
        """Write ``picture`` as ``folder/name`` atomically; returns the path as gradio takes it."""
        return str(atomic_write(folder / name, lambda tmp: picture.save(tmp, format="PNG")))


def build_page(model: PageModel, examples: Sequence[str | Path] = (), default_classes: str = "",
               workdir: str | Path | None = None) -> gradio.Blocks:
    """The page: photo, classes, background and threshold in; overlay, shares, GPR scores, prompt maps and
    the label PNG out.

    Args:
        model: what segments.
        examples: photos offered as examples.
        default_classes: the class text the page starts with.
        workdir: where label PNGs are written for download (default: a new temporary folder).

    Returns:
        The gradio Blocks (not launched).
    """
    import gradio as gr

    answers = _AnswerFiles(Path(workdir or tempfile.mkdtemp(prefix="mvpseg-web-")))

    def run(payload: Any, classes: str, background: str, threshold: float) -> tuple[Any, ...]:
        # preprocess=False: the photo arrives as the upload's file data, read here so that a file that is
        # not an image gets a clear message instead of a generic error.
        path = payload.get("path") if isinstance(payload, dict) else payload
        if not path:
            raise gr.Error("Upload a photo first (or pick an example).", print_exception=False)
        try:
            result = model.segment(path, classes, background, threshold)
        except PageInputError as error:
            raise gr.Error(html.escape(str(error)), print_exception=False) from None
        folder = answers.folder()
        stem = _safe_stem(payload.get("orig_name") if isinstance(payload, dict) else path)
        height, width = result.size
        status = (f"{width} x {height} pixels, {len(result.class_names)} classes, "
                  f"segmented in {result.seconds:.2f} s")
        maps = result.prompt_maps
        present = {name: share for name, share in result.shares.items() if share > 0}
        return (answers.png(folder, f"{stem}_overlay.png", result.overlay), status, present,
                gr.Label(value=result.presence, visible=result.presence is not None),
                gr.Dropdown(choices=result.class_names, value=maps.largest),
                answers.png(folder, f"{stem}_maps.png", maps.picture()),
                answers.png(folder, f"{stem}_labels.png", result.labels), maps)

    def redraw(maps: PromptMaps | None, class_name: str) -> str | None:
        if maps is None:
            return None
        return answers.png(answers.folder(), "maps.png", maps.picture(class_name))

    # delete_cache: gradio's copies of the answers, older than an hour, removed every 10 minutes.
    with gr.Blocks(title="mvpseg", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown("## mvpseg: segment any photo with any words\n"
                    "Upload or drop a photo, type class names (commas between classes, `|` between a class's "
                    "synonyms, e.g. `tv monitor|television, cat`; or one class per line, its synonyms after "
                    "commas) and press **Segment**. Everything runs on this machine.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Photo", type="filepath", sources=["upload", "clipboard"], height=320,
                                 elem_id="photo")
                classes = gr.Textbox(label="Classes", value=default_classes, lines=2, elem_id="classes")
                background = gr.Textbox(label="Background (optional)", placeholder="background", elem_id="background")
                threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Background threshold",
                                      info="pixels whose best class score is below it become the background",
                                      elem_id="threshold")
                button = gr.Button("Segment", variant="primary", elem_id="run")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[image], label="Scenes of the synthetic world")
            with gr.Column():
                shown = gr.Image(label="Segmentation", type="pil", format="png", interactive=False, height=320,
                                 buttons=["download", "fullscreen"], elem_id="overlay")
                status = gr.Markdown(elem_id="status")
                shares = gr.Label(label="Share of the image", elem_id="shares")
                presence = gr.Label(label="GPR class scores (is the class in the photo?)", num_top_classes=6,
                                    elem_id="presence")
                map_class = gr.Dropdown(label="Each prompt's map of", choices=[], interactive=True, elem_id="map-class")
                maps = gr.Image(label="Prompt maps", type="pil", format="png", interactive=False,
                                buttons=["download", "fullscreen"], elem_id="maps")
                labels = gr.File(label="Label PNG (pixel value = class index)", elem_id="labels")
        state = gr.State(time_to_live=SESSION_SECONDS)  # a session's prompt maps, dropped when idle
        button.click(run, inputs=[image, classes, background, threshold],
                     outputs=[shown, status, shares, presence, map_class, maps, labels, state], preprocess=False)
        map_class.input(redraw, inputs=[state, map_class], outputs=[maps])
    return page


def exposure(host: str, auth: bool) -> str:
    """Who can use a page served on ``host``, in words for the start line.

    Args:
        host: the address listened on.
        auth: whether a user name and password are required.
    """
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
        local = all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)
    except (OSError, ValueError):
        local = False
    if local:
        return "this machine only" + (" (password required)" if auth else "")
    if auth:
        return "open to the network: anyone who can reach this machine and has a password"
    return ("open to the network: ANYONE who can reach this machine can use it, with no password "
            "(--auth-file FILE requires one)")


def launch(page: gradio.Blocks, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 20.0,
           auth: Sequence[tuple[str, str]] = (), allowed_paths: Sequence[str | Path] = ()) -> None:
    """Start serving a built page in the background (``page.close()`` stops it), as ``mvpseg serve`` does.

    One model: one segmentation at a time; the other requests wait in a queue of :data:`QUEUE_SIZE`.
    """
    import gradio as gr

    page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    page.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True, quiet=True,
        max_file_size=int(max_upload_mb * 1024 * 1024), auth=list(auth) or None,
        theme=gr.themes.Default(font=SYSTEM_SANS, font_mono=SYSTEM_MONO),  # no web fonts
        ssr_mode=False, pwa=False, mcp_server=False, enable_monitoring=False,
        footer_links=[], show_error=False, allowed_paths=[str(path) for path in allowed_paths],
    )


def serve(segmenter: Segmenter, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 20.0,
          examples: int = 4, auth: Sequence[tuple[str, str]] = ()) -> None:
    """Serve the page until interrupted (Ctrl+C).

    Args:
        segmenter: the loaded model.
        host: the address to listen on; 127.0.0.1 keeps the page on this machine.
        port: the port.
        max_upload_mb: the largest upload, in MiB (refused in the browser, and by the server).
        examples: world scenes offered as examples.
        auth: (user, password) pairs; when given, the page asks for one of them.
    """
    from .world.patterns import CLASS_NAMES

    workdir = Path(tempfile.mkdtemp(prefix="mvpseg-serve-"))
    try:
        paths = write_examples(workdir / "examples", examples)
        page = build_page(PageModel(segmenter), paths, default_classes=", ".join(CLASS_NAMES),
                          workdir=workdir / "answers")
        launch(page, host, port, max_upload_mb, auth, allowed_paths=[workdir / "examples"])
        print(f"mvpseg: serving on {page.local_url}, {exposure(host, bool(auth))} (Ctrl+C stops)",
              file=sys.stderr, flush=True)
        page.block_thread()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
