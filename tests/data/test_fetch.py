"""`ablate data fetch` against a local HTTP server that honours Range; no external network."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ablation.data.fetch import DATASETS, fetch_dataset
from ablation.errors import UserError


def _make_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:  # stored: the payload stays large enough to split
        zf.writestr("dataset/train_photo/0.png", os.urandom(3000))
        zf.writestr("dataset/Hayao/style/0.png", os.urandom(2000))
        zf.writestr("dataset/val/0.png", b"v" * 500)
    return buffer.getvalue()


class _Server:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.requests: list[dict[str, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner.requests.append({"path": self.path, "range": self.headers.get("Range")})
                data, start = owner.payload, 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dataset.zip"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(_make_zip())
    yield srv
    srv.close()


def test_fetch_extracts_and_second_fetch_is_noop(server: _Server, tmp_path: Path) -> None:
    digest = hashlib.sha256(server.payload).hexdigest()
    root = fetch_dataset("animegan", tmp_path / "data", url=server.url, sha256=digest, progress=False)
    assert root == tmp_path / "data" / "dataset"
    assert (root / "train_photo" / "0.png").stat().st_size == 3000
    assert (root / "val" / "0.png").read_bytes() == b"v" * 500
    assert (tmp_path / "data" / ".complete").read_text().strip() == digest
    assert not list((tmp_path / "data").glob("*.part")) and not list((tmp_path / "data").glob(".extract-*"))
    assert len(server.requests) == 1

    again = fetch_dataset("animegan", tmp_path / "data", url=server.url, progress=False)
    assert again == root and len(server.requests) == 1  # no network at all


def test_fetch_prints_licence_note(server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fetch_dataset("animegan", tmp_path, url=server.url, progress=True)
    err = capsys.readouterr().err
    assert "research" in err and "redistribute" in err


def test_interrupted_download_resumes_with_range(server: _Server, tmp_path: Path) -> None:
    cut = len(server.payload) // 3
    (tmp_path / "dataset.zip.part").write_bytes(server.payload[:cut])
    root = fetch_dataset("animegan", tmp_path, url=server.url, progress=False)
    assert server.requests == [{"path": "/dataset.zip", "range": f"bytes={cut}-"}]
    assert (root / "Hayao" / "style" / "0.png").stat().st_size == 2000
    assert (tmp_path / ".complete").read_text().strip() == hashlib.sha256(server.payload).hexdigest()


def test_wrong_sha256_names_both_hashes(server: _Server, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(UserError) as err:
        fetch_dataset("animegan", tmp_path, url=server.url, sha256=wrong, progress=False)
    text = str(err.value)
    assert wrong in text and hashlib.sha256(server.payload).hexdigest() in text and len(err.value.lines) == 1
    assert not (tmp_path / "dataset.zip.part").exists() and not (tmp_path / ".complete").exists()


def test_corrupt_zip_is_rejected(tmp_path: Path) -> None:
    payload = bytearray(_make_zip())
    payload[200:260] = b"\x00" * 60  # inside the first member's data: its CRC no longer matches
    srv = _Server(bytes(payload))
    try:
        with pytest.raises(UserError) as err:
            fetch_dataset("animegan", tmp_path, url=srv.url, progress=False)
    finally:
        srv.close()
    assert "zip" in str(err.value) or "CRC" in str(err.value)
    assert not (tmp_path / ".complete").exists()


def test_unreachable_url_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bind then close: the port is (almost certainly) closed afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UserError) as err:
        fetch_dataset("animegan", tmp_path / "d", url=f"http://127.0.0.1:{port}/dataset.zip", progress=False)
    assert len(err.value.lines) == 1 and "\n" not in str(err.value)
    assert "could not reach" in str(err.value) and "--demo" in str(err.value)


def test_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        fetch_dataset("hayao", tmp_path)
    assert "animegan" in str(err.value) and "hayao" in str(err.value)
    assert DATASETS["animegan"].url.startswith("https://github.com/TachibanaYoshino/AnimeGAN/")


def test_vgg19_npy_is_one_file_resumed_and_never_overwrites(tmp_path: Path) -> None:
    payload = os.urandom(50_000)
    srv = _Server(payload)
    url = srv.url.replace("dataset.zip", "vgg19.npy")
    try:
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "vgg19.npy.part").write_bytes(payload[:20_000])  # an interrupted first download
        assert fetch_dataset("vgg19", tmp_path / "w", url=url, progress=False) == tmp_path / "w"
        assert srv.requests == [{"path": "/vgg19.npy", "range": "bytes=20000-"}]
        assert (tmp_path / "w" / "vgg19.npy").read_bytes() == payload and not list((tmp_path / "w").glob("*.part"))
        assert fetch_dataset("vgg19", tmp_path / "w", url=url, progress=False) == tmp_path / "w"
        assert len(srv.requests) == 1  # marked complete: no network
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "vgg19.npy").write_bytes(b"the user's own file")
        with pytest.raises(UserError) as refused:
            fetch_dataset("vgg19", tmp_path / "mine", url=url, progress=False)
    finally:
        srv.close()
    assert "vgg19.npy: dest: expected no file of that name" in str(refused.value)
    assert (tmp_path / "mine" / "vgg19.npy").read_bytes() == b"the user's own file"
    assert DATASETS["vgg19"].url.startswith("https://github.com/TachibanaYoshino/AnimeGAN/releases/download/")
