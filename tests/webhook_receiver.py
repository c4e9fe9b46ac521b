"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 (a free port, its own
threads) that verifies every request with the Standard Webhooks reference library and
answers as each path's behaviour says — 200, failures, slowly, 410, 503 with Retry-After.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request arrived
    verified_with: list[int]  # indexes of the path's secrets that verify it
    status: int = 0

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def envelope(self) -> dict[str, Any]:
        return dict(orjson.loads(self.body))


#: behaviour(request, how many earlier requests this path had with this webhook-id)
#: -> (status, extra headers, seconds to wait before answering)
Behaviour = Callable[[Received, int], tuple[int, dict[str, str], float]]


def ok(_: Received, __: int) -> tuple[int, dict[str, str], float]:
    return 200, {}, 0.0


def fail_first(n: int, status: int = 500) -> Behaviour:
    def behaviour(_: Received, seen: int) -> tuple[int, dict[str, str], float]:
        return (status if seen < n else 200), {}, 0.0

    return behaviour


def always(status: int, headers: dict[str, str] | None = None, delay: float = 0.0) -> Behaviour:
    def behaviour(_: Received, __: int) -> tuple[int, dict[str, str], float]:
        return status, dict(headers or {}), delay

    return behaviour


@dataclass
class Receiver:
    port: int = 0
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    secrets: dict[str, list[str]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str, behaviour: Behaviour, secrets: list[str] | None = None) -> str:
        self.behaviours[path] = behaviour
        if secrets is not None:
            self.secrets[path] = secrets
        return self.url(path)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def delivered(self, path: str) -> list[Received]:
        """Requests to ``path`` answered 2xx."""
        return [r for r in self.at(path) if 200 <= r.status < 300]

    def wait_for(self, check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                with self.lock:
                    seen = [(r.path, r.status, r.id) for r in self.received]
                raise AssertionError(f"timed out waiting for {what or check}: received {seen}")
            time.sleep(0.05)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        path = handler.path.split("?")[0]
        verified = []
        for i, secret in enumerate(self.secrets.get(path, [])):
            try:
                Webhook(secret).verify(body, headers)
                verified.append(i)
            except WebhookVerificationError:
                pass
        req = Received(path, headers, body, time.monotonic(), verified)
        with self.lock:
            seen = sum(1 for r in self.received if r.path == path and r.id == req.id)
            self.received.append(req)
        status, extra, delay = self.behaviours.get(path, always(404))(req, seen)
        if delay:
            time.sleep(delay)
        req.status = status
        try:
            handler.send_response(status)
            for k, v in extra.items():
                handler.send_header(k, v)
            handler.send_header("content-length", "0")
            handler.end_headers()
        except OSError:  # the sender gave up (timeout) and closed the connection
            pass


def serve() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver._handle(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
