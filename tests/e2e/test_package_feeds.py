"""Package feeds served for real (a directory, local HTTP servers, the built-in feed in Redis),
the shared cache and its checksums, and preparing a step's packages. Nothing is mocked: HTTP
feeds are ``http.server`` threads on 127.0.0.1, the built-in feed is real Redis.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from archives import (
    SCRIPT,
    MiB,
    executable,
    nupkg,
    package_tar,
    package_zip,
    tree,
    zip_bytes,
)
from conftest import one_line
from httpd import Server

from workerpool.core import keys
from workerpool.core.errors import BadInput, PackageError, UnknownFeed
from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.builtin import BuiltinFeed, list_packages, push
from workerpool.worker.packages.cache import PackageCache
from workerpool.worker.packages.directory import DirectoryFeed
from workerpool.worker.packages.formats import extract
from workerpool.worker.packages.http import HttpFeed
from workerpool.worker.packages.install import prepare
from workerpool.worker.packages.nuget import NuGetFeed
from workerpool.worker.packages.registry import FeedRegistry

Cli = Callable[..., subprocess.CompletedProcess[str]]


# --- building archives ---------------------------------------------------------------------------














# --- feeds served for real -----------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, raw: redis.Redis) -> PackageCache:
    return PackageCache(tmp_path / "cache", 1 << 30, raw, "test-pool")


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "feed"
    folder.mkdir()
    (folder / "Acme.Database.1.2.0.zip").write_bytes(package_zip())
    (folder / "Acme.Database.1.3.0.tar.gz").write_bytes(package_tar())
    return folder


DB = PackageRef("db", "Acme.Database", "1.2.0", feed="files")




# --- directory feed ------------------------------------------------------------------------------


def test_directory_feed_downloads_once_then_reuses_the_cache(cache: PackageCache,
                                                             feed_dir: Path) -> None:
    feed = DirectoryFeed("files", str(feed_dir))
    seen: list[tuple[int, int | None]] = []
    with cache.fetch(DB, feed, progress=lambda done, total: seen.append((done, total))) as first:
        assert first.downloaded
        assert first.file_name == "Acme.Database.1.2.0.zip"
        assert first.path.read_bytes() == package_zip()
        assert first.sha256 == hashlib.sha256(package_zip()).hexdigest()
        assert not os.access(first.path, os.W_OK) or os.geteuid() == 0
    assert seen and seen[-1] == (len(package_zip()), len(package_zip()))
    (feed_dir / "Acme.Database.1.2.0.zip").unlink()  # a cached package never needs the feed
    with cache.fetch(DB, feed) as again:
        assert not again.downloaded
        assert again.path == first.path and again.sha256 == first.sha256
    tar = cache.fetch(PackageRef("db", "acme.database", "1.3.0", "files"), feed)
    assert tar.file_name == "acme.database.1.3.0.tar.gz" and tar.downloaded
    tar.release()


def test_directory_feed_unknown_package_or_version(cache: PackageCache, feed_dir: Path,
                                                   tmp_path: Path) -> None:
    feed = DirectoryFeed("files", str(feed_dir))
    with pytest.raises(PackageError) as caught:
        cache.fetch(PackageRef("db", "Acme.Database", "9.9.9", "files"), feed)
    one_line(caught.value, "package Acme.Database 9.9.9 from feed 'files':", "1.2.0, 1.3.0")
    with pytest.raises(PackageError) as caught:
        cache.fetch(PackageRef("db", "Acme.Nothing", "1.0.0", "files"), feed)
    one_line(caught.value, "package Acme.Nothing 1.0.0 from feed 'files':", "unknown package")
    missing = DirectoryFeed("gone", str(tmp_path / "not-mounted"))
    with pytest.raises(PackageError) as caught:
        cache.fetch(DB, missing)
    one_line(caught.value, "from feed 'gone'", "unreachable", "not-mounted")
    assert cache.entries() == []


# --- HTTP feed -----------------------------------------------------------------------------------


def test_http_feed_one_download_for_concurrent_threads(cache: PackageCache, feed_dir: Path,
                                                       serve: Callable[..., Server]) -> None:
    server = serve(feed_dir, delay=0.5)
    feed = HttpFeed("web", server.url + "/")
    ref = PackageRef("db", "Acme.Database", "1.2.0", "web")
    barrier = threading.Barrier(3)
    results: list[bool] = []
    errors: list[BaseException] = []

    def fetch() -> None:
        barrier.wait()
        try:
            with cache.fetch(ref, feed) as got:
                assert got.path.read_bytes() == package_zip()
                results.append(got.downloaded)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sorted(results) == [False, False, True]
    assert server.gets("/Acme.Database.1.2.0.zip") == 1


PROCESS_FETCH = """
import sys, pathlib, redis
from workerpool.worker.packages.http import HttpFeed
from workerpool.worker.packages.cache import PackageCache
from workerpool.core.packageref import PackageRef
client = redis.Redis.from_url(sys.argv[1], decode_responses=True)
cache = PackageCache(pathlib.Path(sys.argv[2]), 1 << 30, client, "test-pool")
ref = PackageRef("db", "Acme.Database", "1.2.0", "web")
with cache.fetch(ref, HttpFeed("web", sys.argv[3])) as got:
    print(got.downloaded, got.sha256)
