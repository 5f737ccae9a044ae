"""A real browser: Debian's chromium, driven by Playwright, draws, moves sliders and runs."""

from __future__ import annotations

import io
import itertools
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from app_server import serve_app
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
# The canvas is drawn in software here, so every mouse move can take a second on a busy machine.
WAIT_MS = 240_000
QUIET_S = 0.5  # as Playwright's networkidle
STROKE_WAIT_S = 20  # for a stroke to show on the canvas
STROKE_PIXELS = 500  # dark pixels a stroke adds at least (the one drawn here: ~1,600)
RING_PIXELS = 20  # dark pixels of the brush's ring around the pointer (~130 in all)
RING_REACH = 20  # pixels from the pointer that its ring lies within

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (as root: apt-get install -y chromium)",
    ),
]


def dark_pixels(element, around: tuple[float, float] | None = None) -> int:
    """How many pixels of `element`, as shown, are dark (the strokes on the white sheet); with
    `around` (a point of the page), only those within RING_REACH pixels of it."""
    shown = np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("L"))
    if around is not None:
        box = element.bounding_box()
        column, row = int(around[0] - box["x"]), int(around[1] - box["y"])
        shown = shown[
            max(row - RING_REACH, 0) : row + RING_REACH,
            max(column - RING_REACH, 0) : column + RING_REACH,
        ]
    return int((shown < 100).sum())


def hover_until_the_brush_shows(page, canvas, x: float, y: float) -> None:
    """Move the pointer onto the sheet at (x, y) until the brush's ring shows around it: the
    editor is ready to draw (on a busy machine, seconds after the page's requests end; a
    stroke drawn before is lost, the ring alone left to look like one)."""
    deadline = time.monotonic() + STROKE_WAIT_S
    for wiggle in itertools.count():
        page.mouse.move(x + wiggle % 2, y)
        if dark_pixels(canvas, around=(x, y)) >= RING_PIXELS:
            return
        if time.monotonic() > deadline:
            pytest.fail("The sketch pad's brush did not show over the sheet")
        time.sleep(0.25)


def stroke_shows(canvas, before: int) -> bool:
    """Whether a stroke shows on `canvas` (`STROKE_PIXELS` more dark pixels than `before`) within
    `STROKE_WAIT_S`."""
    deadline = time.monotonic() + STROKE_WAIT_S
    while dark_pixels(canvas) < before + STROKE_PIXELS:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.fixture(scope="module")
def app_url(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("browser-app") / "app.log"
    with serve_app("--model-dir", str(tiny_model_dir), log_path=log) as url:
        yield url


@pytest.fixture
def page(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1400, "height": 1100},
            )
            context.set_default_timeout(WAIT_MS)
            yield context.new_page()
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def quiet(page) -> Callable[[], None]:
    """Wait until the page has had no request in flight for QUIET_S: Playwright's "networkidle",
    but for Gradio's heartbeat, a connection the page holds open while it lives (the app's
    unload event needs it)."""
    in_flight = set()

    def sent(request) -> None:
        if "/heartbeat/" not in request.url:
            in_flight.add(request)

    def ended(request) -> None:
        in_flight.discard(request)

    page.on("request", sent)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)

    def wait() -> None:
        deadline = time.monotonic() + WAIT_MS / 1000
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < QUIET_S:
            if in_flight:
                quiet_since = time.monotonic()
            if time.monotonic() > deadline:
                pytest.fail(f"The page kept requests in flight: {[r.url for r in in_flight]}")
            page.wait_for_timeout(100)  # Playwright delivers the request events meanwhile

    return wait


def test_draw_a_scribble_preview_it_and_run(app_url: str, page, quiet, tmp_path: Path):
    page.goto(app_url)
    canvas = page.locator("#scribble-input canvas").first
    canvas.wait_for(state="visible")
    # The editor fetches its sheet and empty strokes layer after it appears; a stroke drawn
    # before they arrive is replaced by them, as it would be for a person that quick.
    quiet()
    preview = page.locator("#scribble-map img")
    assert preview.count() == 0

    # One stroke across the middle of the sheet, which is centred in the wider canvas: the editor
    # draws nothing for a stroke begun in the margin beside the sheet.
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2 - 75, box["y"] + box["height"] * 0.3
    hover_until_the_brush_shows(page, canvas, x, y)
    before = dark_pixels(canvas)
    page.mouse.down()
    for dx, dy in [(30, 20), (60, 45), (90, 70), (120, 90), (150, 110)]:
        page.mouse.move(x + dx, y + dy)
    page.mouse.up()
    if not stroke_shows(canvas, before):
        page.screenshot(path=str(tmp_path / "stroke-not-shown.png"), full_page=True)
        pytest.fail(f"The stroke did not show on the sketch pad (see {tmp_path})")
    preview.first.wait_for(state="visible")
    # A small map (128 px for the embedded model) is drawn enlarged in its box, not at its size:
    # the columns its black background covers on screen.
    natural = preview.first.evaluate("img => img.naturalWidth")
    shown = np.asarray(Image.open(io.BytesIO(preview.first.screenshot())).convert("L"))
    drawn = int((shown < 40).any(axis=0).sum())
    assert natural <= 128 and drawn >= 2 * natural, (natural, drawn)

    page.click("#scribble-run")
    samples = page.locator("#scribble-gallery img")
    samples.nth(1).wait_for(state="visible")  # the control map, then the first sample
    assert samples.count() >= 2
    page.screenshot(path=str(tmp_path / "scribble.png"), full_page=True)
    assert (tmp_path / "scribble.png").stat().st_size > 0


