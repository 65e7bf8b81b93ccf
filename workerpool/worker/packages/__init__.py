"""Packages a step references: feeds to download them from, a shared cache, safe extraction.

The worker calls ``install.prepare(ref, FeedRegistry(redis), PackageCache(root, max_bytes,
redis), workdir)`` for each ``PackageRef`` (``workerpool.core.packageref``) of a step and adds
``PreparedPackage.variables()`` to the step's variables; with ``spares=Spares(...)``
(``spares.py``) a cache hit takes a copy staged in advance (one rename) instead of extracting.
Feed types live one per module (directory, http, nuget, builtin), archive formats likewise
(zips, tars); ``feed.py`` and ``archive.py`` are their interfaces.
"""
