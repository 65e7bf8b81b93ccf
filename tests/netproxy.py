"""A TCP proxy the tests control, in front of a real redis-server.

It runs an asyncio loop in a thread. It can terminate TLS (the embedded redis-server is built
without TLS), and it can cut the link two ways, as networks do:

- ``cut()``: every open connection is reset and every new one is reset as soon as it is
  accepted (a host that went away, a restarted NAT, a firewall rejecting).
- ``cut(blackhole=True)``: nothing is forwarded any more, in either direction, and nothing is
  closed; new connections are accepted and left hanging (a partition: packets dropped). Bytes
  already sent wait in the proxy and are delivered by ``restore()``, as TCP would retransmit
  them once a partition heals.

``restore()`` opens the link again. ``make_certificates`` makes a CA and a server certificate
for 127.0.0.1 with the ``openssl`` command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

OPEN, RESET, BLACKHOLE = "open", "reset", "blackhole"
CHUNK = 65536


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA certificate clients trust (ssl_ca_certs)
    cert: Path  # the server's certificate, signed by the CA, for 127.0.0.1 and localhost
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", f"/CN=workerpool test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    ca, ca_key = make_ca(directory)
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                          "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions))
    return Certificates(ca, cert, key)


class NetProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:*target_port*; see the module docstring."""

    def __init__(self, target_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.target_port = target_port
        self.tls = tls
        self.port = 0
        self.accepted = 0  # connections accepted (and, with TLS, past the handshake)
        self.handshake_failures = 0
        self._state = OPEN
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netproxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._opened: asyncio.Event | None = None

    # -- control, from the test's thread ------------------------------------------------

    def start(self) -> NetProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self, blackhole: bool = False) -> None:
        """Cut the link (see the module docstring); returns once it is cut."""
        self._call(self._cut(BLACKHOLE if blackhole else RESET))

    def restore(self) -> None:
        """Open the link again; held bytes are delivered (after a blackhole)."""
        self._call(self._restore())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    # -- the loop's side ------------------------------------------------------------------

    async def _start(self) -> None:
        self._opened = asyncio.Event()
        self._opened.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self, state: str) -> None:
        assert self._opened is not None
        self._state = state
        self._opened.clear()
        if state == RESET:
            for writer in list(self._writers):
                _reset(writer)
            self._writers.clear()

    async def _restore(self) -> None:
        assert self._opened is not None
        self._state = OPEN
        self._opened.set()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut(RESET)
        assert self._opened is not None
        self._opened.set()  # wake held connections: they find their sockets closed and end
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            _, pending = await asyncio.wait(others, timeout=5)
            for task in pending:
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._opened is not None
        if self._state == RESET:
            _reset(writer)
            return
        self._writers.add(writer)
        try:
            await self._opened.wait()  # a blackhole holds even the handshake
            if self.tls is not None:
                try:
                    await writer.start_tls(self.tls)
                except (ssl.SSLError, OSError):
                    self.handshake_failures += 1
                    _reset(writer)
                    return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port)
        except (OSError, RuntimeError):  # the client left, or the link was reset meanwhile
            _reset(writer)
            return
        if writer not in self._writers:  # cut while connecting
            _reset(upstream_writer)
            return
        self.accepted += 1
        self._writers.add(upstream_writer)
        await asyncio.gather(self._pump(reader, upstream_writer, writer),
                             self._pump(upstream_reader, writer, upstream_writer),
                             return_exceptions=True)
        self._writers.discard(writer)
        self._writers.discard(upstream_writer)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    source_writer: asyncio.StreamWriter) -> None:
        """Copy one direction until either side closes; held while the link is cut."""
        assert self._opened is not None
        try:
            while data := await source.read(CHUNK):
                await self._opened.wait()
                if sink.is_closing():
                    break
                sink.write(data)
                await sink.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            _reset(sink)
            _reset(source_writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP reset (SO_LINGER 0), as a vanished peer would look."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
