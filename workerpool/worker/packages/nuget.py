"""A NuGet v3 feed: its service index names the flat container packages are downloaded from."""

from __future__ import annotations

import json
from urllib.parse import quote

from workerpool.core.connection import redact
from workerpool.core.errors import PackageError
from workerpool.worker.packages.feed import Download, Feed
from workerpool.worker.packages.http import Fail, get, stream

FLAT_CONTAINER = "PackageBaseAddress/3.0.0"
MAX_INDEX_BYTES = 16 << 20


def normalize_version(version: str) -> str:
    """NuGet's normalized form, as the flat container spells it: ``1.0`` -> ``1.0.0``,
    ``1.0.0.0`` -> ``1.0.0``, no build metadata, lower case."""
    release, dash, label = version.split("+", 1)[0].partition("-")
    parts = release.split(".")
    if all(part.isdigit() for part in parts) and 1 <= len(parts) <= 4:
        numbers = [str(int(part)) for part in parts] + ["0"] * (3 - len(parts))
        if len(numbers) == 4 and numbers[3] == "0":
            numbers.pop()
        release = ".".join(numbers)
    return (release + dash + label).lower()


class NuGetFeed(Feed):
    type = "nuget"
    _base: str | None = None

    def open(self, package_id: str, version: str) -> Download:
        def fail(reason: str) -> PackageError:
            return self.fail(package_id, version, reason)

        base = self._flat_container(fail)
        lower_id, lower_version = quote(package_id.lower()), quote(normalize_version(version))
        url = f"{base}{lower_id}/{lower_version}/{lower_id}.{lower_version}.nupkg"
        response = get(url, self.timeout, fail)
        if response is None:
            raise fail(self._missing(base, lower_id, fail))
        return stream(response, ".nupkg")

    def _flat_container(self, fail: Fail) -> str:
        """The flat container's base URL from the service index (read once per feed object)."""
        if self._base is None:
            index = self._json(self.uri, fail)
            if index is None:
                raise fail(f"the feed has no service index at {redact(self.uri)}; a NuGet v3 "
                           "feed URI ends in /index.json")
            resources = index.get("resources") if isinstance(index, dict) else None
            for resource in resources if isinstance(resources, list) else []:
                kind = resource.get("@type") if isinstance(resource, dict) else None
                if isinstance(kind, str) and kind.startswith(FLAT_CONTAINER) \
                        and isinstance(resource.get("@id"), str):
                    self._base = resource["@id"].rstrip("/") + "/"
                    break
            else:
                raise fail(f"service index {redact(self.uri)} lists no {FLAT_CONTAINER} "
                           "resource; is it a NuGet v3 feed?")
        return self._base

    def _missing(self, base: str, lower_id: str, fail: Fail) -> str:
        versions = self._json(f"{base}{lower_id}/index.json", fail)
        listed = versions.get("versions") if isinstance(versions, dict) else None
        if not isinstance(listed, list) or not listed:
            return "unknown package: the feed has no package with this id"
        return f"unknown version (the feed has {', '.join(map(str, listed[-10:]))})"

    def _json(self, url: str, fail: Fail) -> object:
        response = get(url, self.timeout, fail)
        if response is None:
            return None
        with response:
            try:
                return json.loads(response.read(MAX_INDEX_BYTES))
            except TimeoutError:
                raise fail(f"feed timed out after {self.timeout:g}s reading "
                           f"{redact(url)}") from None
            except (OSError, ValueError) as exc:
                raise fail(f"feed sent unreadable JSON at {redact(url)} ({exc})") from None
