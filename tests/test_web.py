"""``mvpseg serve`` in a real browser: Debian's Chromium, headless, driven by Playwright.

One server for the module (the shipped tiny CLIP and world prompts, its default model), started as
``mvpseg serve`` in a subprocess whose every outside name look-up or connection is logged by an audit
hook; Chromium resolves no host name but this machine's. Each test checks that every request its
page made went to the local server and that the server reached nothing else.

Needs gradio (``pip install -e ".[web]"``), playwright (the dev extra) and Chromium
(``apt-get install chromium``; never ``playwright install``): the module is skipped without them,
and fails instead when MVPSEG_REQUIRE_BROWSER=1 (CI).
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from mvpseg.viz import palette
from mvpseg.web import NOT_AN_IMAGE
from mvpseg.world.patterns import CLASS_NAMES, generate_scene, scene_rng

CHROMIUM = os.environ.get("MVPSEG_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _missing() -> list[str]:
    missing = []
    if importlib.util.find_spec("gradio") is None:
        missing.append('gradio (pip install -e ".[web]")')
    if importlib.util.find_spec("playwright") is None:
        missing.append('playwright (pip install -e ".[dev]")')
    if not Path(CHROMIUM).exists():
        missing.append("Chromium (apt-get install chromium)")
    return missing


if _missing():
    REASON = "the browser tests need " + ", ".join(_missing())
    if os.environ.get("MVPSEG_REQUIRE_BROWSER") == "1":
        pytest.fail(REASON + " (MVPSEG_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(REASON, allow_module_level=True)

from playwright.sync_api import Page, sync_playwright  # noqa: E402

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    # Chromium itself looks up Google hosts at start: let it resolve nothing but this machine. Page
    # requests to another host still fire page.on("request") first, so the checks below see them.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
TIMEOUT_MS = 60_000
#: The world's classes with synonyms for two of them: the page shows the first names.
CLASSES = ", ".join({"stripes": "stripes|lines", "water": "water|sea"}.get(name, name) for name in CLASS_NAMES)

# Runs `mvpseg serve` with an audit hook logging every name look-up or connection to another host.
SERVER = r"""
import os, sys
LOG = os.environ["MVPSEG_NET_LOG"]
LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "")
def hook(event, args):
    if event not in ("socket.getaddrinfo", "socket.connect"):
        return
    target = args[0] if event == "socket.getaddrinfo" else args[1]
    host = target[0] if isinstance(target, tuple) else target
    host = host.decode() if isinstance(host, bytes) else host
    if host is None or (isinstance(host, str) and (host.startswith("/") or host in LOCAL)):
        return
    with open(LOG, "a") as log:
        log.write(f"{event} {target!r}\n")
