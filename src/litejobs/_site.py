"""A generated website on loopback, and the fetch a crawler job makes against it.

The crawl load test fetches real pages over real sockets, so that the queue is
measured under the latency, failures and duplicate links of network I/O rather
than under sleeps. The site is a tree: ``fan_out`` children per page, ``depth``
levels below the root::

    /            depth 0
    /p0/ /p1/    depth 1
    /p0/p0/ ...  depth 2, which link to no children

Every page also links to the root, to its parent, once more to its first child
(with a fragment) and to an external host, so a crawler has to resolve,
de-duplicate and filter what it finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import math
import re
from collections import Counter
from collections.abc import AsyncIterator
from functools import partial
from urllib.parse import urldefrag, urljoin, urlsplit

import attrs
import h11
import httpx
import trio

from litejobs._errors import ConfigError

_HOST = "127.0.0.1"
_RECEIVE_SIZE = 65536
_EXTERNAL = "http://example.invalid"
_HREF = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _count(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"SiteConfig.{attribute.name} must be an int >= 0, got {value!r}")


def _seconds(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigError(f"SiteConfig.{attribute.name} must be finite and >= 0, got {value!r}")


def _fraction(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"SiteConfig.{attribute.name} must be between 0 and 1, got {value!r}")


def _integer(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"SiteConfig.{attribute.name} must be an int, got {value!r}")


@attrs.frozen
class SiteConfig:
    """The shape and behaviour of a generated site, so that a load scenario
    knows in advance which pages exist and which of them fail.

    ``latency`` is how long the server waits before answering each request;
    ``error_rate`` is the fraction of non-root pages answering 500, chosen by a
    hash of ``(seed, path)`` so the same config always fails the same pages.
    """

    fan_out: int = attrs.field(default=3, validator=_count)
    depth: int = attrs.field(default=2, validator=_count)
    latency: float = attrs.field(default=0.0, validator=_seconds)
    error_rate: float = attrs.field(default=0.0, validator=_fraction)
    seed: int = attrs.field(default=0, validator=_integer)

    def page_count(self) -> int:
        """Return how many distinct pages the tree has: 1 + f + ... + f**depth."""
        return sum(self.fan_out**level for level in range(self.depth + 1))

    def pages(self) -> tuple[str, ...]:
        """Return every page's path, breadth first from ``/``."""
        pages = ["/"]
        level = ["/"]
        for _ in range(self.depth):
            level = [f"{path}p{i}/" for path in level for i in range(self.fan_out)]
            pages.extend(level)
        return tuple(pages)

    def depth_of(self, path: str) -> int | None:
        """Return the depth of the page at ``path``, or None if it is no page."""
        if path == "/":
            return 0
        if not (path.startswith("/") and path.endswith("/")):
            return None
        parts = path[1:-1].split("/")
        if len(parts) > self.depth:
            return None
        for part in parts:
            index = part[1:]
            if not (part[:1] == "p" and index.isdecimal() and str(int(index)) == index):
                return None
            if int(index) >= self.fan_out:
                return None
        return len(parts)

    def is_error(self, path: str) -> bool:
        """Return whether the page at ``path`` answers 500 (the root never does)."""
        if path == "/":
            return False
        digest = hashlib.blake2b(f"{self.seed}:{path}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.error_rate


@attrs.frozen(eq=False)
class Site:
    """A running generated site; ``requests`` counts requests per path as the
    server receives them, which shows a crawl really went over loopback."""

    base_url: str
    config: SiteConfig
    requests: Counter[str]

    def url(self, path: str) -> str:
        """Return the absolute URL of ``path`` on this site."""
        return urljoin(self.base_url, path)


@attrs.frozen
class Page:
    """What a crawler learns from fetching one URL: its status, its size in
    bytes and its same-site links, resolved, unfragmented and de-duplicated."""

    url: str
    status: int
    links: tuple[str, ...]
    size: int


def _render(config: SiteConfig, path: str, depth: int, origin: str) -> bytes:
    """Return a page's HTML, mixing relative, root-relative and absolute links."""
    hrefs = []
    if depth < config.depth:
        hrefs = [f"p{i}/" if i % 2 == 0 else f"{origin}{path}p{i}/" for i in range(config.fan_out)]
        hrefs += ["p0/#top"] if config.fan_out else []
    hrefs += ["/", "../"] if depth else ["/"]
    hrefs.append(f"{_EXTERNAL}{path}")
    anchors = "".join(f'<a href="{html.escape(href)}">{html.escape(href)}</a>' for href in hrefs)
    return f"<html><body><h1>{html.escape(path)}</h1>{anchors}</body></html>".encode()


def _respond(config: SiteConfig, request: h11.Request, path: str) -> tuple[int, bytes]:
    """Return the status and body answering ``request`` for ``path``."""
    if request.method != b"GET":
        return 405, b"<html><body><h1>405 Method Not Allowed</h1></body></html>"
    depth = config.depth_of(path)
    if depth is None:
        return 404, b"<html><body><h1>404 Not Found</h1></body></html>"
    if config.is_error(path):
        return 500, b"<html><body><h1>500 Internal Server Error</h1></body></html>"
    host = dict(request.headers).get(b"host", b"").decode("latin-1")
    return 200, _render(config, path, depth, f"http://{host}" if host else "")


async def _next_event(
    conn: h11.Connection, stream: trio.SocketStream
) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    """Return the next event, reading from the socket until h11 has one."""
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
    return event


async def _serve_connection(
    stream: trio.SocketStream, *, config: SiteConfig, requests: Counter[str]
) -> None:
    """Answer requests on one connection, kept alive until the client closes it.

    A client that disconnects or speaks broken HTTP just loses its connection:
    the load test kills crawlers on purpose, and that must not stop the site.
    """
    conn = h11.Connection(h11.SERVER)
    try:
        while isinstance(request := await _next_event(conn, stream), h11.Request):
            while not isinstance(await _next_event(conn, stream), h11.EndOfMessage):
                pass  # a request body, which no page needs
            path = urlsplit(request.target.decode("latin-1")).path
            requests[path] += 1
            await trio.sleep(config.latency)
            status, body = _respond(config, request, path)
            headers = [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
            ]
            if status == 405:
                headers.append(("Allow", "GET"))
            response = conn.send(h11.Response(status_code=status, headers=headers))
            response += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            await stream.send_all(response)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # the client asked to close, or spoke HTTP/1.0
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError):
        return


