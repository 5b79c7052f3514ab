"""A tiny Hugging Face hub on 127.0.0.1 for download tests: the real huggingface_hub client talks to it.

It answers what `hf_hub_download` asks: HEAD/GET `/{repo}/resolve/{revision}/{file}` with the commit,
ETag and size headers, byte ranges for resumed downloads, and it can drop a connection half-way to
make an interrupted transfer. Every request is logged so tests can see the endpoint was used.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class LoopbackHub:
    files: dict[tuple[str, str], bytes]  # (repo_id, filename) -> content
    cut_after: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before dropping (once)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    max_requests: int = 200  # a bounded server: a runaway client loop ends here

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def _lookup(self) -> tuple[bytes, str] | None:
                m = re.match(r"^/(.+?/.+?)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
                if not m:
                    return None
                data = hub.files.get((m.group(1), m.group(3)))
                return None if data is None else (data, m.group(3))

            def _headers(self, data: bytes, status: int, length: int, extra: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()

            def _answer(self, body: bool) -> None:
                hub.requests.append((self.command, self.path, self.headers.get("Range")))
                if len(hub.requests) > hub.max_requests:
                    self.send_error(429)
                    return
                found = self._lookup()
                if found is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, filename = found
                start = 0
                rng = self.headers.get("Range")
                if rng and (m := re.match(r"bytes=(\d+)-(\d*)$", rng)):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else len(data) - 1
                    part = data[start : end + 1]
                    self._headers(data, 206, len(part), {"Content-Range": f"bytes {start}-{end}/{len(data)}"})
                else:
                    part = data
                    self._headers(data, 200, len(data), {})
                if not body:
                    return
                cut = hub.cut_after.pop(filename, None) if start == 0 else None
                if cut is not None:
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the link drops mid-file
                    return
                self.wfile.write(part)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def gets(self, filename: str) -> list[str | None]:
        """The Range header of each GET of `filename` (None: from the start)."""
        return [r for m, p, r in self.requests if m == "GET" and p.split("?")[0].endswith("/" + filename)]