sys.addaudithook(hook)
from mvpseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The page's URL and the server's log of outside look-ups."""
    root = tmp_path_factory.mktemp("serve")
    net_log, out_log = root / "net.log", root / "server.log"
    port = _free_port()
    env = dict(os.environ, MVPSEG_NET_LOG=str(net_log), GRADIO_TEMP_DIR=str(root / "gradio"), TMPDIR=str(root),
               PYTHONUNBUFFERED="1",
               GRADIO_ANALYTICS_ENABLED="True")  # mvpseg serve turns analytics off whatever the environment says
    start = time.monotonic()
    with open(out_log, "w") as output:
        process = subprocess.Popen([sys.executable, "-c", SERVER, "serve", "--port", str(port), "--device", "cpu",
                                    "--max-upload-mb", "1", "--examples", "2"],
                                   stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"mvpseg serve exited with {process.returncode}:\n{out_log.read_text()[-3000:]}")
            if time.monotonic() - start > 180:
                pytest.fail(f"mvpseg serve did not answer in 180 s:\n{out_log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)  # polling a server that is starting: nothing else to wait on
        print(f"\nmvpseg serve answered after {time.monotonic() - start:.1f} s")
        yield url, net_log
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(server: tuple[str, Path], browser) -> Iterator[Page]:
    """A fresh page on the server; afterwards every request it made must have gone to the server."""
    url, net_log = server
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    requests: list[str] = []
    errors: list[str] = []
    opened.on("request", lambda request: requests.append(request.url))
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(url, wait_until="domcontentloaded")
    opened.locator("#run").wait_for()
    yield opened
    context.close()
    host = urlparse(url).netloc
    outside = sorted({request for request in requests if urlparse(request).scheme in ("http", "https", "ws", "wss")
                      and urlparse(request).netloc != host})
    assert outside == [], f"the page asked other hosts: {outside}"
    assert requests, "no request recorded"
    assert not errors, errors
    assert not net_log.exists() or net_log.read_text() == "", f"the server reached out: {net_log.read_text()}"


def _scene(path: Path, index: int) -> tuple[Path, np.ndarray, np.ndarray]:
    scene = generate_scene(scene_rng(7, 1, index))
    Image.fromarray(scene.image).save(path)
    return path, scene.image, scene.label


def _upload(page: Page, path: Path) -> None:
    remove = page.locator('#photo button[aria-label="Remove Image"]')
    if remove.count():
        remove.click()
        remove.wait_for(state="detached")
    page.locator('#photo input[data-testid="file-upload"]').set_input_files(str(path))
    page.locator("#photo img").wait_for()


def _run(page: Page, previous: str | None = None) -> str:
    """Press Segment and wait for a new overlay; returns its src."""
    page.locator("#run").click()
    page.wait_for_function(
        """(previous) => { const image = document.querySelector('#overlay img');
                           return image && image.src && image.src !== previous && image.complete
                                  && image.naturalWidth > 0; }""",
        arg=previous or "", timeout=TIMEOUT_MS)
    return page.locator("#overlay img").get_attribute("src")


def _fetch(page: Page, src: str) -> np.ndarray:
    response = page.request.get(src)
    assert response.ok, (src, response.status)
    return np.asarray(Image.open(io.BytesIO(response.body())))


def _download_labels(page: Page) -> np.ndarray:
    link = page.locator("#labels a[href]").first
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    labels = Image.open(download.value.path())
    assert labels.mode == "P"
    return np.asarray(labels)


def _toast(page: Page, text: str) -> str:
    toast = page.locator("[data-testid='toast-body']").filter(has_text=text).first
    toast.wait_for()
    message = toast.inner_text()
    for close in page.locator(".toast-close").all():
        close.click()
    return message


def _expected_overlay(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """mvpseg.viz.overlay's colours over the photo (alpha 0.5), computed here."""
    blended = image.astype(np.float32) * 0.5 + palette()[labels].astype(np.float32) * 0.5
    return blended.round().clip(0, 255).astype(np.uint8)


