"""Packages: feeds served for real (a directory, local HTTP servers, Redis), the shared cache,
and safe extraction of every format. Nothing is mocked: archives are built with zipfile and
tarfile, HTTP feeds are ``http.server`` threads on 127.0.0.1, the built-in feed is real Redis.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from workerpool.core.errors import ArchiveError, BadInput, PackageError, UnknownFeed
from workerpool.core.packageref import PackageRef
from workerpool.worker.packages.archive import Target
from workerpool.worker.packages.builtin import BuiltinFeed, list_packages, push
from workerpool.worker.packages.cache import PackageCache
from workerpool.worker.packages.directory import DirectoryFeed
from workerpool.worker.packages.feed import split_file_name
from workerpool.worker.packages.formats import extract
from workerpool.worker.packages.http import HttpFeed
from workerpool.worker.packages.install import prepare
from workerpool.worker.packages.nuget import NuGetFeed, normalize_version
from workerpool.worker.packages.registry import FeedRegistry

Cli = Callable[..., subprocess.CompletedProcess[str]]
MiB = 1 << 20
SCRIPT = b"#!/bin/sh\necho deployed\n"
README = b"the database package\n"
SQL = b"CREATE TABLE customers (id int);\n" * 200


# --- building archives ---------------------------------------------------------------------------


def zip_bytes(entries: list[tuple[str, bytes, int | None]]) -> bytes:
    """A zip of (name, data, unix mode or None) entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                info.create_system = 3
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def tar_bytes(members: list[tarfile.TarInfo | tuple[str, bytes, int]], gz: bool = True) -> bytes:
    """A tar(.gz) of TarInfo members (links, devices) or (name, data, mode) files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
                continue
            name, data, mode = member
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def package_zip() -> bytes:
    return zip_bytes([("scripts/deploy.sh", SCRIPT, 0o100755),
                      ("scripts/", b"", 0o040755),
                      ("README.txt", README, 0o100644),
                      ("sql/001-schema.sql", SQL, None)])


def package_tar(gz: bool = True) -> bytes:
    return tar_bytes([("./scripts/deploy.sh", SCRIPT, 0o755), ("./README.txt", README, 0o644),
                      ("./sql/001-schema.sql", SQL, 0o644)], gz=gz)


def nupkg() -> bytes:
    return zip_bytes([("[Content_Types].xml", b"<Types/>", None),
                      ("_rels/.rels", b"<Relationships/>", None),
                      ("package/services/metadata/core-properties/x.psmdcp", b"<core/>", None),
                      ("Acme.Database.nuspec", b"<package/>", None),
                      ("tools/deploy%20it.sh", SCRIPT, 0o100755),
                      ("content/README.txt", README, None)])


def executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """An empty directory around the extraction target; a test asserts nothing but the target
    (and what is inside it) appears in it."""
    box = tmp_path / "sandbox"
    (box / "target").mkdir(parents=True)
    yield box


def only_target_written(box: Path) -> None:
    outside = {p for p in tree(box) if p != "target" and not p.startswith("target/")}
    assert outside == set(), outside


# --- feeds served for real -----------------------------------------------------------------------


@dataclass
class Server:
    url: str
    counts: Counter[str]

    def gets(self, suffix: str) -> int:
        return sum(n for path, n in self.counts.items() if path.endswith(suffix))


class CountingHandler(SimpleHTTPRequestHandler):
    counts: Counter[str]
    delay: float
    lock: threading.Lock

    def do_GET(self) -> None:
        with self.lock:
            self.counts[self.path] += 1
        if self.delay and self.path.endswith((".zip", ".nupkg", ".tgz", ".tar.gz", ".tar")):
            time.sleep(self.delay)  # so concurrent fetches overlap with the download
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Factory: serve a directory over HTTP on 127.0.0.1, counting GETs per path."""
    servers: list[ThreadingHTTPServer] = []

    def start(root: Path, delay: float = 0.0) -> Server:
        counts: Counter[str] = Counter()
        handler = type("Handler", (CountingHandler,),
                       {"counts": counts, "delay": delay, "lock": threading.Lock()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler,
                                                                         directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Server(f"http://127.0.0.1:{server.server_address[1]}", counts)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path: Path, raw: redis.Redis) -> PackageCache:
    return PackageCache(tmp_path / "cache", 1 << 30, raw)


@pytest.fixture
def feed_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "feed"
    folder.mkdir()
    (folder / "Acme.Database.1.2.0.zip").write_bytes(package_zip())
    (folder / "Acme.Database.1.3.0.tar.gz").write_bytes(package_tar())
    return folder


DB = PackageRef("db", "Acme.Database", "1.2.0", feed="files")


def one_line(exc: BaseException, *words: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    for word in words:
        assert word in text, (word, text)
    return text


# --- references ----------------------------------------------------------------------------------


def test_parse_reference_and_round_trip() -> None:
    ref = PackageRef.parse("name=db,id=Acme.Database,version=1.2.0,feed=builtin,extract=true")
    assert ref == PackageRef("db", "Acme.Database", "1.2.0", "builtin", True)
    assert PackageRef.parse(ref.to_text()) == ref
    assert PackageRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    short = PackageRef.parse(" name=tools , id=Acme.Tools, version=2.0.0-beta.1, extract=No ")
    assert (short.feed, short.extract, short.version) == ("builtin", False, "2.0.0-beta.1")


@pytest.mark.parametrize(("text", "words"), [
    ("id=Acme.Database,version=1.2.0", ["lacks name"]),
    ("name=db,version=1.2.0", ["lacks id"]),
    ("name=db,id=Acme.Database", ["lacks version"]),
    ("name=db,id=A,version=1,colour=red", ["'colour' is unknown"]),
    ("name=db,id=A,version=1,extract=maybe", ["extract='maybe'", "true or false"]),
    ("name=d b,id=A,version=1", ["'d b'"]),
    ("name=..,id=A,version=1", ["'..'"]),
    ("name=db,id=../etc,version=1", ["package id '../etc'"]),
    ("name=db,id=A,version=v1", ["version 'v1'", "start with a digit"]),
    ("name=db,id=A,version=1,feed=a/b", ["feed name 'a/b'"]),
    ("name=db,name=x,id=A,version=1", ["'name' twice"]),
    ("name=db,id", ["'id' is not key=value"]),
])
def test_parse_refuses_malformed_references(text: str, words: list[str]) -> None:
    with pytest.raises(BadInput) as caught:
        PackageRef.parse(text)
    one_line(caught.value, *words)


def test_from_json_refuses_bad_records() -> None:
    with pytest.raises(BadInput, match="lacks 'version'"):
        PackageRef.from_json({"name": "db", "package_id": "A"})
    with pytest.raises(BadInput, match="wrong type"):
        PackageRef.from_json({"name": "db", "package_id": "A", "version": "1", "extract": "y"})


def test_file_names_split_into_id_version_and_extension() -> None:
    assert split_file_name("Acme.Database.1.2.0.zip") == ("Acme.Database", "1.2.0", ".zip")
    assert split_file_name("Acme.Database.1.2.0-beta.1.tar.gz") == (
        "Acme.Database", "1.2.0-beta.1", ".tar.gz")
    assert split_file_name("Acme.7Zip.3.1.tgz") == ("Acme.7Zip", "3.1", ".tgz")
    assert split_file_name("tool.2.nupkg") == ("tool", "2", ".nupkg")
    for bad in ("Acme.Database.zip", "1.zip", "Acme.Database.1.2.0.rar", "readme"):
        assert split_file_name(bad) is None, bad


def test_nuget_version_normalization() -> None:
    assert normalize_version("1.0") == "1.0.0"
    assert normalize_version("1.02.3.0") == "1.2.3"
    assert normalize_version("1.2.3.4") == "1.2.3.4"
    assert normalize_version("1.0.0-Beta+build.5") == "1.0.0-beta"


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
cache = PackageCache(pathlib.Path(sys.argv[2]), 1 << 30, client)
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
    assert raw.get("workerpool:package-sha:files/acme.database/1.2.0") == first.sha256
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
    cache = PackageCache(tmp_path / "cache", 350_000, raw)

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


# --- extraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("file_name", "data"), [
    ("p.1.0.zip", package_zip()), ("p.1.0.tar.gz", package_tar()), ("p.1.0.tgz", package_tar()),
    ("p.1.0.tar", package_tar(gz=False)),
])
def test_every_format_extracts_files_and_exec_bits(tmp_path: Path, file_name: str,
                                                   data: bytes) -> None:
    archive = tmp_path / file_name
    archive.write_bytes(data)
    out = tmp_path / "out"
    result = extract(archive, out, 10 * MiB, 100)
    assert result.files == 3 and result.bytes == len(SCRIPT) + len(README) + len(SQL)
    assert tree(out) == {"scripts", "scripts/deploy.sh", "README.txt", "sql",
                         "sql/001-schema.sql"}
    assert (out / "scripts" / "deploy.sh").read_bytes() == SCRIPT
    assert (out / "sql" / "001-schema.sql").read_bytes() == SQL
    assert executable(out / "scripts" / "deploy.sh")
    assert not executable(out / "README.txt") and not executable(out / "sql" / "001-schema.sql")
    ran = subprocess.run([str(out / "scripts" / "deploy.sh")], capture_output=True, text=True)
    assert ran.stdout == "deployed\n"


