"""A feed served over HTTP(S): ``<base>/<id>.<version>.<ext>``; also the HTTP plumbing of feeds."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from urllib.parse import quote

from workerpool.core.connection import redact
from workerpool.core.errors import PackageError
from workerpool.worker.packages.feed import CHUNK, EXTENSIONS, Download, Feed

USER_AGENT = "workerpool"
Fail = Callable[[str], PackageError]


def get(url: str, timeout: float, fail: Fail) -> http.client.HTTPResponse | None:
    """The open response for *url*, None on 404, else *fail* with why the feed did not answer."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 410):
            return None
        raise fail(f"feed answered HTTP {exc.code} {exc.reason} for {redact(url)}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise fail(_timed_out(url, timeout)) from None
        raise fail(f"feed unreachable at {redact(url)} ({exc.reason}); check the feed URI "
                   "(`workerpool feed list`) and that its server is up") from None
    except TimeoutError:
        raise fail(_timed_out(url, timeout)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise fail(f"feed unreachable at {redact(url)} ({exc or type(exc).__name__}); check "
                   "that its server is up") from None
    return response


def _timed_out(url: str, timeout: float) -> str:
    return f"feed timed out after {timeout:g}s waiting for {redact(url)}; check that its server "\
           "is healthy"


def stream(response: http.client.HTTPResponse, extension: str,
           sha256: str | None = None) -> Download:
    length = response.getheader("Content-Length")
    size = int(length) if length and length.isdigit() else None
    return Download(extension, size, _chunks(response), sha256, close=response.close)


def _chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    while chunk := response.read(CHUNK):
        yield chunk


class HttpFeed(Feed):
    type = "http"

    def open(self, package_id: str, version: str) -> Download:
        def fail(reason: str) -> PackageError:
            return self.fail(package_id, version, reason)

        base = f"{self.uri.rstrip('/')}/{quote(package_id)}.{quote(version)}"
        for ext in EXTENSIONS:
            response = get(base + ext, self.timeout, fail)
            if response is not None:
                return stream(response, ext)
        tried = "{" + ",".join(e.lstrip(".") for e in EXTENSIONS) + "}"
        raise fail(f"unknown package or version: the feed has no {redact(base)}.{tried}")
