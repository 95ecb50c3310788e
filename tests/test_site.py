"""The generated crawl site over loopback, and fetch_page against it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable

import h11
import httpx
import pytest
import trio

from litejobs._errors import ConfigError
from litejobs._site import Page, Site, SiteConfig, fetch_page, serve_site

SMALL = SiteConfig(fan_out=2, depth=2)


def run_with_site(config: SiteConfig, test: Callable[[Site, httpx.AsyncClient], Awaitable[None]]):
    """Run ``test`` under trio against a live site and one pooled client."""

    async def main() -> None:
        with trio.fail_after(5):
            async with serve_site(config) as site, httpx.AsyncClient() as client:
                await test(site, client)

    trio.run(main)


async def crawl(site: Site, client: httpx.AsyncClient) -> dict[str, Page]:
    """Fetch every page reachable from the root, breadth first."""
    seen = {site.base_url: None}
    frontier = [site.base_url]
    pages = {}
    while frontier:
        url = frontier.pop(0)
        pages[url] = page = await fetch_page(client, url)
        for link in page.links:
            if link not in seen:
                seen[link] = None
                frontier.append(link)
    return pages


def test_a_small_site_lists_its_seven_pages_breadth_first():
    assert SMALL.pages() == ("/", "/p0/", "/p1/", "/p0/p0/", "/p0/p1/", "/p1/p0/", "/p1/p1/")
    assert SMALL.page_count() == 7
    assert SiteConfig().page_count() == len(SiteConfig().pages()) == 13
    assert SiteConfig(fan_out=0).pages() == ("/",)
    assert SiteConfig(depth=0).page_count() == 1


def test_only_tree_paths_are_pages():
    assert [SMALL.depth_of(path) for path in SMALL.pages()] == [0, 1, 1, 2, 2, 2, 2]
    for path in ["", "/p0", "p0/", "/p2/", "/p00/", "/q0/", "/p/", "/p-1/", "/p0/p0/p0/", "//"]:
        assert SMALL.depth_of(path) is None, path


def test_crawling_from_the_root_reaches_exactly_the_pages_over_loopback():
    async def test(site, client):
        pages = await crawl(site, client)
        assert set(pages) == {site.url(path) for path in SMALL.pages()}
        assert {page.status for page in pages.values()} == {200}
        assert site.requests == Counter(dict.fromkeys(SMALL.pages(), 1))

    run_with_site(SMALL, test)


def test_a_page_drops_external_fragment_and_duplicate_links():
    async def test(site, client):
        raw = (await client.get(site.url("/p1/"))).text
        assert "http://example.invalid/p1/" in raw
        assert raw.count("href=") == 6  # two children, a fragment, root, parent, external
        page = await fetch_page(client, site.url("/p1/"))
        assert page == Page(
            url=site.url("/p1/"),
            status=200,
            links=(site.url("/p1/p0/"), site.url("/p1/p1/"), site.url("/")),
            size=len(raw.encode()),
        )
        leaf = await fetch_page(client, site.url("/p1/p0/"))
        assert leaf.links == (site.url("/"), site.url("/p1/"))
        root = await fetch_page(client, site.base_url)
        assert root.links == (site.url("/p0/"), site.url("/p1/"), site.base_url)

    run_with_site(SMALL, test)


def test_unknown_paths_answer_404_without_links():
    async def test(site, client):
        for path in ["/nope/", "/p2/", "/p0/p0/p0/", "/p0", "/p00/"]:
            page = await fetch_page(client, site.url(path))
            assert (page.status, page.links) == (404, ()), path
        assert site.requests["/p2/"] == 1

    run_with_site(SMALL, test)


def test_a_method_other_than_get_answers_405():
    async def test(site, client):
        response = await client.post(site.base_url, content=b"x" * 10_000)
        assert (response.status_code, response.headers["allow"]) == (405, "GET")
        assert (await fetch_page(client, site.base_url)).status == 200

    run_with_site(SMALL, test)


def statuses(config: SiteConfig) -> dict[str, int]:
    result = {}

    async def test(site, client):
        for path in config.pages():
            result[path] = (await fetch_page(client, site.url(path))).status

    run_with_site(config, test)
    return result


def test_the_same_config_fails_the_same_pages():
    config = SiteConfig(fan_out=3, depth=2, error_rate=0.5, seed=7)
    first, second = statuses(config), statuses(config)
    assert first == second
    failing = {path for path, status in first.items() if status == 500}
    assert failing == {path for path in config.pages() if config.is_error(path)}
    assert 0 < len(failing) < config.page_count() - 1
    assert set(first.values()) == {200, 500}
    assert first["/"] == 200


def test_error_rate_one_fails_every_page_but_the_root_and_zero_none():
    every = statuses(SiteConfig(fan_out=2, depth=2, error_rate=1.0))
    assert every == {path: 200 if path == "/" else 500 for path in SMALL.pages()}
    assert set(statuses(SiteConfig(fan_out=2, depth=2, error_rate=0.0)).values()) == {200}


def test_every_request_waits_the_configured_latency():
    async def test(site, client):
        for path in ["/", "/nope/"]:
            start = trio.current_time()
            await fetch_page(client, site.url(path))
            assert trio.current_time() - start >= 0.05

    run_with_site(SiteConfig(latency=0.05), test)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"fan_out": -1}, "fan_out"),
        ({"fan_out": 1.5}, "fan_out"),
        ({"depth": -1}, "depth"),
        ({"depth": True}, "depth"),
        ({"latency": -0.1}, "latency"),
        ({"latency": math.nan}, "latency"),
        ({"latency": math.inf}, "latency"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_rate": -0.1}, "error_rate"),
        ({"error_rate": math.nan}, "error_rate"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        SiteConfig(**kwargs)
    assert issubclass(ConfigError, ValueError)


def test_fifty_concurrent_fetches_over_one_client_all_succeed():
    config = SiteConfig(fan_out=3, depth=3)
    paths = [config.pages()[i % config.page_count()] for i in range(50)]

    async def test(site, client):
        pages = []

        async def fetch(path):
            pages.append(await fetch_page(client, site.url(path)))

        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(fetch, path)
        assert [page.status for page in pages] == [200] * 50
        assert site.requests == Counter(paths)

    run_with_site(config, test)


async def exchange(stream: trio.SocketStream, conn: h11.Connection, path: str) -> int:
    """Send one GET over ``stream`` and return the response's status."""
    request = h11.Request(method="GET", target=path, headers=[("Host", "x")])
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    status = 0
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
    return status


def test_a_connection_is_kept_alive_and_rude_clients_do_not_stop_the_server():
    async def test(site, client):
        port = int(site.base_url.rsplit(":", 1)[1].strip("/"))
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            conn = h11.Connection(h11.CLIENT)
            assert await exchange(stream, conn, "/") == 200
            conn.start_next_cycle()
            assert await exchange(stream, conn, "/missing") == 404
        for rude in [
            b"GET / HTTP/1.1\r\nHo",
            b"garbage\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ]:
            async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
                await stream.send_all(rude)
        await trio.sleep(0.01)  # let the server meet the closed sockets
        assert (await fetch_page(client, site.base_url)).status == 200

    run_with_site(SMALL, test)


def test_leaving_the_block_stops_the_server_and_keeps_the_callers_error():
    async def main():
        async with serve_site(SMALL) as site:
            pass
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await fetch_page(client, site.base_url)
        with pytest.raises(KeyError, match="mine"):
            async with serve_site(SMALL):
                raise KeyError("mine")

    trio.run(main)