def test_sliders_changed_by_keyboard_update_the_preview(app_url: str, page, quiet, tmp_path: Path):
    """Arrow keys on a slider, and a number typed digit by digit into its box (through "2" and
    "25", out of range on the way to "256"), update the control map with no error toast."""
    photo = np.zeros((64, 64, 3), dtype=np.uint8)
    photo[16:48, 20:44] = 255
    Image.fromarray(photo).save(tmp_path / "square.png")
    page.goto(app_url)
    quiet()
    page.get_by_role("tab", name="Canny").click()
    page.locator("#canny-input input[type=file]").set_input_files(str(tmp_path / "square.png"))
    preview = page.locator("#canny-map img").first
    preview.wait_for(state="visible")

    def map_width_becomes(width: int) -> None:
        page.wait_for_function(
            "width => document.querySelector('#canny-map img')?.naturalWidth === width",
            arg=width,
            timeout=60_000,
        )

    map_width_becomes(64)
    tab = page.locator("#canny-run").locator("xpath=ancestor::div[contains(@class,'tabitem')]")
    tab.get_by_text("Advanced").click()
    tab.locator("input[type=range][aria-label*='Resolution (short side)']").focus()
    for _ in range(8):  # a step is 8 px
        page.keyboard.press("ArrowRight")
    map_width_becomes(128)

    box = tab.locator("input[type=number][aria-label*='Resolution (short side)']")
    box.fill("")
    box.press_sequentially("256", delay=300)
    box.press("Enter")
    map_width_becomes(256)
    assert page.locator(".toast-body").all_inner_texts() == []


def test_an_unreadable_upload_over_a_picture_clears_the_map_with_one_message(
    app_url: str, page, quiet, tmp_path: Path
):
    photo = np.zeros((64, 64, 3), dtype=np.uint8)
    photo[16:48, 20:44] = 255
    Image.fromarray(photo).save(tmp_path / "square.png")
    (tmp_path / "notes.png").write_bytes(b"this is not an image")
    page.goto(app_url)
    quiet()
    page.get_by_role("tab", name="Canny").click()
    upload = page.locator("#canny-input input[type=file]")
    upload.set_input_files(str(tmp_path / "square.png"))
    preview = page.locator("#canny-map img")
    preview.first.wait_for(state="visible")

    upload.set_input_files(str(tmp_path / "notes.png"))  # replacing fires .change twice
    preview.first.wait_for(state="detached")
    message = page.locator(".toast-body").first
    message.wait_for(state="visible")
    quiet()
    assert message.inner_text().count("not an image this app can read") == 1
    assert page.locator(".toast-body").count() == 1


def test_the_preview_follows_the_input_after_the_preprocessor_is_switched(
    app_url: str, page, quiet, tmp_path: Path
):
    """Switching the preprocessor updates the input's visibility, and Gradio then gives the
    input a new id in the session: the preview must still follow it."""
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "square.png")
    Image.new("RGB", (128, 64), (255, 255, 255)).save(tmp_path / "wide.png")
    page.goto(app_url)
    quiet()
    page.get_by_role("tab", name="Canny").click()

    def map_width_becomes(width: int | None) -> None:
        page.wait_for_function(
            "width => (document.querySelector('#canny-map img')?.naturalWidth ?? null) === width",
            arg=width,
            timeout=60_000,
        )

    upload = page.locator("#canny-input input[type=file]")
    upload.set_input_files(str(tmp_path / "square.png"))
    map_width_becomes(64)
    choice = page.locator("#canny-preprocessor input")
    for label in ("None", "Canny"):
        choice.click()
        page.get_by_role("option", name=label).first.click()
    quiet()
    upload.set_input_files(str(tmp_path / "wide.png"))
    map_width_becomes(128)
    page.locator("#canny-input button[aria-label='Remove Image']").first.click()
    map_width_becomes(None)


def test_stop_or_a_reload_ends_a_run_and_frees_the_worker(app_url: str, page, quiet, tmp_path):
    """Stop ends a long run with a message; a page reloaded mid-run ends its run too, so the
    next page's run does not wait behind it (here, minutes)."""
    Image.new("RGB", (64, 64), (255, 255, 255)).save(tmp_path / "square.png")

    def open_canny() -> None:
        quiet()
        page.get_by_role("tab", name="Canny").click()
        page.locator("#canny-input input[type=file]").set_input_files(str(tmp_path / "square.png"))
        page.locator("#canny-map img").first.wait_for(state="visible")

    def run_until_sampling() -> None:
        page.click("#canny-run")
        page.get_by_text("/100 steps").first.wait_for(state="visible")

    page.goto(app_url)
    open_canny()
    tab = page.locator("#canny-run").locator("xpath=ancestor::div[contains(@class,'tabitem')]")
    tab.get_by_text("Advanced").click()
    # Steps of a few seconds each: Stop and the reload wait for one, a run left going takes
    # minutes.
    for label, value in (("Images", 12), ("Steps", 100), ("Resolution (short side)", 256)):
        box = tab.locator(f"input[type=number][aria-label*='{label}']").first
        box.fill(str(value))
        box.press("Enter")
    run_until_sampling()
    page.click("#canny-stop")
    page.locator(".toast-body", has_text="Stopped.").wait_for(state="visible", timeout=60_000)
    # The run ends at its next step, which on a busy machine can take seconds after the toast;
    # until then Gradio ignores another click on Run (a click event runs once at a time).
    page.get_by_text("/100 steps").first.wait_for(state="hidden", timeout=60_000)

    run_until_sampling()
    page.reload()
    open_canny()
    page.click("#canny-run")  # one image at the page's defaults: seconds, unless it waits
    page.locator("#canny-gallery img").nth(1).wait_for(state="visible", timeout=90_000)
