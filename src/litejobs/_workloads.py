"""The job kinds the load scenarios run: ``work``, synthetic and offline, and
``crawl_url``, a real crawl over the generated site on loopback."""

from __future__ import annotations

from typing import Any

import httpx

from litejobs._jobs import Job
from litejobs._runtime import Runtime
from litejobs._site import SiteConfig, fetch_page
from litejobs._worker import Handler, JobContext

SYNTHETIC_KIND = "work"
CRAWL_KIND = "crawl_url"


class FetchError(Exception):
    """A page answered with a server error; the pool retries the job."""


def synthetic_handlers(runtime: Runtime) -> dict[str, Handler]:
    """``work`` jobs wait ``payload["work_s"]`` seconds through the runtime and
    return their number: a job that costs time but no I/O."""

    async def work(job: Job, ctx: JobContext) -> Any:
        await runtime.sleep(job.payload["work_s"])
        return {"n": job.payload["n"]}

    return {SYNTHETIC_KIND: work}


def crawl_payload(url: str, depth: int, max_depth: int, follow_links: bool) -> dict[str, Any]:
    """What a ``crawl_url`` job carries: everything it needs, so no handler
    has to read its parent."""
    return {"url": url, "depth": depth, "max_depth": max_depth, "follow_links": follow_links}


def crawl_handlers(client: httpx.AsyncClient) -> dict[str, Handler]:
    """``crawl_url`` jobs fetch their page, store what they saw, and spawn a
    child for every link the root parent has not seen (the URL is the child's
    key, so spawning is insert-or-ignore and a redelivered job spawns nothing
    twice)."""

    async def crawl_url(job: Job, ctx: JobContext) -> Any:
        url, depth = job.payload["url"], job.payload["depth"]
        max_depth, follow = job.payload["max_depth"], job.payload["follow_links"]
        page = await fetch_page(client, url)
        if page.status >= 500:
            raise FetchError(f"HTTP {page.status} from {url}")
        spawned = 0
        if follow and depth < max_depth and page.links:
            children = [crawl_payload(link, depth + 1, max_depth, follow) for link in page.links]
            spawned = len(await ctx.spawn(CRAWL_KIND, children, keys=list(page.links)))
        return {
            "status": page.status,
            "links": len(page.links),
            "spawned": spawned,
            "bytes": page.size,
        }

    return {CRAWL_KIND: crawl_url}


def expected_crawl(config: SiteConfig, max_depth: int, follow_links: bool = True) -> set[str]:
    """The paths a crawl from the root reaches: children of every page that
    answers (not an error page) above ``max_depth``."""
    reached, frontier = {"/"}, ["/"]
    while frontier and follow_links:
        path = frontier.pop()
        depth = config.depth_of(path)
        if depth is None or depth >= max_depth or depth >= config.depth or config.is_error(path):
            continue
        for i in range(config.fan_out):
            child = f"{path}p{i}/"
            if child not in reached:
                reached.add(child)
                frontier.append(child)
    return reached
