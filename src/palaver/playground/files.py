"""Serving the playground's files: read from the package once, answered from memory."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from palaver.asgi import Receive, Scope, Send, header

PAGE_PATH = "/"
ASSET_PREFIX = "/playground/"

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".mjs": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}

# The page loads its own files only and talks to its own origin only; models' words are text.
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_COMMON = [
    (b"cache-control", b"no-cache"),  # always revalidated (cheap: 304), never stale
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

Handler = Callable[[Scope, Receive, Send, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    headers: list[tuple[bytes, bytes]]
    etag: bytes


def _walk(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.rsplit(".", 1)[-1] in ("html", "js", "mjs", "css", "svg"):
            yield prefix + entry.name, entry.read_bytes()


def _file(name: str, body: bytes) -> _File:
    etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode() + b'"'
    kind = _TYPES["." + name.rsplit(".", 1)[-1]]
    headers = [(b"content-type", kind), (b"etag", etag), *_COMMON]
    if name.endswith(".html"):
        headers.append((b"content-security-policy", CSP))
    return _File(body, headers, etag)


class Playground:
    """The page at ``/`` and its files at ``/playground/<name>``, as fixed routes."""

    def __init__(self) -> None:
        static = resources.files("palaver.playground") / "static"
        self._files = {name: _file(name, body) for name, body in _walk(static)}
        if "index.html" not in self._files:
            raise RuntimeError("the playground's index.html is missing from the package")

    def routes(self) -> dict[str, dict[str, Handler]]:
        """``{path: {"GET": handler}}`` for the page and every file."""
        routes = {PAGE_PATH: {"GET": self._handler(self._files["index.html"])}}
        for name, file in self._files.items():
            if name != "index.html":
                routes[ASSET_PREFIX + name] = {"GET": self._handler(file)}
        return routes

    @staticmethod
    def _handler(file: _File) -> Handler:
        async def serve(scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
            if header(scope, b"if-none-match") == file.etag:
                start = {"type": "http.response.start", "status": 304, "headers": file.headers}
                await send(start)
                await send({"type": "http.response.body", "body": b""})
                return
            size = (b"content-length", str(len(file.body)).encode())
            headers = [*file.headers, size]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": file.body})

        return serve
