"""Test helpers for the weights registry: a real HTTP server on 127.0.0.1 and registry files.

The server supports what the downloader relies on (Range requests, 206 with
Content-Range, 416) and what can go wrong (a connection dropped half way, a
slow transfer, a response held back until the test opens a gate, an HTML page
served with status 200), and it logs every request so tests can check what the
client asked for. HEAD answers carry the headers ``huggingface_hub`` reads
(X-Repo-Commit, ETag), so with ``HF_ENDPOINT`` pointing here a file served as
``REPO/resolve/REVISION/FILE`` downloads through the real ``hf_hub_download``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from helpers import GOLDEN_WEIGHTS
from safetensors.torch import load_file

GOLDEN_CONFIG = {"feature_dim": 32, "num_repeat_mask": 2, "num_repeat_map": 2, "num_output": 4}


@functools.cache
def golden_ckpt_bytes() -> bytes:
    """The golden weights as a Music-Source-Separation-Training ``.ckpt`` (a pickled plain state dict)."""
    buffer = io.BytesIO()
    torch.save(load_file(GOLDEN_WEIGHTS), buffer)
    return buffer.getvalue()


class FileServer:
    """Serves ``files`` (name -> bytes) on 127.0.0.1 from a background thread."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict[str, str | None]] = []
        self.drop: dict[str, int] = {}  # name -> how many more responses to cut off half way
        self.gate: threading.Event | None = None  # when set, responses wait for it before the body
        self.chunk_delay = 0.0  # seconds between 64 KiB chunks
        self.ignore_range = False  # answer every request with the whole file (200), as some servers do
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                owner._serve(self)

            def do_HEAD(self):
                owner._serve(self, head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def requests_for(self, name: str) -> list[dict[str, str | None]]:
        return [r for r in self.requests if r["path"] == name]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, handler: BaseHTTPRequestHandler, head: bool = False) -> None:
        name = handler.path.lstrip("/")
        if head:
            data = self.files.get(name)
            if data is None:
                handler.send_error(404)
                return
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            handler.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
            handler.end_headers()
            return
        byte_range = handler.headers.get("Range")
        with self._lock:
            self.requests.append({"path": name, "range": byte_range})
            drop = self.drop.get(name, 0) > 0
            if drop:
                self.drop[name] -= 1
        data = self.files.get(name)
        if data is None:
            handler.send_error(404)
            return
        start, status = 0, 200
        if byte_range and not self.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", byte_range)
            assert match, f"unexpected Range header {byte_range!r}"
            start, status = int(match.group(1)), 206
            if start >= len(data):
                handler.send_error(416)
                return
        body = data[start:]
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if self.gate is not None:
            self.gate.wait(30)
        if drop:
            body = body[: len(body) // 2]
            handler.close_connection = True
        for offset in range(0, len(body), 1 << 16):
            handler.wfile.write(body[offset : offset + (1 << 16)])
            if self.chunk_delay:
                time.sleep(self.chunk_delay)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | list):
        return json.dumps(value)  # JSON strings and string lists are valid TOML
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def tiny_entry(**fields: object) -> dict[str, object]:
    """A registry table for the golden small model; ``fields`` add or override (e.g. url, sha256)."""
    entry: dict[str, object] = {
        "description": "golden small test model",
        "architecture": "ts-bsmamba2",
        "config": dict(GOLDEN_CONFIG),
        "stems": ["drums", "bass", "other", "vocals"],
        "sample_rate": 44100,
        "normalization": "none",
        "sha256": "",
        "license": "MIT",
    }
    entry.update(fields)
    return entry


def write_registry(path: Path, models: dict[str, dict[str, object]], default: str | None = None) -> Path:
    """Write a registry file with one ``[models.NAME]`` table per entry; return its path."""
    lines = [f'default = "{default or next(iter(models))}"', ""]
    for name, entry in models.items():
        lines.append(f"[models.{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path
