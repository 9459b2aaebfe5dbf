"""The drawing page in a real browser: Debian's chromium, driven by playwright, against `dcssa-rt serve`.

The server is the real CLI in a subprocess on a free loopback port. Strokes are drawn with mouse
events; the thumbnails the page shows must be the top-K an offline session gives for exactly the
strokes the page sent (captured from its requests). Set DCSSA_SCREENSHOT=path to keep the
screenshot (the README's is made that way); otherwise it goes to the test's temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium")
playwright_api = pytest.importorskip("playwright.sync_api")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from dcssa.runtime import Bundle, Gallery, Retriever  # noqa: E402
from dcssa.runtime.stroke.parse import parse_stroke  # noqa: E402


@pytest.fixture(scope="module")
def server(bundle2, gallery2):
    """`dcssa-rt serve --port 0 --json` in a subprocess; yields its URL; stopped with SIGINT."""
    cmd = [sys.executable, "-m", "dcssa.runtime.cli", "serve", "--bundle", str(bundle2), "--gallery", str(gallery2),
           "--backend", "ort-cpu", "--port", "0", "--json", "--max-batch", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(180)
    try:
        if not first or not first[0].strip():
            proc.kill()
            pytest.fail(f"server did not start: {proc.stderr.read()[-2000:]}")
        url = json.loads(first[0])["url"]
        assert url.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("server never became healthy")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def retriever(bundle2, gallery2):
    b = Bundle.load(bundle2)
    return Retriever(b, Gallery.load(gallery2, b), backend="ort-cpu", topk=10)


def launch(p, profile: Path, **kw):
    return p.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=FLAGS, **kw
    )


def draw(page, box, points):
    """One stroke through canvas-relative points (fractions of the side), with mouse events."""
    x0, y0, side = box["x"], box["y"], box["width"]
    page.mouse.move(x0 + points[0][0] * side, y0 + points[0][1] * side)
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(x0 + fx * side, y0 + fy * side, steps=6)
    page.mouse.up()


HOUSE = [
    [(0.25, 0.45), (0.75, 0.45), (0.75, 0.85), (0.25, 0.85), (0.25, 0.45)],  # walls
    [(0.2, 0.47), (0.5, 0.15), (0.8, 0.47)],  # roof
    [(0.45, 0.85), (0.45, 0.65), (0.55, 0.65), (0.55, 0.85)],  # door
]


def shown(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results .thumb",
        "cards => cards.map(c => ({id: c.querySelector('img').alt, score: parseFloat(c.querySelector('.score').textContent),"
        " loaded: c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0}))",
    )


def expected(retriever, sent: list[dict]) -> list[str]:
    s = retriever.session()
    res = None
    for body in sent:
        res = s.add_stroke(parse_stroke(body["stroke"], frame=body["frame"]))
    return res


def assert_shows(cards: list[dict], want) -> None:
    """The page's cards are the offline top-K (scores shown with 3 decimals; ids unless near-tied)."""
    assert np.allclose([c["score"] for c in cards], want.scores, atol=6e-4)
    if np.min(np.abs(np.diff(want.scores))) > 2e-4:
        assert [c["id"] for c in cards] == want.ids


def test_draw_undo_and_screenshot(server, retriever, tmp_path):
    sent: list[dict] = []
    with playwright_api.sync_playwright() as p:
        ctx = launch(p, tmp_path / "profile", viewport={"width": 1100, "height": 720})
        page = ctx.new_page()
        page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/strokes") else None)
        page.goto(server, wait_until="load")
        page.wait_for_function("() => typeof sessionId === 'string' && sessionId.length > 0", timeout=60_000)
        box = page.locator("#canvas").bounding_box()
        for i, stroke in enumerate(HOUSE, 1):
            draw(page, box, stroke)
            page.wait_for_function(f"() => document.getElementById('count').textContent === '{i}'", timeout=120_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#results .thumb img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=60_000,
        )
        cards = shown(page)
        assert len(cards) == 10 and all(c["loaded"] for c in cards)
        assert "ms" in page.text_content("#latency")
        assert len(sent) == 3 and all(len(b["frame"]) == 2 for b in sent)
        assert_shows(cards, expected(retriever, sent))

        shot = Path(os.environ.get("DCSSA_SCREENSHOT") or tmp_path / "serve-page.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        page.click("#undo")
        page.wait_for_function("() => document.getElementById('count').textContent === '2'", timeout=60_000)
        after = shown(page)
        assert_shows(after, expected(retriever, sent[:2]))
        assert [c["score"] for c in after] != [c["score"] for c in cards]
        ctx.close()


def test_phone_sized_screen(server, tmp_path):
    with playwright_api.sync_playwright() as p:
        ctx = launch(p, tmp_path / "phone", viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
        page = ctx.new_page()
        page.goto(server, wait_until="load")
        box = page.locator("#canvas").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390  # the canvas fits the screen
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        assert page.locator("#undo").is_visible() and page.locator("#clear").is_visible()
        ctx.close()
    shutil.rmtree(tmp_path / "phone", ignore_errors=True)
