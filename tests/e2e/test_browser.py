"""The web UI in Debian's headless Chromium, driven by Playwright, against the real Triton.

The model is a tiny random-weight checkpoint: its words are gibberish, so these tests
look at structure (text appears, grows, stops), never at content.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Page, expect, sync_playwright

from stack.frontend import FrontendServer
from stack.ports import free_port
from stack.triton import TritonServer
from tests.samples import videos

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "webui.png"
BOT = '#chatbot [data-testid="bot"]'
# The model's limit: about 20 s on the tiny checkpoint, so Stop lands mid-answer.
LONG_ANSWER_TOKENS = 2048
USER = '#chatbot [data-testid="user"]'


def _scene(path: Path, size: tuple[int, int] = (320, 240)) -> Path:
    image = Image.new("RGB", size, "skyblue")
    draw = ImageDraw.Draw(image)
    draw.ellipse((size[0] // 3, size[1] // 5, size[0] * 2 // 3, size[1] * 3 // 4), fill="gold")
    draw.rectangle((0, size[1] * 4 // 5, size[0], size[1]), fill="forestgreen")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    path.write_bytes(buffer.getvalue())
    return path


def _cancelled_on_triton(triton: TritonServer) -> float:
    total = 0.0
    for line in httpx.get(triton.metrics_url, timeout=10).text.splitlines():
        if line.startswith("qwen3vl_requests_finished_total{") and 'reason="cancelled"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[TritonServer, FrontendServer]]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium")
    logs = tmp_path_factory.mktemp("logs")
    triton = TritonServer(
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_file=str(logs / "triton.log")
    ).start(timeout=300)
    frontend = FrontendServer(
        port=free_port(),
        env={
            "FRONTEND_TRITON_GRPC_URL": triton.grpc_url,
            "FRONTEND_MAX_IMAGE_PIXELS": str(1024 * 1024),
            "FRONTEND_UNAVAILABLE_RETRY_S": "2",
            "FRONTEND_DEFAULT_MAX_TOKENS": "40",
        },
        log_file=str(logs / "frontend.log"),
    ).start()
    yield triton, frontend
    frontend.stop()
    triton.stop()


@pytest.fixture
def page(stack) -> Iterator[Page]:
    _, frontend = stack
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 940})
        page.set_default_timeout(60_000)
        page.goto(frontend.url, wait_until="domcontentloaded")
        page.wait_for_selector("#prompt textarea")
        yield page
        browser.close()


def _send(page: Page, text: str, images: list[Path] = ()) -> None:
    if images:
        page.set_input_files("#prompt input[type=file]", [str(p) for p in images])
        expect(page.locator("#prompt img")).to_have_count(len(images))
    page.fill("#prompt textarea", text)
    page.press("#prompt textarea", "Enter")


def _set_max_tokens(page: Page, value: int) -> None:
    box = page.locator("#max-tokens input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _last_answer(page: Page) -> str:
    bots = page.locator(BOT)
    return bots.nth(bots.count() - 1).inner_text() if bots.count() else ""


def test_image_question_streams_an_answer_with_stats_then_stop_cancels_on_the_server(stack, page, tmp_path):
    triton, _ = stack
    page.fill("#system-prompt textarea", "You are a concise visual assistant.")
    _send(page, "What is in this picture?", [_scene(tmp_path / "scene.png", size=(240, 160))])
    expect(page.locator(f"{USER} img")).to_have_count(1)

    expect(page.locator("#stats")).to_contain_text("Time to first token", timeout=60_000)
    expect(page.locator("#stats")).to_contain_text(re.compile(r"Time to first token: \d+\.\d+ s"))
    expect(page.locator("#stats")).to_contain_text(re.compile(r"\d+\.\d tokens/s"))
    expect(page.locator("#stats")).to_contain_text(re.compile(r"Tokens used: \d+ \(\d+ prompt \+ \d+ generated\)"))
    assert _last_answer(page).strip()

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))

    # A long answer, stopped half-way: the text stops growing and Triton counts a cancelled request.
    cancelled_before = _cancelled_on_triton(triton)
    _set_max_tokens(page, LONG_ANSWER_TOKENS)
    _send(page, "Now describe it at great length.")
    expect(page.locator(BOT)).to_have_count(2)
    expect(page.locator("#stats")).not_to_contain_text("Time to first token")
    lengths: list[int] = []
    deadline = time.monotonic() + 60
    while len(set(n for n in lengths if n > 0)) < 3 and time.monotonic() < deadline:
        lengths.append(len(_last_answer(page)))
        page.wait_for_timeout(100)
    growing = [n for n in lengths if n > 0]
    assert len(set(growing)) >= 3 and growing == sorted(growing), f"the answer should grow as it streams: {growing[-3:]} {_last_answer(page)!r}"
    # A DOM click on the button itself: on this shared 2-core machine, Playwright's actionability
    # checks can stall behind a renderer busy with the streaming answer.
    page.locator("#stop").dispatch_event("click")
    expect(page.locator("#stats")).to_contain_text("Stopped")
    page.wait_for_timeout(1000)
    frozen = _last_answer(page)
    page.wait_for_timeout(2000)
    assert _last_answer(page) == frozen, "the answer kept growing after Stop"
    deadline = time.monotonic() + 15
    while _cancelled_on_triton(triton) <= cancelled_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _cancelled_on_triton(triton) == cancelled_before + 1

    # Regenerate replaces the stopped answer; Clear empties the conversation.
    _set_max_tokens(page, 8)
    page.click("#regenerate")
    # The stopped answer's stats also name the time to first token: wait for the new answer's,
    # or Clear races the regeneration still on its way and the conversation comes back.
    expect(page.locator("#stats")).not_to_contain_text("Stopped")
    expect(page.locator("#stats")).to_contain_text("Time to first token", timeout=60_000)
    expect(page.locator(BOT)).to_have_count(2)
    page.click("#clear")
    expect(page.locator(BOT)).to_have_count(0)
    expect(page.locator(USER)).to_have_count(0)


def test_image_too_large_is_a_readable_chat_message(page, tmp_path):
    _send(page, "And this one?", [_scene(tmp_path / "huge.png", size=(1100, 1000))])
    expect(page.locator(BOT).last).to_contain_text("Image too large", timeout=30_000)
    expect(page.locator(BOT).last).to_contain_text("pixels")
    _send(page, "Just text then.")
    expect(page.locator("#stats")).to_contain_text("Time to first token", timeout=60_000)


def test_triton_down_is_reported_in_the_chat_and_recovery_needs_no_reload(stack, page):
    triton, _ = stack
    triton.stop()
    try:
        _send(page, "Are you there?")
        expect(page.locator(BOT).last).to_contain_text("unavailable", timeout=30_000)
    finally:
        triton.start(timeout=300)
    _send(page, "And now?")
    expect(page.locator("#stats")).to_contain_text("Time to first token", timeout=60_000)
    assert "unavailable" not in _last_answer(page)


def test_a_video_with_an_image_plays_in_the_history_and_gets_a_streamed_answer_with_its_visual_tokens(page, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(videos.clip(3.0, fps=10, size=(320, 240)))
    page.set_input_files("#prompt input[type=file]", [str(clip), str(_scene(tmp_path / "scene.png"))])
    expect(page.locator("#prompt img")).to_have_count(1)
    page.fill("#prompt textarea", "Does the picture appear in the video?")
    page.press("#prompt textarea", "Enter")
    video = page.locator(f"{USER} video")
    expect(video).to_have_count(1)
    expect(page.locator(f"{USER} img")).to_have_count(1)
    # The browser decoded the clip's header from what the UI serves: it can play it.
    page.wait_for_function("document.querySelector('#chatbot [data-testid=\"user\"] video').readyState >= 1")
    assert video.evaluate("v => v.duration") == pytest.approx(3.0, abs=0.2)
    expect(page.locator("#stats")).to_contain_text("Time to first token", timeout=60_000)
    expect(page.locator("#stats")).to_contain_text(re.compile(r"\d+\.\d tokens/s"))
    # 3 s at 2 frames a second: three pairs of frames at the CPU config's size, and the picture's tokens.
    expect(page.locator("#stats")).to_contain_text(re.compile(r"Visual tokens: \d{3}"))
    assert _last_answer(page).strip()
