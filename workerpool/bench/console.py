"""Figure 11: the console's pools page with 200 pools and 1,000 workers, in server time.

The page is timed where the console measures itself: the ``Server-Timing`` header each page
carries (the handler's time from the request's start to its last byte written: the Redis read,
the template, the write), read by a logged-in HTTP client over loopback. The pools and the
simulated workers (live heartbeats, as ``scale.add_workers`` makes them) are in a Redis database
of their own, so the figure sees only its own pools and the others' keys are untouched.
"""

from __future__ import annotations

import http.cookiejar
import re
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlunparse

from workerpool.bench import scale
from workerpool.bench.figures import median, percentile
from workerpool.bench.harness import BenchFailed, Harness
from workerpool.bench.report import Goal, Report, Row
from workerpool.client import Client
from workerpool.console import service
from workerpool.console.accounts import Accounts
from workerpool.core.connection import connect

if TYPE_CHECKING:
    from workerpool.bench.runner import Plan

FIGURE = 11
DATABASE = 9  # the figure's own pools and workers
GOAL_MS = 150.0
_TIMING = re.compile(r"app;dur=([0-9.]+)")


def in_database(url: str, number: int) -> str:
    """*url* (``redis://``) with its path naming database *number*."""
    return urlunparse(urlparse(url)._replace(path=f"/{number}"))


class Browser:
    """A logged-in HTTP client of the console: its cookies and the CSRF token."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def login(self, name: str, password: str) -> None:
        self.opener.open(self.base + "login", timeout=30).read()
        token = next(c.value for c in self.jar if c.name == "_xsrf")
        form = urllib.parse.urlencode({"name": name, "password": password, "_xsrf": token})
        with self.opener.open(self.base + "login", form.encode(), timeout=30) as reply:
            if "login" in reply.url:
                raise BenchFailed("the bench could not log in to its console")

    def server_ms(self, path: str) -> float:
        """The page's own time, from its ``Server-Timing`` header."""
        with self.opener.open(self.base + path.lstrip("/"), timeout=30) as reply:
            reply.read()
            found = _TIMING.search(reply.headers.get("Server-Timing", ""))
        if reply.status != 200 or found is None:
            raise BenchFailed(f"the console's {path} answered {reply.status} without its time")
        return float(found[1])


def phase(harness: Harness, plan: Plan, report: Report,
          progress: Callable[[str], None]) -> None:
    """Fill database ``DATABASE`` with ``plan.console_pools`` pools and
    ``plan.console_workers`` simulated workers, time the pools page ``plan.samples`` times, and
    add figure 11's rows; the database is emptied again afterwards."""
    if urlparse(harness.url).scheme not in ("redis", "rediss"):
        report.add(Row(FIGURE, "console pools page", "", None,
                       note="not measured: the figure's database needs a redis:// URL"))
        return
    url = in_database(harness.url, DATABASE)
    raw = connect(url)
    client = Client(url, harness.settings)
    accounts, password = Accounts.one_time_admin()
    try:
        raw.flushdb()
        progress(f"11/11 console: {plan.console_pools} pools, {plan.console_workers} simulated "
                 f"workers, the pools page {plan.samples} times")
        pools = scale.add_pools(client, plan.console_pools)
        scale.add_workers(raw, pools, plan.console_workers)
        with service.serving(harness.settings, url, 0, "127.0.0.1", accounts) as console:
            assert console is not None
            browser = Browser(console.url)
            browser.login("admin", password)
            browser.server_ms("/")  # the first render compiles the template
            samples = [browser.server_ms("/") for _ in range(plan.samples)]
    finally:
        raw.flushdb()
        raw.close()
        client.close()
    shape = f"{plan.console_pools:,} pools, {plan.console_workers:,} workers"
    report.rows.extend([
        Row(FIGURE, f"pools page, server time p50 ({shape})", "ms", median(samples),
            goal=Goal("<=", GOAL_MS, False)),
        Row(FIGURE, f"pools page, server time p95 ({shape})", "ms",
            percentile(samples, 95)),
    ])