"""


def test_http_feed_one_download_for_concurrent_processes(tmp_path: Path, feed_dir: Path,
                                                         redis_url: str,
                                                         serve: Callable[..., Server]) -> None:
    server = serve(feed_dir, delay=1.0)
    args = [sys.executable, "-c", PROCESS_FETCH, redis_url, str(tmp_path / "shared"), server.url]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    lines = sorted(out.split() for out, _ in outputs)
    assert [downloaded for downloaded, _ in lines] == ["False", "True"]
    assert {sha for _, sha in lines} == {hashlib.sha256(package_zip()).hexdigest()}
    assert server.gets("/Acme.Database.1.2.0.zip") == 1


def test_http_feed_tries_each_extension_and_reports_unknown(cache: PackageCache, feed_dir: Path,
                                                            serve: Callable[..., Server]) -> None:
    server = serve(feed_dir)
    feed = HttpFeed("web", server.url)
    with cache.fetch(PackageRef("db", "Acme.Database", "1.3.0", "web"), feed) as got:
        assert got.file_name == "Acme.Database.1.3.0.tar.gz"
    with pytest.raises(PackageError) as caught:
        cache.fetch(PackageRef("db", "Acme.Database", "4.0.0", "web"), feed)
    one_line(caught.value, "package Acme.Database 4.0.0 from feed 'web':",
             "unknown package or version", "{zip,nupkg,tar.gz,tgz,tar}")


def test_unreachable_feed(cache: PackageCache) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PackageError) as caught:
        cache.fetch(DB, HttpFeed("files", f"http://127.0.0.1:{port}/feed"))
    one_line(caught.value, "from feed 'files'", "unreachable", f"127.0.0.1:{port}")


def test_feed_timeout(cache: PackageCache) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        feed = HttpFeed("files", f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(PackageError) as caught:
            cache.fetch(DB, feed)
        assert time.monotonic() - started < 5
    one_line(caught.value, "package Acme.Database 1.2.0 from feed 'files':", "timed out after 0.5s")


def test_download_cut_short_leaves_nothing_in_the_cache(cache: PackageCache) -> None:
    with socket.socket() as liar:
        liar.bind(("127.0.0.1", 0))
        liar.listen(8)

        def answer() -> None:
            conn, _ = liar.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            conn.close()

        threading.Thread(target=answer, daemon=True).start()
        feed = HttpFeed("files", f"http://127.0.0.1:{liar.getsockname()[1]}", timeout=5)
        with pytest.raises(PackageError) as caught:
            cache.fetch(DB, feed)
    one_line(caught.value, "from feed 'files'")
    assert cache.entries() == []
    assert list((cache.root / "tmp").iterdir()) == []


# --- NuGet v3 feed -------------------------------------------------------------------------------


@pytest.fixture
def nuget_root(tmp_path: Path, serve: Callable[..., Server]) -> tuple[Path, Server]:
    root = tmp_path / "nuget"
    server = serve(root)
    (root / "v3").mkdir(parents=True)
    (root / "v3" / "index.json").write_text(json.dumps({"version": "3.0.0", "resources": [
        {"@id": f"{server.url}/query", "@type": "SearchQueryService"},
        {"@id": f"{server.url}/flat", "@type": "PackageBaseAddress/3.0.0",
         "comment": "the flat container"},
    ]}))
    folder = root / "flat" / "acme.database"
    (folder / "1.2.0").mkdir(parents=True)
    (folder / "1.2.0" / "acme.database.1.2.0.nupkg").write_bytes(nupkg())
    (folder / "index.json").write_text(json.dumps({"versions": ["1.1.0", "1.2.0"]}))
    return root, server


def test_nuget_feed_flat_container(cache: PackageCache, nuget_root: tuple[Path, Server],
                                   tmp_path: Path) -> None:
    _, server = nuget_root
    feed = NuGetFeed("nuget", f"{server.url}/v3/index.json")
    ref = PackageRef("db", "Acme.Database", "1.2", "nuget")  # normalized to 1.2.0
    with cache.fetch(ref, feed) as got:
        assert got.file_name == "Acme.Database.1.2.nupkg"
        assert got.path.read_bytes() == nupkg()
        extract(got.path, tmp_path / "out")
    assert server.gets("/flat/acme.database/1.2.0/acme.database.1.2.0.nupkg") == 1
    assert tree(tmp_path / "out") == {"Acme.Database.nuspec", "tools", "tools/deploy it.sh",
                                      "content", "content/README.txt"}
    assert executable(tmp_path / "out" / "tools" / "deploy it.sh")
    with pytest.raises(PackageError) as caught:
        cache.fetch(PackageRef("db", "Acme.Database", "3.0.0", "nuget"), feed)
    one_line(caught.value, "package Acme.Database 3.0.0 from feed 'nuget':", "unknown version",
             "1.1.0, 1.2.0")
    with pytest.raises(PackageError) as caught:
        cache.fetch(PackageRef("db", "Acme.Other", "1.0.0", "nuget"), feed)
    one_line(caught.value, "unknown package")


def test_nuget_feed_without_flat_container(cache: PackageCache,
                                           nuget_root: tuple[Path, Server]) -> None:
    root, server = nuget_root
    (root / "v3" / "index.json").write_text(json.dumps({"resources": [{"@id": "x",
                                                                        "@type": "Search"}]}))
    with pytest.raises(PackageError) as caught:
        cache.fetch(DB, NuGetFeed("files", f"{server.url}/v3/index.json"))
    one_line(caught.value, "PackageBaseAddress/3.0.0")
    with pytest.raises(PackageError) as caught:
        cache.fetch(DB, NuGetFeed("files", f"{server.url}/nothing/index.json"))
    one_line(caught.value, "no service index")


# --- built-in feed (Redis) -----------------------------------------------------------------------


def test_builtin_feed_push_list_fetch(cache: PackageCache, raw: redis.Redis,
                                      tmp_path: Path) -> None:
    big = os.urandom(int(2.5 * MiB))  # several Redis chunks
    file = tmp_path / "Acme.Database.1.2.0.zip"
    file.write_bytes(zip_bytes([("blob.bin", big, None)]))
    pushed = push(raw, file)
    assert (pushed.package_id, pushed.version, pushed.extension) == ("Acme.Database", "1.2.0",
                                                                      ".zip")
    assert pushed.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
    assert push(raw, file) == pushed  # the same file again changes nothing
    assert list_packages(raw) == [pushed]
    feed = FeedRegistry(raw).get("builtin")
    assert isinstance(feed, BuiltinFeed)
    with cache.fetch(PackageRef("db", "Acme.Database", "1.2.0"), feed) as got:
        assert got.downloaded and got.path.read_bytes() == file.read_bytes()
        extract(got.path, tmp_path / "out")
    assert (tmp_path / "out" / "blob.bin").read_bytes() == big
    with pytest.raises(PackageError) as caught:
        cache.fetch(PackageRef("db", "Acme.Database", "2.0.0"), feed)
    one_line(caught.value, "package Acme.Database 2.0.0 from feed 'builtin':",
             "unknown version", "1.2.0")
    with pytest.raises(PackageError) as caught:
        cache.fetch(PackageRef("db", "Acme.Nope", "1.0.0"), feed)
    one_line(caught.value, "unknown package", "workerpool package push")


def test_builtin_feed_refuses_changed_versions_and_bad_names(raw: redis.Redis,
                                                            tmp_path: Path) -> None:
    file = tmp_path / "Acme.Database.1.2.0.zip"
    file.write_bytes(package_zip())
    push(raw, file)
    file.write_bytes(zip_bytes([("other.txt", b"changed", None)]))
    with pytest.raises(BadInput) as caught:
        push(raw, file)
    one_line(caught.value, "already in the built-in feed", "new version")
    odd = tmp_path / "database-latest.zip"
    odd.write_bytes(package_zip())
    with pytest.raises(BadInput) as caught:
        push(raw, odd)
    one_line(caught.value, "'database-latest.zip'", "Acme.Database.1.2.0.zip")


def test_builtin_feed_published_checksum_is_verified(cache: PackageCache, raw: redis.Redis,
                                                     redis_url: str, tmp_path: Path) -> None:
    file = tmp_path / "Acme.Database.1.2.0.zip"
    file.write_bytes(package_zip())
    push(raw, file)
    binary = redis.Redis.from_url(redis_url)
    data_key = "workerpool:builtin-package:acme.database/1.2.0"
    chunk = bytearray(binary.lindex(data_key, 0) or b"")
    chunk[-1] ^= 0xFF  # same length, one byte changed
    binary.lset(data_key, 0, bytes(chunk))
    with pytest.raises(PackageError) as caught:
        cache.fetch(PackageRef("db", "Acme.Database", "1.2.0"), BuiltinFeed(raw))
    one_line(caught.value, "package Acme.Database 1.2.0 from feed 'builtin':",
             "checksum mismatch", "the feed published")
    assert cache.entries() == []


# --- checksums recorded at the first download ----------------------------------------------------


def test_checksum_mismatch_when_the_feed_file_is_replaced(cache: PackageCache, feed_dir: Path,
                                                          raw: redis.Redis,
                                                          serve: Callable[..., Server]) -> None:
    server = serve(feed_dir)
    feed = HttpFeed("files", server.url)
    with cache.fetch(DB, feed) as first:
        cached = first.path
    assert raw.get(keys.package_sha("test-pool", "files", "Acme.Database", "1.2.0")) == first.sha256
    (feed_dir / "Acme.Database.1.2.0.zip").write_bytes(zip_bytes([("evil.sh", b"rm", None)]))
    cache._remove(cached.parent)  # force the next fetch to download again
    with pytest.raises(PackageError) as caught:
        cache.fetch(DB, feed)
    one_line(caught.value, "package Acme.Database 1.2.0 from feed 'files':", "checksum mismatch",
             f"first download had {first.sha256[:12]}")
    assert cache.entries() == []
    assert server.gets(".zip") == 2


# --- the cache's size limit ----------------------------------------------------------------------


def test_least_recently_used_packages_are_evicted_but_not_in_use_ones(
        tmp_path: Path, raw: redis.Redis) -> None:
    folder = tmp_path / "feed"
    folder.mkdir()
    for name in "abcde":
        (folder / f"Pkg.{name.upper()}.1.0.0.zip").write_bytes(os.urandom(100_000))
    feed = DirectoryFeed("files", str(folder))
    cache = PackageCache(tmp_path / "cache", 350_000, raw, "test-pool")

    def ref(name: str) -> PackageRef:
        return PackageRef(name, f"Pkg.{name.upper()}", "1.0.0", "files")

    def cached() -> set[str]:
        return {entry.package_id for _, _, entry in cache.entries()}

    for name in "abc":
        cache.fetch(ref(name), feed).release()
        time.sleep(0.02)
    cache.fetch(ref("a"), feed).release()  # a is now used more recently than b and c
    time.sleep(0.02)
    held = cache.fetch(ref("b"), feed)  # in use until released: never evicted meanwhile
    held_path = held.path
    time.sleep(0.02)
    cache.fetch(ref("d"), feed).release()  # over the limit: c is evicted (b is in use)
    assert cached() == {"pkg.a", "pkg.b", "pkg.d"}
    assert cache.size() <= 350_000
    time.sleep(0.02)
    cache.fetch(ref("e"), feed).release()  # a is the least recently used now
    assert cached() == {"pkg.b", "pkg.d", "pkg.e"}
    assert held_path.exists()
    held.release()


# --- prepare: what the worker calls ------------------------------------------------------------


def test_prepare_extracts_into_the_workdir_and_names_variables(cache: PackageCache,
                                                               raw: redis.Redis,
                                                               feed_dir: Path,
                                                               tmp_path: Path) -> None:
    feeds = FeedRegistry(raw)
    feeds.add("files", "directory", str(feed_dir))
    workdir = tmp_path / "work"
    with prepare(DB, feeds, cache, workdir) as prepared:
        variables = prepared.variables()
        assert variables["Package[db].ExtractedPath"] == str(workdir / "db")
        assert variables["Package[db].PackageFilePath"] == str(prepared.cached.path)
        assert variables["Package[db].PackageVersion"] == "1.2.0"
        assert executable(workdir / "db" / "scripts" / "deploy.sh")
    kept = PackageRef("raw", "Acme.Database", "1.2.0", "files", extract=False)
    with prepare(kept, feeds, cache, workdir) as prepared:
        assert prepared.variables()["Package[raw].ExtractedPath"] == ""
        assert not (workdir / "raw").exists()


def test_prepare_reports_archive_problems_as_package_errors(cache: PackageCache,
                                                            raw: redis.Redis,
                                                            tmp_path: Path) -> None:
    bad = tmp_path / "Acme.Bad.1.0.0.zip"
    bad.write_bytes(zip_bytes([("../../escape.sh", SCRIPT, None)]))
    push(raw, bad)
    with pytest.raises(PackageError) as caught:
        prepare(PackageRef("bad", "Acme.Bad", "1.0.0"), FeedRegistry(raw), cache, tmp_path / "w")
    one_line(caught.value, "package Acme.Bad 1.0.0 from feed 'builtin': Acme.Bad.1.0.0.zip:",
             "unsafe entry '../../escape.sh'")
    assert not (tmp_path / "escape.sh").exists()
    with pytest.raises(UnknownFeed) as unknown:
        prepare(PackageRef("x", "Acme.Bad", "1.0.0", "elsewhere"), FeedRegistry(raw), cache,
                tmp_path / "w")
    one_line(unknown.value, "'elsewhere'", "workerpool feed add elsewhere")


# --- feed registry -------------------------------------------------------------------------------


def test_feed_registry(raw: redis.Redis) -> None:
    feeds = FeedRegistry(raw, timeout=7)
    assert [f.to_json() for f in feeds.list()] == [
        {"name": "builtin", "type": "builtin", "uri": "redis"}]
    feeds.add("shared", "directory", "/srv/packages")
    feeds.add("acme", "nuget", "https://nuget.example.com/v3/index.json")
    assert [f.name for f in feeds.list()] == ["builtin", "acme", "shared"]
    acme = feeds.get("acme")
    assert isinstance(acme, NuGetFeed) and acme.timeout == 7
    for args, words in [(("shared", "http", "http://x"), ["already exists"]),
                        (("builtin", "http", "http://x"), ["reserved"]),
                        (("web", "ftp", "ftp://x"), ["type 'ftp' is unknown"]),
                        (("web", "http", "packages.example.com"), ["http(s) URL"]),
                        (("web", "directory", "relative/dir"), ["absolute path"]),
                        (("we b", "http", "http://x"), ["feed name 'we b'"])]:
        with pytest.raises(BadInput) as caught:
            feeds.add(*args)
        one_line(caught.value, *words)
    with pytest.raises(BadInput, match="cannot be removed"):
        feeds.remove("builtin")
    feeds.remove("shared")
    with pytest.raises(UnknownFeed, match="workerpool feed add shared"):
        feeds.get("shared")
    with pytest.raises(UnknownFeed):
        feeds.remove("shared")


# --- CLI -----------------------------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workerpool: error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_cli_feeds(cli: Cli) -> None:
    assert "added http feed 'web'" in ok(cli("feed", "add", "web", "--type", "http",
                                             "--uri", "https://packages.example.com"))
    ok(cli("feed", "add", "share", "--type", "directory", "--uri", "/srv/packages"))
    listed = json.loads(ok(cli("feed", "list", "--json")))
    assert listed == [{"name": "builtin", "type": "builtin", "uri": "redis"},
                      {"name": "share", "type": "directory", "uri": "/srv/packages"},
                      {"name": "web", "type": "http", "uri": "https://packages.example.com"}]
    table = ok(cli("feed", "list"))
    assert table.splitlines()[0].split() == ["NAME", "TYPE", "URI"] and "share" in table
    refused(cli("feed", "remove", "builtin"), "cannot be removed")
    refused(cli("feed", "remove", "nope"), "'nope'")
    refused(cli("feed", "add", "x", "--type", "http", "--uri", "nohost"), "http(s) URL")
    refused(cli("feed", "add", "x", "--type", "ftp", "--uri", "ftp://x"), "--type")
    assert "removed feed 'web'" in ok(cli("feed", "remove", "web"))
    assert [f["name"] for f in json.loads(ok(cli("feed", "list", "--json")))] == ["builtin",
                                                                                  "share"]


def test_cli_packages(cli: Cli, tmp_path: Path) -> None:
    file = tmp_path / "Acme.Database.1.2.0.zip"
    file.write_bytes(package_zip())
    out = ok(cli("package", "push", str(file)))
    assert "pushed Acme.Database 1.2.0" in out and "built-in feed" in out
    again = json.loads(ok(cli("package", "push", str(file), "--json")))
    assert again["sha256"] == hashlib.sha256(package_zip()).hexdigest()
    listed = json.loads(ok(cli("package", "list", "--json")))
    assert [(p["package_id"], p["version"], p["file_name"], p["size"]) for p in listed] == [
        ("Acme.Database", "1.2.0", "Acme.Database.1.2.0.zip", len(package_zip()))]
    assert "Acme.Database.1.2.0.zip" in ok(cli("package", "list"))
    odd = tmp_path / "database.zip"
    odd.write_bytes(b"x")
    refused(cli("package", "push", str(odd)), "'database.zip'")
    refused(cli("package", "push", str(tmp_path / "missing.1.0.zip")), "does not exist")