def test_a_photo_segmented_in_the_browser(page: Page, tmp_path: Path) -> None:
    started = time.monotonic()
    photo, image, truth = _scene(tmp_path / "scene.png", 0)
    _upload(page, photo)
    page.locator("#classes textarea").fill(CLASSES)
    src = _run(page)
    labels = _download_labels(page)
    assert labels.shape == truth.shape and labels.max() < len(CLASS_NAMES)
    assert (labels == truth).mean() > 0.5  # the shipped world prompts segment the world
    shown = _fetch(page, src)[..., :3]
    height, width = labels.shape
    assert shown.shape[0] >= height and shown.shape[1] > width  # the legend strip on the right
    np.testing.assert_array_equal(shown[:height, :width], _expected_overlay(image, labels))
    counts = np.bincount(labels.ravel(), minlength=len(CLASS_NAMES))
    present = [int(index) for index in np.argsort(-counts, kind="stable") if counts[index] > 0]
    size = 12  # the legend's swatch side for a 128-pixel picture (mvpseg.viz.overlay)
    for row, index in enumerate(present):  # one swatch per class found, largest first
        assert tuple(shown[4 + row * (size + 6) + size // 2, width + 6 + size // 2]) == tuple(palette()[index])
    shares = page.locator("#shares")
    for index in present:
        shares.get_by_text(CLASS_NAMES[index], exact=True).first.wait_for()
    assert shares.get_by_text("lines").count() == 0  # synonyms are scored, not shown
    page.locator("#presence").get_by_text(CLASS_NAMES[present[0]], exact=True).first.wait_for()
    assert page.locator("#map-class input").input_value() == CLASS_NAMES[present[0]]  # the largest class first
    maps = page.locator("#maps img")
    first_maps = maps.get_attribute("src")
    assert _fetch(page, first_maps).shape[1] == 160 * 5  # the photo, the global prompt and 3 segmentation prompts
    other = CLASS_NAMES[present[-1]] if len(present) > 1 else CLASS_NAMES[(present[0] + 1) % len(CLASS_NAMES)]
    page.locator("#map-class input").click()
    page.get_by_role("option", name=other, exact=True).click()
    page.wait_for_function("(previous) => document.querySelector('#maps img').src !== previous", arg=first_maps)
    page.locator("#status").get_by_text("128 x 128 pixels").wait_for()
    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get("MVPSEG_SCREENSHOT"):  # how docs/web-page.png is made
        shutil.copyfile(screenshot, os.environ["MVPSEG_SCREENSHOT"])
    print(f"\nbrowser steps {time.monotonic() - started:.1f} s")


def test_a_corrupt_upload_gets_one_message_and_the_page_keeps_working(page: Page, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not image data" * 50)
    _upload(page, corrupt)
    page.locator("#run").click()
    assert NOT_AN_IMAGE in _toast(page, "not a readable image")
    photo, image, _ = _scene(tmp_path / "good.png", 1)
    _upload(page, photo)
    src = _run(page)
    labels = _download_labels(page)
    np.testing.assert_array_equal(_fetch(page, src)[: labels.shape[0], : labels.shape[1], :3],
                                  _expected_overlay(image, labels))


def test_background_threshold_and_bad_vocabularies_on_the_page(page: Page, tmp_path: Path) -> None:
    photo, _, _ = _scene(tmp_path / "scene.png", 2)
    _upload(page, photo)
    # Lines as a class file holds them (SCLIP's format): one class per line, its synonyms after commas.
    page.locator("#classes textarea").fill("stripes, lines\ndots\ngrass, lawn\nwater, sea\nsand\nsky")
    previous = _run(page)
    assert _download_labels(page).max() < 6
    shown = {name for name in ("stripes", "dots", "grass", "water", "sand", "sky", "lines", "lawn", "sea")
             if page.locator("#shares").get_by_text(name, exact=True).count()}
    assert shown and shown <= {"stripes", "dots", "grass", "water", "sand", "sky"}
    page.locator("#threshold input[type='number']").fill("0.5")
    page.locator("#threshold input[type='number']").press("Enter")
    page.locator("#run").click()
    assert "needs a background class" in _toast(page, "background")
    page.locator("#background textarea").fill("background")
    page.locator("#threshold input[type='number']").fill("1")
    page.locator("#threshold input[type='number']").press("Enter")
    _run(page, previous)
    assert (_download_labels(page) == 0).all()  # every score is below 1: all background
    page.locator("#shares").get_by_text("background", exact=True).first.wait_for()
    page.locator("#classes textarea").fill("cat, <b>cat</b>, cat")
    page.locator("#run").click()
    assert "Duplicate class names: cat" in _toast(page, "Duplicate")


def test_an_oversized_upload_is_refused_before_it_is_sent(page: Page, tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(1_500_000))  # the server runs with --max-upload-mb 1
    page.locator('#photo input[data-testid="file-upload"]').set_input_files(str(big))
    _toast(page, "exceed the maximum allowed size")
    assert page.locator("#photo img").count() == 0
