"""The pools page: a small read-only web view of the worker pools screen.

Each pool with its description, default flag, workers and their health, Queued steps (and how
many of them have no message: purged or lost) and running leases, plus the built-in worker's
state; as HTML at ``/`` (refreshing itself) and as JSON at ``/api/pools``, and the pools'
Prometheus series at ``/metrics`` (``server/metrics.py``). It shows what waits in pools that
have no online worker, which Flower cannot (Flower only knows the queues that online workers
report). Served from a thread by ``workerpool server --http-port``, next to Flower by
``workerpool flower``, and ``/metrics`` alone by ``workerpool metrics``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import redis
from prometheus_client.registry import CollectorRegistry

from workerpool.core import keys
from workerpool.core.connection import connect, guarded
from workerpool.core.errors import BadInput, Infrastructure
from workerpool.core.pools import Pool, ordered
from workerpool.core.snapshot import Lease, Snapshot, read_snapshot, status_view
from workerpool.core.workers import WorkerInfo
from workerpool.server import metrics

REFRESH_SECONDS = 5

# --- what the page shows (pure functions of a snapshot) ------------------------------------


def _ago(timestamp: float | None, now: float) -> str:
    return "never" if not timestamp else f"{max(0.0, now - timestamp):.1f}s ago"


def _workers_html(workers: list[WorkerInfo], now: float) -> str:
    if not workers:
        return '<p class="none">No workers registered.</p>'
    rows = "".join(
        f'<tr><td>{escape(w.name)}</td><td><span class="state {escape(w.state.lower())}">'
        f"{escape(w.state)}</span>{_reason(w)}</td><td>{escape(w.host)}</td>"
        f"<td>{w.heartbeat.running if w.heartbeat else 0} / {w.concurrency}</td>"
        f"<td>{escape(_ago(w.heartbeat.time if w.heartbeat else None, now))}</td></tr>"
        for w in workers)
    return ("<table><thead><tr><th>Worker</th><th>Health</th><th>Host</th><th>Running</th>"
            f"<th>Last heartbeat</th></tr></thead><tbody>{rows}</tbody></table>")


def _reason(worker: WorkerInfo) -> str:
    reason = worker.heartbeat.reason if worker.heartbeat else ""
    return f' <span class="reason">{escape(reason)}</span>' if reason else ""


def _leases_html(leases: list[Lease], now: float) -> str:
    if not leases:
        return ""
    rows = "".join(
        f"<tr><td>{escape(le.step_name or 'script')}</td><td><code>{escape(le.step_id)}</code>"
        f"</td><td>{escape(le.worker)}</td><td>{escape(_ago(le.started_at, now))}</td></tr>"
        for le in leases)
    return ('<h3>Running leases</h3><table class="leases"><thead><tr><th>Step</th><th>Id</th>'
            f"<th>Worker</th><th>Since</th></tr></thead><tbody>{rows}</tbody></table>")


def _counts_html(snap: Snapshot, slug: str, leases: list[Lease]) -> str:
    counts = snap.counts(slug)
    missing = counts.without_message
    shown = f"{counts.records} queued" + (f", {missing} without a message" if missing else "")
    kind = "count missing" if missing else "count"
    return (f'<div class="counts"><span class="{kind}" data-queued="{counts.records}" '
            f'data-without-message="{missing}">{shown}</span><span class="count" '
            f'data-running="{len(leases)}">{len(leases)} running</span></div>')


def _pool_html(snap: Snapshot, pool: Pool, now: float) -> str:
    leases = [le for le in snap.leases if le.pool == pool.slug]
    workers = snap.workers_in(pool.slug)
    healthy = sum(w.online_healthy for w in workers)
    badge = ' <span class="badge">Default</span>' if pool.is_default else ""
    if pool.max_running:
        badge += (f' <span class="badge" data-max-running="{pool.max_running}">'
                  f"max {pool.max_running} running</span>")
    if pool.paused:
        why = f": {escape(pool.paused_reason)}" if pool.paused_reason else ""
        badge += f' <span class="badge paused" data-paused="1">Paused{why}</span>'
    description = escape(pool.description) or '<span class="none">No description.</span>'
    return (f'<section class="pool" id="pool-{escape(pool.slug)}"><h2>{escape(pool.name)}{badge}'
            f'</h2><p class="meta">queue <code>{escape(pool.queue)}</code> &middot; {healthy} of '
            f'{len(workers)} workers healthy</p><p class="description">{description}</p>'
            f"{_counts_html(snap, pool.slug, leases)}{_workers_html(workers, now)}"
            f"{_leases_html(leases, now)}</section>")


def _builtin_html(snap: Snapshot, now: float) -> str:
    leases = [le for le in snap.leases if le.pool == keys.BUILTIN_POOL]
    workers = snap.workers_in(keys.BUILTIN_POOL)
    enabled = "enabled" if snap.builtin_enabled else "disabled"
    note = ("runs steps for the server and for the default pool while it has no workers"
            if snap.builtin_enabled else "nothing is routed to it; steps that need it are refused")
    return (f'<section class="pool builtin" id="builtin-worker"><h2>Built-in worker '
            f'<span class="state {enabled}">{enabled.capitalize()}</span></h2>'
            f'<p class="meta">queue <code>{escape(keys.BUILTIN_QUEUE)}</code> &middot; {note}</p>'
            f"{_counts_html(snap, keys.BUILTIN_POOL, leases)}{_workers_html(workers, now)}"
            f"{_leases_html(leases, now)}</section>")


STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1f2933}
header{background:#0d3b66;color:#fff;padding:12px 24px;display:flex;align-items:baseline;gap:24px}
header h1{font-size:20px;margin:0}header a{color:#cfe3ff}
header .updated{margin-left:auto;opacity:.8}
main{padding:16px 24px;display:grid;gap:16px;
grid-template-columns:repeat(auto-fill,minmax(560px,1fr))}
.pool{background:#fff;border-radius:6px;padding:12px 16px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.pool h2{font-size:17px;margin:0 0 4px}.pool h3{font-size:14px;margin:12px 0 4px}
.meta{color:#52606d;font-size:13px;margin:0}.description{margin:6px 0}
.badge.paused{background:#9b2c2c}
.none{color:#7b8794;font-style:italic}.badge{background:#0d3b66;color:#fff;border-radius:10px;
padding:1px 8px;font-size:12px;vertical-align:middle}
.counts{display:flex;gap:16px;margin:6px 0}
.count{background:#eef2f7;border-radius:4px;padding:2px 8px}
.count.missing{background:#fde2e1;color:#a61b1b}
table{border-collapse:collapse;width:100%;font-size:13px}th{text-align:left;color:#52606d}
td,th{padding:4px 8px;border-bottom:1px solid #e4e7eb}
.state{border-radius:4px;padding:1px 6px;font-size:12px;font-weight:600}
.healthy,.enabled{background:#d5f5e3;color:#1e7b46}
.unhealthy,.disabled{background:#fde2e1;color:#a61b1b}
.offline{background:#e4e7eb;color:#52606d}.starting{background:#fff3c4;color:#8d6b00}
.draining{background:#e3e8ff;color:#2f3f9e}
.reason{color:#a61b1b;font-size:12px}.error{padding:24px;color:#a61b1b}
"""


