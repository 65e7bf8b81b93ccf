"""The feed interface: a named place packages are downloaded from; one subclass per feed type."""

from __future__ import annotations

import hashlib
import http.client
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, ClassVar

from workerpool.core.errors import PackageError
from workerpool.core.packageref import PACKAGE_ID, VERSION

# Tried in this order when a feed can hold several formats of one package.
EXTENSIONS = (".zip", ".nupkg", ".tar.gz", ".tgz", ".tar")
CHUNK = 1 << 20
DEFAULT_TIMEOUT = 30.0

Progress = Callable[[int, int | None], None]


def _nothing() -> None:
    return None


@dataclass
class Download:
    """An open download: its bytes as chunks, and what the feed says about them."""

    extension: str
    size: int | None
    chunks: Iterator[bytes]
    sha256: str | None = None  # published by the feed, verified after the download
    close: Callable[[], None] = field(default=_nothing)


@dataclass(frozen=True)
class Downloaded:
    extension: str
    size: int
    sha256: str
    published_sha256: str | None


def split_extension(file_name: str) -> tuple[str, str] | None:
    """``Acme.Database.1.2.0.tar.gz`` -> (``Acme.Database.1.2.0``, ``.tar.gz``)."""
    lower = file_name.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext) and len(file_name) > len(ext):
            return file_name[: -len(ext)], ext
    return None


def split_file_name(file_name: str) -> tuple[str, str, str] | None:
    """``Acme.Database.1.2.0.zip`` -> (id, version, extension); the version starts at the first
    all-digit part after the id. None if the name does not have that shape."""
    split = split_extension(file_name)
    if split is None:
        return None
    stem, ext = split
    parts = stem.split(".")
    for index in range(1, len(parts)):
        package_id, version = ".".join(parts[:index]), ".".join(parts[index:])
        if parts[index].isdigit() and PACKAGE_ID.fullmatch(package_id) \
                and VERSION.fullmatch(version):
            return package_id, version, ext
    return None


class Feed(ABC):
    """A feed opens a package's download; the base class streams, hashes and reports it."""

    type: ClassVar[str]

    def __init__(self, name: str, uri: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.uri = uri
        self.timeout = timeout

    @abstractmethod
    def open(self, package_id: str, version: str) -> Download:
        """Start downloading the package, or raise PackageError (unknown, unreachable, ...)."""

    def fail(self, package_id: str, version: str, reason: str) -> PackageError:
        return PackageError(package_id, version, self.name, reason)

    def download(self, package_id: str, version: str, out: BinaryIO,
                 progress: Progress | None = None) -> Downloaded:
        """Write the package to *out*, returning its size and sha256."""
        source = self.open(package_id, version)
        digest, done = hashlib.sha256(), 0
        try:
            for chunk in source.chunks:
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, source.size)
        except TimeoutError:
            raise self.fail(package_id, version, f"feed timed out after {self.timeout:g}s "
                            f"during the download ({done} bytes received)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise self.fail(package_id, version, f"download failed after {done} bytes: "
                            f"{exc or type(exc).__name__}") from None
        finally:
            source.close()
        if source.size is not None and done != source.size:
            raise self.fail(package_id, version, f"download was cut short: {done} of "
                            f"{source.size} bytes arrived")
        return Downloaded(source.extension, done, digest.hexdigest(), source.sha256)

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "uri": self.uri}
