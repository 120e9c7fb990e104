from __future__ import annotations

import csv
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from PIL import Image

from data.__main__ import cli
from data.collection import fetched_path
from data.fetch import fetch_collection, request_url
from data.image import decode_rgb


def _jpeg(size, colour=(120, 60, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _png(size):
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    requests: list[str] = []
    flaky_left = {"n": 1}
    files: dict[str, bytes] = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code, body=b"", ctype="image/jpeg"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server API
        self.requests.append(self.path)
        m = re.match(r"^/iiif/(\w+)/full/!(\d+),(\d+)/0/default\.jpg$", self.path)
        if m:  # a IIIF-like server: a 400x300 original, scaled to fit the requested box
            w, h = int(m[2]), int(m[3])
            s = min(w / 400, h / 300)
            return self._send(200, _jpeg((round(400 * s), round(300 * s))))
        if self.path == "/plain/big.png":
            return self._send(200, _png((500, 250)), "image/png")
        if self.path == "/flaky/a.jpg":
            if self.flaky_left["n"] > 0:
                self.flaky_left["n"] -= 1
                return self._send(503, b"busy", "text/plain")
            return self._send(200, _jpeg((40, 30)))
        if self.path == "/garbage/g.jpg":
            return self._send(200, b"<html>this is not an image</html>", "image/jpeg")
        if self.path in self.files:  # made per test (tests.data.image_kinds)
            return self._send(200, self.files[self.path])
        return self._send(404, b"no", "text/plain")


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # 127.0.0.1 must be reached directly
    _Handler.requests = []
    _Handler.flaky_left = {"n": 1}
    _Handler.files = {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _collection(root, base, rows):
    root.mkdir()
    with open(root / "images.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "path", "url"])
        for uid, url in rows:
            w.writerow([uid, "", url.format(base=base)])
    return root


def test_iiif_rule():
    assert request_url("https://h/iiif/2/abc", 512) == ("https://h/iiif/2/abc/full/!512,512/0/default.jpg", True)
    assert request_url("https://h/iiif/2/abc/info.json", 64)[0] == "https://h/iiif/2/abc/full/!64,64/0/default.jpg"
    assert request_url("https://h/i/abc/full/300,/0/default.jpg", 99)[0] == "https://h/i/abc/full/!99,99/0/default.jpg"
    assert request_url("https://h/img/photo.JPG", 99) == ("https://h/img/photo.JPG", False)


def test_fetch_parallel_retry_resume_and_failures(tmp_path, server):
    root = _collection(tmp_path / "c", server, [
        ("iiif1", "{base}/iiif/one"),
        ("iiif2", "{base}/iiif/two/full/300,/0/default.jpg"),
        ("plain", "{base}/plain/big.png"),
        ("flaky", "{base}/flaky/a.jpg"),
        ("garbage", "{base}/garbage/g.jpg"),
        ("gone", "{base}/missing.jpg"),
    ])
    res = fetch_collection(root, max_side=64, workers=4, retries=3, timeout=5, backoff=0.01)
    assert sorted(res.fetched) == ["flaky", "iiif1", "iiif2", "plain"]
    assert sorted(res.failed) == ["garbage", "gone"]
    assert "not send a readable image" in res.failed["garbage"] and "3 attempts" in res.failed["garbage"]
    assert "404" in res.failed["gone"]
    assert "/iiif/one/full/!64,64/0/default.jpg" in _Handler.requests
    assert "/iiif/two/full/!64,64/0/default.jpg" in _Handler.requests
    assert _Handler.requests.count("/flaky/a.jpg") == 2
    assert _Handler.requests.count("/missing.jpg") == 1  # a 404 is not retried
    assert decode_rgb(root / fetched_path("iiif1")).size == (64, 48)
    assert decode_rgb(root / fetched_path("plain")).size == (64, 32)  # plain http downscaled here
    assert not (root / fetched_path("garbage")).exists()
    assert not [p for p in (root / "images" / "fetched").iterdir() if p.name.startswith(".")]  # no temp files

    # resume: good files are skipped, a corrupt one is replaced, failures are tried again
    (root / fetched_path("iiif2")).write_bytes(b"truncated")
    n = len(_Handler.requests)
    res2 = fetch_collection(root, max_side=64, workers=2, retries=1, timeout=5, backoff=0.01)
    assert sorted(res2.skipped) == ["flaky", "iiif1", "plain"]
    assert res2.fetched == ["iiif2"] and sorted(res2.failed) == ["garbage", "gone"]
    assert sorted(_Handler.requests[n:]) == ["/garbage/g.jpg", "/iiif/two/full/!64,64/0/default.jpg", "/missing.jpg"]


def test_cli_fetch_exit_code(tmp_path, server):
    ok = _collection(tmp_path / "ok", server, [("a", "{base}/iiif/a")])
    res = CliRunner().invoke(cli, ["fetch", str(ok), "--max-side", "32", "--workers", "2"])
    assert res.exit_code == 0 and "fetched 1" in res.output
    bad = _collection(tmp_path / "bad", server, [("a", "{base}/missing.jpg")])
    res = CliRunner().invoke(cli, ["fetch", str(bad), "--retries", "1"])
    assert res.exit_code == 1 and "FAILED uid a" in res.output


def test_fetch_stores_the_corrected_picture_and_fetches_damaged_data_again(tmp_path, server):
    """A transparent PNG was stored as JPEG on black; a damaged JPEG body was kept (issue 11, defect 3/10)."""
    from tests.data import image_kinds as K

    _Handler.files = {"/drawing.png": K.line_drawing(tmp_path / "d.png").read_bytes(),
                      "/photo.jpg": K.oriented_jpeg(tmp_path / "o.jpg", 6).read_bytes(),
                      "/damaged.jpg": K.damaged_jpeg(tmp_path / "x.jpg").read_bytes()}
    root = _collection(tmp_path / "c", server, [("d", "{base}/drawing.png"), ("o", "{base}/photo.jpg"),
                                                ("x", "{base}/damaged.jpg")])
    res = fetch_collection(root, max_side=64, workers=2, retries=2, timeout=5, backoff=0.01)
    assert sorted(res.fetched) == ["d", "o"] and list(res.failed) == ["x"]
    assert "damaged image data" in res.failed["x"] and _Handler.requests.count("/damaged.jpg") == 2
    stored = decode_rgb(root / fetched_path("d"))
    assert K.mean_rgb(stored, (0, 0, 8, 8)).min() > 245  # paper, not black
    assert decode_rgb(root / fetched_path("o")).size == (32, 48)  # stored upright
    (root / fetched_path("x")).write_bytes(_Handler.files["/damaged.jpg"])  # a damaged file already there
    res2 = fetch_collection(root, max_side=64, workers=2, retries=1, timeout=5, backoff=0.01)
    assert "x" not in res2.skipped and list(res2.failed) == ["x"]