def test_tar_links_inside_the_target_are_kept(tmp_path: Path) -> None:
    archive = tmp_path / "p.1.0.tar"
    archive.write_bytes(tar_bytes([("bin/tool", SCRIPT, 0o755), link("current", "bin"),
                                   link("bin/alias", "tool"),
                                   link("bin/copy", "bin/tool", tarfile.LNKTYPE)], gz=False))
    extract(archive, tmp_path / "out", MiB, 100)
    out = tmp_path / "out"
    assert os.readlink(out / "current") == "bin"
    assert (out / "bin" / "alias").read_bytes() == SCRIPT
    assert (out / "bin" / "copy").stat().st_ino == (out / "bin" / "tool").stat().st_ino


UNSAFE = [
    ("zip-dotdot.zip", zip_bytes([("ok.txt", b"ok", None), ("../evil.txt", b"x", None)]),
     ["'../evil.txt'", "'..' component"]),
    ("zip-dotdot-nested.zip", zip_bytes([("a/../../evil.txt", b"x", None)]), ["'..' component"]),
    ("zip-backslash.zip", zip_bytes([("..\\evil.txt", b"x", None)]), ["'..' component"]),
    ("zip-drive.zip", zip_bytes([("C:/evil.txt", b"x", None)]), ["drive letter"]),
    ("zip-symlink.zip", zip_bytes([("link", b"/etc", 0o120777)]), ["'link'", "symbolic link"]),
    ("zip-fifo.zip", zip_bytes([("pipe", b"", 0o010644)]), ["'pipe'", "fifo"]),
    ("tar-dotdot.tar.gz", tar_bytes([("../evil.txt", b"x", 0o644)]), ["'..' component"]),
    ("tar-symlink-out.tar", tar_bytes([link("escape", "../.."), ("escape/evil.txt", b"x", 0o644)],
                                      gz=False), ["'escape'", "outside the target"]),
    ("tar-symlink-abs.tar", tar_bytes([link("escape", "/tmp")], gz=False),
     ["'escape'", "absolute path"]),
    ("tar-symlink-chain.tar", tar_bytes([link("here", "."), link("up", "here/..")], gz=False),
     ["'up'", "resolves outside"]),
    ("tar-through-link.tar", tar_bytes([("real/x", b"x", 0o644), link("alias", "real"),
                                        ("alias/evil.txt", b"x", 0o644)], gz=False),
     ["'alias/evil.txt'", "'alias' on its path is a link"]),
    ("tar-hardlink-out.tar", tar_bytes([link("h", "../evil.txt", tarfile.LNKTYPE)], gz=False),
     ["'../evil.txt'", "'..' component"]),
    ("tar-hardlink-abs.tar", tar_bytes([link("h", "/etc/passwd", tarfile.LNKTYPE)], gz=False),
     ["'/etc/passwd'", "absolute path"]),
    ("tar-hardlink-missing.tar", tar_bytes([link("h", "not-there", tarfile.LNKTYPE)], gz=False),
     ["'h'", "not a file extracted before it"]),
    ("tar-fifo.tar", tar_bytes([link("pipe", "", tarfile.FIFOTYPE)], gz=False),
     ["'pipe'", "device or fifo"]),
    ("tar-device.tar", tar_bytes([link("disk", "", tarfile.BLKTYPE)], gz=False),
     ["'disk'", "device or fifo"]),
]