def _page(body: str, updated: str, flower_url: str | None) -> str:
    flower = f'<a href="{escape(flower_url)}">Flower</a>' if flower_url else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
            f"<title>Worker pools - workerpool</title><style>{STYLE}</style></head><body>"
            f'<header><h1>Worker pools</h1>{flower}<span class="updated">updated '
            f"{escape(updated)}</span></header>{body}</body></html>")


def render_html(snap: Snapshot, now: float | None = None, flower_url: str | None = None) -> str:
    """The pools page for *snap*; every shown value is HTML-escaped."""
    now = time.time() if now is None else now
    pools = ordered(snap.pools.values())
    body = "".join(_pool_html(snap, p, now) for p in pools) + _builtin_html(snap, now)
    updated = datetime.fromtimestamp(now).strftime("%H:%M:%S")
    return _page(f"<main>{body}</main>", updated, flower_url)


def render_error(message: str, flower_url: str | None = None) -> str:
    updated = datetime.now().strftime("%H:%M:%S")
    return _page(f'<p class="error">{escape(message)}</p>', updated, flower_url)


# --- serving ------------------------------------------------------------------------------


PAGES = ("/", "/api/pools", "/metrics")
METRICS_ONLY = ("/metrics",)


@dataclass(frozen=True)
class PageConfig:
    """What a request handler needs: Redis, optional basic auth, and where Flower runs."""

    redis: redis.Redis
    url: str
    basic_auth: str | None = None  # "user:password"
    flower_port: int | None = None
    paths: tuple[str, ...] = PAGES  # what is served (``workerpool metrics``: /metrics only)

    @functools.cached_property
    def metrics(self) -> CollectorRegistry:
        return metrics.registry(lambda: guarded(lambda: metrics.read(self.redis), self.url))


