"""Remote image URLs (off by default) against a real HTTP server on 127.0.0.1."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from frontend.errors import ImageTooLarge, InvalidRequest
from frontend.images import ImageLimits
from frontend.media import fetch_remote
from frontend_samples import png_bytes

pytestmark = pytest.mark.unit

LIMITS = ImageLimits(max_bytes=50_000, max_pixels=1_000_000)
PNG = png_bytes(40, 30)


class _Images(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/slow.png":
            time.sleep(1.5)
        if self.path == "/missing.png":
            self.send_error(404)
            return
        body = b"\0" * 60_000 if self.path == "/big.png" else PNG
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


async def _fetch(url: str, hosts=("127.0.0.1",), timeout_s: float = 1.0) -> bytes:
    return await fetch_remote(url, LIMITS, allowed_hosts=list(hosts), timeout_s=timeout_s, param="p")


async def test_allow_listed_host_is_fetched(server):
    assert await _fetch(f"{server}/cat.png") == PNG


async def test_host_not_on_the_allow_list_is_refused(server):
    with pytest.raises(InvalidRequest, match="allow-list"):
        await _fetch(f"{server}/cat.png", hosts=("images.example",))


async def test_download_stops_at_the_byte_cap(server):
    with pytest.raises(ImageTooLarge):
        await _fetch(f"{server}/big.png")


async def test_slow_server_hits_the_timeout(server):
    with pytest.raises(InvalidRequest, match="longer than"):
        await _fetch(f"{server}/slow.png", timeout_s=0.3)


async def test_http_error_is_reported(server):
    with pytest.raises(InvalidRequest, match="HTTP 404"):
        await _fetch(f"{server}/missing.png")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/cat.png", "file:///etc/passwd", "http:///nohost"])
async def test_only_http_urls_with_a_host(url):
    with pytest.raises(InvalidRequest):
        await _fetch(url)