@pytest.mark.parametrize(("file_name", "data", "words"), UNSAFE, ids=[u[0] for u in UNSAFE])
def test_unsafe_entries_are_refused(sandbox: Path, tmp_path: Path, file_name: str, data: bytes,
                                    words: list[str]) -> None:
    archive = tmp_path / file_name
    archive.write_bytes(data)
    with pytest.raises(ArchiveError) as caught:
        extract(archive, sandbox / "target", MiB, 100)
    one_line(caught.value, file_name, *words)
    only_target_written(sandbox)


def test_absolute_paths_are_refused(sandbox: Path, tmp_path: Path) -> None:
    evil = str(sandbox / "evil.txt")
    for archive, data in ((tmp_path / "abs.zip", zip_bytes([(evil, b"x", None)])),
                          (tmp_path / "abs.tgz", tar_bytes([(evil, b"x", 0o644)]))):
        archive.write_bytes(data)
        with pytest.raises(ArchiveError) as caught:
            extract(archive, sandbox / "target", MiB, 100)
        one_line(caught.value, repr(evil), "absolute path")
    only_target_written(sandbox)


def test_archive_bombs_are_refused(sandbox: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zip_bytes([("zeros.bin", bytes(20 * MiB), None)]))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ArchiveError) as caught:
        extract(bomb, sandbox / "target", MiB, 100)
    one_line(caught.value, "archive bomb", "'zeros.bin'", f"{MiB}-byte limit")
    many = tmp_path / "many.tar.gz"
    many.write_bytes(tar_bytes([(f"f{i}", b"", 0o644) for i in range(50)]))
    with pytest.raises(ArchiveError) as caught:
        extract(many, sandbox / "target", MiB, 10)
    one_line(caught.value, "archive bomb", "more than 10 entries")
    only_target_written(sandbox)