class PoolsHandler(BaseHTTPRequestHandler):
    """GET/HEAD only: ``/`` (HTML) and ``/api/pools`` (JSON); nothing can be changed here."""

    server: PoolsServer
    server_version = "workerpool"

    def do_GET(self) -> None:
        self._respond(include_body=True)

    def do_HEAD(self) -> None:
        self._respond(include_body=False)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the supervisor's terminal is for workerpool's own messages."""

    def _respond(self, include_body: bool) -> None:
        if not self._authorized():
            self._send(401, "text/plain; charset=utf-8", b"authentication required\n",
                       include_body, {"WWW-Authenticate": 'Basic realm="workerpool"'})
            return
        path = urlsplit(self.path).path
        config = self.server.config
        if path not in config.paths:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", include_body)
            return
        if path == "/metrics":
            self._send_metrics(include_body)
            return
        try:
            snap = guarded(lambda: read_snapshot(config.redis, detail=True), config.url)
        except (Infrastructure, redis.RedisError) as exc:
            self._send_error(path, str(exc), include_body)
            return
        if path == "/api/pools":
            self._send(200, "application/json", json.dumps(status_view(snap)).encode(),
                       include_body)
        else:
            self._send(200, "text/html; charset=utf-8",
                       render_html(snap, flower_url=self._flower_url()).encode(), include_body)

    def _send_metrics(self, include_body: bool) -> None:
        try:
            body = metrics.exposition(self.server.config.metrics)
        except (Infrastructure, redis.RedisError) as exc:
            self._send(503, "text/plain; charset=utf-8", f"{exc}\n".encode(), include_body)
            return
        self._send(200, metrics.CONTENT_TYPE, body, include_body)

    def _send_error(self, path: str, message: str, include_body: bool) -> None:
        if path == "/api/pools":
            self._send(503, "application/json", json.dumps({"error": message}).encode(),
                       include_body)
        else:
            self._send(503, "text/html; charset=utf-8",
                       render_error(message, self._flower_url()).encode(), include_body)

    def _authorized(self) -> bool:
        expected = self.server.config.basic_auth
        if expected is None:
            return True
        token = base64.b64encode(expected.encode()).decode()
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Basic {token}".encode())

    def _flower_url(self) -> str | None:
        port = self.server.config.flower_port
        if port is None:
            return None
        host = urlsplit(f"//{self.headers.get('Host', '')}").hostname or "localhost"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def _send(self, status: int, content_type: str, body: bytes, include_body: bool,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy",
                         "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if include_body:
            self.wfile.write(body)


class PoolsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], config: PageConfig) -> None:
        super().__init__(address, PoolsHandler)
        self.config = config

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def start(redis_url: str, port: int, host: str = "127.0.0.1", basic_auth: str | None = None,
          flower_port: int | None = None, paths: tuple[str, ...] = PAGES) -> PoolsServer:
    """Serve the page (or only *paths*) on *host*:*port* (0: any free port) from a daemon
    thread."""
    config = PageConfig(redis=connect(redis_url), url=redis_url, basic_auth=basic_auth,
                        flower_port=flower_port, paths=paths)
    what = "the pools page" if paths == PAGES else "/metrics"
    try:
        server = PoolsServer((host, port), config)
    except OSError as exc:
        config.redis.close()
        raise BadInput(f"cannot serve {what} on {host}:{port} ({exc.strerror or exc}); "
                       "choose another port or host") from None
    threading.Thread(target=server.serve_forever, name="pools-page", daemon=True).start()
    return server


def stop(server: PoolsServer) -> None:
    server.shutdown()
    server.server_close()
    server.config.redis.close()


@contextlib.contextmanager
def serving(redis_url: str, port: int | None, host: str = "127.0.0.1",
            basic_auth: str | None = None, flower_port: int | None = None,
            paths: tuple[str, ...] = PAGES) -> Iterator[PoolsServer | None]:
    """The page for the duration of a ``with`` block; nothing when *port* is ``None``."""
    if port is None:
        yield None
        return
    server = start(redis_url, port, host, basic_auth, flower_port, paths)
    try:
        yield server
    finally:
        stop(server)
