"""Packages a step references: feeds to download them from, a shared cache, safe extraction.

The worker calls ``prepare(ref, FeedRegistry(redis), PackageCache(root, max_bytes, redis),
workdir)`` for each ``PackageRef`` of a step and adds ``PreparedPackage.variables()`` to the
step's variables; with ``spares=Spares(...)`` (``spares.py``) a cache hit takes a copy staged in
advance (one rename) instead of extracting. Feed types live one per module (directory, http,
nuget, builtin), archive formats likewise (zips, tars); ``feed.py`` and ``archive.py`` are their
interfaces.
"""

from __future__ import annotations

from workerpool.packages.archive import Extracted
from workerpool.packages.builtin import BuiltinFeed, BuiltinPackage, list_packages, push
from workerpool.packages.cache import CachedPackage, PackageCache
from workerpool.packages.directory import DirectoryFeed
from workerpool.packages.feed import EXTENSIONS, Feed, split_file_name
from workerpool.packages.formats import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, extract
from workerpool.packages.http import HttpFeed
from workerpool.packages.install import PreparedPackage, prepare
from workerpool.packages.nuget import NuGetFeed
from workerpool.packages.ref import PackageRef
from workerpool.packages.registry import FEED_TYPES, FeedRegistry
from workerpool.packages.spares import Spares

__all__ = [
    "DEFAULT_MAX_BYTES", "DEFAULT_MAX_ENTRIES", "EXTENSIONS", "FEED_TYPES", "BuiltinFeed",
    "BuiltinPackage", "CachedPackage", "DirectoryFeed", "Extracted", "Feed", "FeedRegistry",
    "HttpFeed", "NuGetFeed", "PackageCache", "PackageRef", "PreparedPackage", "Spares", "extract",
    "list_packages", "prepare", "push", "split_file_name",
]