def test_size_limit_is_enforced_while_writing_not_only_from_headers(tmp_path: Path) -> None:
    target = Target(tmp_path / "out", MiB, 10)
    target.count("liar.bin", declared_size=10)  # the header claims 10 bytes
    stream = io.BytesIO(bytes(3 * MiB))
    with pytest.raises(ArchiveError, match=r"archive bomb: entry 'liar\.bin'"):
        target.file("liar.bin", stream.read, executable=False)
    assert (tmp_path / "out" / "liar.bin").stat().st_size <= MiB


@pytest.mark.parametrize("file_name", ["bad.1.0.zip", "bad.1.0.tar.gz", "bad.1.0.tar"])
def test_corrupt_archives(sandbox: Path, tmp_path: Path, file_name: str) -> None:
    archive = tmp_path / file_name
    whole = package_zip() if file_name.endswith(".zip") else package_tar(".gz" in file_name)
    archive.write_bytes(whole[: len(whole) // 2] if ".tar" in file_name else b"PK\x03\x04junk")
    with pytest.raises(ArchiveError) as caught:
        extract(archive, sandbox / "target", MiB, 100)
    one_line(caught.value, file_name, "corrupt archive")
    only_target_written(sandbox)


def test_damaged_zip_data_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(zip_bytes([("data.txt", b"hello world " * 1000, None)]))
    data[60:70] = b"\xff" * 10  # inside the compressed data
    archive = tmp_path / "p.1.0.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="corrupt archive"):
        extract(archive, tmp_path / "out", MiB, 100)


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