@contextlib.asynccontextmanager
async def serve_site(config: SiteConfig | None = None) -> AsyncIterator[Site]:
    """Serve the site of ``config`` on 127.0.0.1, on a port the OS picks, until
    the block ends; leaving the block cancels the server and its connections.

    For example::

        async with serve_site(SiteConfig(fan_out=2, depth=2)) as site:
            async with httpx.AsyncClient() as client:
                page = await fetch_page(client, site.base_url)
    """
    config = SiteConfig() if config is None else config
    requests: Counter[str] = Counter()
    handler = partial(_serve_connection, config=config, requests=requests)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=_HOST))
            port = listeners[0].socket.getsockname()[1]
            try:
                yield Site(f"http://{_HOST}:{port}/", config, requests)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The server's tasks end only by cancellation, which the nursery absorbs,
        # so a lone exception is the caller's own: give it back unwrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _origin(url: str) -> tuple[str, str | None, int | None] | None:
    """Return ``url``'s scheme, host and port, or None if its port is invalid."""
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    return parts.scheme, parts.hostname, port


async def fetch_page(client: httpx.AsyncClient, url: str) -> Page:
    """GET ``url`` and return its status and its links on the same scheme, host
    and port, in first-seen order.

    A non-2xx or non-HTML answer is a page without links rather than an error,
    since for a crawler it is an outcome; network errors propagate as httpx
    raised them, so the caller decides whether to retry.
    """
    response = await client.get(url)
    size = len(response.content)
    content_type = response.headers.get("content-type", "")
    if not response.is_success or "html" not in content_type.lower():
        return Page(url=url, status=response.status_code, links=(), size=size)
    base = str(response.url)
    origin = _origin(base)
    links: dict[str, None] = {}
    for match in _HREF.finditer(response.text):
        href = html.unescape(next((g for g in match.groups() if g is not None), "")).strip()
        try:
            link = urldefrag(urljoin(base, href)).url
        except ValueError:
            continue  # a malformed URL, such as an unclosed IPv6 host
        if _origin(link) == origin:
            links.setdefault(link, None)
    return Page(url=url, status=response.status_code, links=tuple(links), size=size)
