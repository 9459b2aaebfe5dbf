"""The drawing page with an API key and from other origins, in a real browser (Debian's chromium, playwright).

`dcssa-rt serve --api-keys KEYS --cors-origin ALLOWED` runs in a subprocess on the tiny bundle. The
page is served three ways: by the server itself (key in the URL fragment, or pasted after a 401),
from an allowed origin and from a refused one (a second and third loopback port serving the same
index.html with ``window.DCSSA = {api, key}``, as an embedding site would). Results must equal an
offline session on the strokes the page sent.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium")
playwright_api = pytest.importorskip("playwright.sync_api")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from dcssa.runtime.serve.keys import add_key  # noqa: E402
from dcssa.runtime.stroke.parse import parse_stroke  # noqa: E402

STROKE = [(0.2, 0.3), (0.5, 0.7), (0.8, 0.3)]


def start_server(args: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "dcssa.runtime.cli", "serve", *args, "--port", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first: list[str] = []
    reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(180)
    if not first or not first[0].strip():
        proc.kill()
        pytest.fail(f"server did not start: {proc.stderr.read()[-2000:]}")
    url = json.loads(first[0])["url"]
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "healthz", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("server never became healthy")
        time.sleep(0.2)


def static_site(page: dict) -> tuple[ThreadingHTTPServer, str]:
    """A loopback web server of another origin serving ``page["html"]`` (the embedding site)."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            data = page["html"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    work = tmp_path_factory.mktemp("public-page")
    keys = work / "keys.json"
    _, key = add_key(keys, "web")
    html = resources.files("dcssa.runtime.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    page: dict = {}
    (allowed, allowed_origin), (refused, refused_origin) = static_site(page), static_site(page)
    proc, url = start_server(["--bundle", str(tiny / "bundle"), "--gallery", str(tiny / "gallery"), "--backend",
                              "ort-cpu", "--topk", "5", "--api-keys", str(keys), "--cors-origin", allowed_origin])
    # what an embedding site adds: where the API is, and the key it was given
    page["html"] = html.replace("<script>\n", f"<script>window.DCSSA = {json.dumps({'api': url, 'key': key})};"
                                              "</script>\n<script>\n", 1)
    assert page["html"] != html
    try:
        yield {"url": url, "key": key, "allowed": allowed_origin, "refused": refused_origin, "proc": proc}
    finally:
        for httpd in (allowed, refused):
            httpd.shutdown()
            httpd.server_close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture()
def browser(tmp_path):
    with playwright_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                   headless=True, args=FLAGS, viewport={"width": 1000, "height": 700})
        yield ctx
        ctx.close()


def draw(page, points) -> None:
    box = page.locator("#canvas").bounding_box()
    x0, y0, side = box["x"], box["y"], box["width"]
    page.mouse.move(x0 + points[0][0] * side, y0 + points[0][1] * side)
    page.mouse.down()
    for fx, fy in points[1:]:
        page.mouse.move(x0 + fx * side, y0 + fy * side, steps=6)
    page.mouse.up()


def draws_and_matches(page, tiny_retriever, sent: list[dict]) -> None:
    """One stroke drawn; the cards shown (images loaded) are the offline top-K of the stroke sent."""
    page.wait_for_function("() => typeof sessionId === 'string' && sessionId.length > 0", timeout=60_000)
    draw(page, STROKE)
    page.wait_for_function("() => document.getElementById('count').textContent === '1'", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results .thumb img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000)
    ids = page.eval_on_selector_all("#results .thumb img", "imgs => imgs.map(i => i.alt)")
    assert len(sent) == 1
    want = tiny_retriever.session().add_stroke(parse_stroke(sent[0]["stroke"], frame=sent[0]["frame"]))
    assert ids == want.ids


def strokes_sent(page) -> list[dict]:
    sent: list[dict] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/strokes") else None)
    return sent


def test_the_page_works_from_an_allowed_origin(setup, browser, tiny_retriever):
    page = browser.new_page()
    sent = strokes_sent(page)
    page.goto(setup["allowed"], wait_until="load")
    draws_and_matches(page, tiny_retriever, sent)
    assert page.get_attribute("#results .thumb img", "src").startswith("blob:")  # fetched with the key


def test_the_page_is_refused_from_another_origin(setup, browser):
    page = browser.new_page()
    refused: list[int] = []
    page.on("response", lambda r: refused.append(r.status) if r.url.startswith(setup["url"]) else None)
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url) if r.url.startswith(setup["url"]) else None)
    page.goto(setup["refused"], wait_until="load")
    page.wait_for_function("() => document.getElementById('status').className === 'error'", timeout=60_000)
    assert page.evaluate("sessionId") is None
    assert failed and all(u.startswith(setup["url"]) for u in failed)  # the browser blocked the calls
    metrics = httpx.get(setup["url"] + "metrics", timeout=10).text
    assert 'dcssa_errors_total{kind="origin_not_allowed"}' in metrics  # and the server refused them


def test_the_key_from_the_fragment_or_pasted_on_the_servers_own_page(setup, browser, tiny_retriever):
    page = browser.new_page()
    sent = strokes_sent(page)
    page.goto(setup["url"] + "#key=" + setup["key"], wait_until="load")
    assert setup["key"] not in page.url  # taken out of the address bar at once
    draws_and_matches(page, tiny_retriever, sent)
    other = browser.new_page()  # a new tab: no key (sessionStorage is per tab) -> 401 -> the key bar
    other.goto(setup["url"], wait_until="load")
    other.wait_for_selector("#keybar.on", timeout=60_000)
    other.fill("#key", setup["key"])
    other.click("#keybar button")
    other.wait_for_function("() => typeof sessionId === 'string' && sessionId.length > 0", timeout=60_000)
    assert not other.is_visible("#keybar")
