"""The app as a person uses it: a real server, driven in headless Chromium by Playwright.

Starts `python -m app` on a free local port (embedded default model, CPU), picks an example
scene, renders a regression view and a trajectory video, draws 2 samples, uploads a file
that is not an image, and checks what the page shows after each step. Screenshots go to a
temporary folder; with `GEN_NVS_UPDATE_SCREENSHOTS=1` in the environment they replace the
tracked ones in `app/screenshots/` (the README shows them):

    GEN_NVS_UPDATE_SCREENSHOTS=1 python -m pytest tests/test_browser.py

Needs Debian's `chromium` package (the real binary is /usr/lib/chromium/chromium) and the
`playwright` Python package (the `test` extra); without them these tests fail, they never
skip. The page must make no request off the machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "app" / "screenshots"
UPDATE_SCREENSHOTS_ENV = "GEN_NVS_UPDATE_SCREENSHOTS"
CHROMIUM = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 180  # import gradio and torch, load the model, write the examples
WAIT_MS = 90_000  # one page action on two busy CPU cores

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for path in CHROMIUM:
        if Path(path).is_file():
            return path
    pytest.fail(
        f"Chromium is missing (looked for {' and '.join(CHROMIUM)}): install Debian's "
        "package with `apt-get install -y chromium` (.ci/run does)"
    )


def _playwright():
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as err:
        pytest.fail(f"playwright is missing ({err}): pip install -e '.[test]'")
    return sync_playwright, expect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(port), "--device", "cpu"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the app did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}"
                )
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    """Where screenshots go: app/screenshots/ when asked to update them, else a tmp folder."""
    if os.environ.get(UPDATE_SCREENSHOTS_ENV) == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    sync_playwright, _ = _playwright()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    """A fresh page (its own session) that records every request leaving the machine."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.outside_requests = []

    def record(request):
        host = urlparse(request.url).hostname
        if request.url.startswith(("http:", "https:", "ws:", "wss:")) and host not in (
            "127.0.0.1",
            "localhost",
        ):
            page.outside_requests.append(request.url)

    page.on("request", record)
    page.goto(app_url, wait_until="load")
    page.wait_for_selector("#run", timeout=WAIT_MS)
    yield page
    context.close()


def _pick_example(page, expect, index: int = 1) -> None:
    """Click example `index` (1-based) and wait until the page shows that scene."""
    from app.logic import EXAMPLE_SEEDS
    from gen_nvs.data.procedural import scene_name

    page.locator("#examples").get_by_label(f"Thumbnail {index} of 3").click()
    cameras = f"cameras from {scene_name(EXAMPLE_SEEDS[index - 1])}.json"
    expect(page.locator("#scene-info")).to_contain_text(cameras, timeout=WAIT_MS)
    expect(page.locator("#sources img")).to_have_count(3)


def _render(page, expect, done: str) -> None:
    """Click Render and wait until the status line reports `done` ("Run N: ...")."""
    page.click("#run")
    try:
        expect(page.locator("#status")).to_contain_text(done, timeout=WAIT_MS)
    except AssertionError as err:
        toasts = page.locator(".toast-body").all_inner_texts()
        raise AssertionError(f"{err}\nmessages on the page: {toasts}") from None


def _drawn_pixels(page, selector: str) -> int:
    """How many pixels of the element's screenshot differ from its corner (background)."""
    from io import BytesIO

    import numpy as np
    from PIL import Image

    shot = Image.open(BytesIO(page.locator(selector).screenshot())).convert("RGB")
    pixels = np.asarray(shot).astype(int)
    background = pixels[5, 5]
    return int((np.abs(pixels - background).sum(-1) > 30).sum())


def _screenshot(page, path: Path, full_page: bool = True) -> None:
    """Save a screenshot (for the README), from the top of the page, in 256 colours (small)."""
    from io import BytesIO

    from PIL import Image

    page.evaluate("window.scrollTo(0, 0)")
    shot = Image.open(BytesIO(page.screenshot(full_page=full_page))).convert("RGB")
    shot.quantize(256).save(path, optimize=True)


def _assert_labels_fit(page, selectors: list[str]) -> None:
    """Each block's label shows in full (it once read "Unseen region (mag")."""
    for selector in selectors:
        label = page.locator(f"{selector} [data-testid=block-label]").first
        clipped = label.evaluate("e => e.scrollWidth > e.clientWidth + 1")
        assert not clipped, f"the label of {selector} is cut off: {label.inner_text()!r}"


def _set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_example_regression_video_and_samples(page, screenshots):
    _, expect = _playwright()
    expect(page.locator("#model-note")).to_contain_text("the embedded default model")
    expect(page.locator("#model-note")).to_contain_text("renders 64x64")
    _pick_example(page, expect)
    expect(page.locator("#plot img")).to_be_visible(timeout=WAIT_MS)
    # Every file of the example is listed (the list once cut off after two).
    expect(page.locator("#images").get_by_text(".png")).to_have_count(3)

    _render(page, expect, "Run 1: rendered 1 view")
    _assert_labels_fit(
        page,
        ["#examples", "#images", "#cameras", "#sources", "#plot", "#unseen", "#depth", "#views",
         "#video", "#cloud", "#ply", "#export"],
    )  # fmt: skip
    assert page.locator("#export a").first.get_attribute("href").endswith("-all.zip")
    expect(page.locator("#views img").first).to_be_visible()
    expect(page.locator("#depth img")).to_be_visible()
    expect(page.locator("#unseen img")).to_be_visible()
    assert page.locator("#ply a").first.get_attribute("href").endswith("-points.ply")
    page.wait_for_timeout(1500)  # the 3D viewer draws asynchronously
    assert _drawn_pixels(page, "#cloud canvas") > 200, "the point cloud viewer drew nothing"
    _screenshot(page, screenshots / "regression.png")

    page.get_by_label("Trajectory video").check()
    _set_slider(page, "frames", 4)
    _render(page, expect, "Run 2: rendered 4 views")
    src = page.locator("#video video").get_attribute("src")
    assert src and src.endswith(".mp4"), src
    # The single view's panels belong to run 1: the video run cleared them.
    expect(page.locator("#depth img")).to_have_count(0)
    expect(page.locator("#unseen img")).to_have_count(0)
    _screenshot(page, screenshots / "video.png")

    # A preset sets the controls it names.
    page.locator("#preset input").click()
    page.get_by_role("option", name="Complete the unseen parts (sampling)").click()
    expect(page.get_by_role("radio", name="Sampling", exact=True)).to_be_checked(timeout=WAIT_MS)
    expect(page.get_by_role("radio", name="Single view", exact=True)).to_be_checked()
    expect(page.locator("#samples input[type=number]")).to_have_value("4")

    page.wait_for_selector("#steps", timeout=WAIT_MS)
    _set_slider(page, "steps", 4)
    _set_slider(page, "samples", 2)
    _render(page, expect, "Run 3: drew 2 sample(s) x 4 steps")
    # Two samples, then the regression render for comparison.
    captions = page.locator("#views .grid-container .caption-label")
    expect(captions).to_have_text(["sample 1 (seed 0)", "sample 2 (seed 1)", "regression"])
    expect(page.locator("#views img[data-testid=detailed-image]")).to_be_visible()
    _screenshot(page, screenshots / "sampling.png")

    # A long run, cancelled once it is under way: the samples above stay.
    _set_slider(page, "steps", 100)
    _set_slider(page, "samples", 8)
    page.click("#run")
    expect(page.locator("#status")).to_contain_text("sampling: step", timeout=WAIT_MS)
    page.click("#cancel")
    expect(page.locator(".toast-body").filter(has_text="Sampling cancelled")).to_be_visible(
        timeout=WAIT_MS
    )
    expect(page.locator("#status")).to_contain_text("Sampling cancelled.")
    expect(captions).to_have_text(["sample 1 (seed 0)", "sample 2 (seed 1)", "regression"])
    assert page.outside_requests == [], page.outside_requests


def test_bad_upload_shows_error_and_keeps_results(page, tmp_path, screenshots):
    _, expect = _playwright()
    _pick_example(page, expect, index=2)
    _render(page, expect, "Run 1: rendered 1 view")
    first_view = page.locator("#views img").first.get_attribute("src")

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not a picture\n")
    page.set_input_files("#images input[type=file]", str(not_an_image))
    toast = page.locator(".toast-body").filter(has_text="notes.png")
    expect(toast).to_contain_text("cannot read image notes.png", timeout=WAIT_MS)
    _screenshot(page, screenshots / "error.png", full_page=False)

    # The page keeps its results and the app keeps serving.
    assert page.locator("#views img").first.get_attribute("src") == first_view
    expect(page.locator("#status")).to_contain_text("Run 1: rendered 1 view")
    _pick_example(page, expect, index=3)
    _render(page, expect, "Run 2: rendered 1 view")
    assert page.outside_requests == [], page.outside_requests
