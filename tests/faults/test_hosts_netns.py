"""Hosts that join by URL: Redis and `workerpool server` on one network namespace, the workers
of two pools on two others, each namespace joined to a bridge of the test's own with addresses
the test picks (the bridge has no uplink: no traffic leaves the machine). Each worker gets
nothing but its pool's URL (its credentials in it) and its pool's key. Steps run on their
pool's host; cutting one host's link ends its running step WorkerLost within the documented
bound (one heartbeat TTL and one interval after the cut) while the other host keeps serving;
when the link returns the worker is live again, the lost step is not run twice, and the host
serves its pool again."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from conftest import ADMIN_PASSWORD, SECRET_KEY, wait_for

from workerpool import Client, ScriptStep
from workerpool.core import credentials
from workerpool.core.pools import slugify
from workerpool.core.sealing import Keyring
from workerpool.core.settings import Settings
from workerpool.core.steps import RUNNING, SUCCESS, WORKER_LOST
from workerpool.server.embedded import redis_server_binary

INTERVAL = 1.0  # the heartbeat interval of every process here; the TTL is two
BOUND = 2 * INTERVAL + INTERVAL  # docs/reliability.md: one TTL and one interval after the cut
SLACK = 2.0  # scheduling on a loaded 2-core machine, on top of the bound
POOLS = {"a": "Pool A", "b": "Pool B"}
PORT = 6379  # each namespace has its own ports


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.0.0.0/8 that no interface of this machine uses."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True,
                          check=True).stdout
    nets = [ipaddress.ip_interface(w).network for w in used.split() if "/" in w
            and w[0].isdigit()]
    while True:
        candidate = ipaddress.ip_network(f"10.{random.randint(100, 250)}."
                                         f"{random.randint(0, 255)}.0/24")
        if not any(candidate.overlaps(n) for n in nets):
            return candidate


@dataclass
class Hosts:
    """The bridge and three namespaces: ``redis`` (Redis and the server), ``a`` and ``b``."""

    suffix: str
    subnet: ipaddress.IPv4Network
    names: dict[str, str] = field(default_factory=dict)  # role -> namespace
    links: dict[str, str] = field(default_factory=dict)  # role -> its veth end on the bridge
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"wpbr{self.suffix}"

    def address(self, role: str) -> str:
        return str(self.subnet[1 + list(self.names).index(role)])

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet[254]}/24", "dev", self.bridge)  # the test's own way in
        _ip("link", "set", self.bridge, "up")
        for n, role in enumerate(("redis", "a", "b"), 1):
            ns, outer, inner = f"wp-{self.suffix}-{role}", f"wpo{self.suffix}{n}", f"wpi{n}"
            _ip("netns", "add", ns)
            self.names[role], self.links[role] = ns, outer
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.address(role)}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def start(self, role: str, argv: list[str], env: dict[str, str],
              log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.names[role], *argv], env=env,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.processes.append(proc)
        return proc

    def cut(self, role: str) -> None:
        _ip("link", "set", self.links[role], "down")

    def mend(self, role: str) -> None:
        _ip("link", "set", self.links[role], "up")

    def remove(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for ns in self.names.values():  # takes its veth pair with it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="ip netns and veth pairs need root (CAP_SYS_ADMIN and "
    "CAP_NET_ADMIN); run the suite as root, as CI does")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    made = Hosts(uuid.uuid4().hex[:6], _free_subnet())
    try:
        made.create()
        yield made
    finally:
        made.remove()


def _base_env(home: Path) -> dict[str, str]:
    """What any process needs to start Python and find its tools, and nothing of the test's."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
            "WORKERPOOL_HEARTBEAT_INTERVAL": str(INTERVAL)}


def test_workers_on_other_hosts_join_by_url_and_a_cut_link_ends_only_their_step(
        hosts: Hosts, tmp_path: Path) -> None:
    redis_host = hosts.address("redis")
    admin_url = f"redis://:{ADMIN_PASSWORD}@{redis_host}:{PORT}/0"
    hosts.start("redis", [redis_server_binary(), "--bind", redis_host, "--port", str(PORT),
                          "--requirepass", ADMIN_PASSWORD, "--save", "", "--appendonly", "no",
                          "--dir", str(tmp_path)], _base_env(tmp_path / "redis-home"),
                tmp_path / "redis.log")
    admin = {**_base_env(tmp_path / "admin-home"), "WORKERPOOL_REDIS_URL": admin_url,
             "WORKERPOOL_SECRET_KEY": SECRET_KEY}
    client = Client(settings=Settings.from_env(admin))  # from the machine, over the bridge
    try:
        wait_for(lambda: _answers(client), 30, "Redis on its host")
        server = hosts.start("redis", [sys.executable, "-m", "workerpool", "server"], admin,
                             tmp_path / "server.log")
        workers = {}
        for role, pool in POOLS.items():
            slug = slugify(pool)
            client.pools.add(pool)
            only = {**_base_env(tmp_path / f"host-{role}"),
                    "WORKERPOOL_REDIS_URL": credentials.issue(client.redis, admin_url, slug).url,
                    "WORKERPOOL_POOL_KEY": Keyring([SECRET_KEY]).publish(client.redis,
                                                                         slug).to_text()}
            assert redis_host in only["WORKERPOOL_REDIS_URL"]
            assert ADMIN_PASSWORD not in json.dumps(only) and SECRET_KEY not in json.dumps(only)
            workers[role] = hosts.start(role, [sys.executable, "-m", "workerpool", "worker",
                                               "start", "--pool", pool, "--script-user",
                                               "same", "--loglevel", "INFO"],
                                        only, tmp_path / f"worker-{role}.log")
        assert server.poll() is None
        wait_for(lambda: _healthy(client) == {slugify(p) for p in POOLS.values()}, 60,
                 "a Healthy worker on each host")

        runs = tmp_path / "runs"
        runs.touch()
        where = 'echo "$WORKERPOOL_STEP_ID $(ip netns identify $$)" >> ' + str(runs)
        for role, pool in POOLS.items():  # each pool's steps run on its own host
            done = client.run(ScriptStep(script=where, pool=pool)).wait(60)
            assert done.state == SUCCESS, done.message
            assert f"{done.id} {hosts.names[role]}" in runs.read_text().splitlines()

        marker = f"{uuid.uuid4().int % 1000 + 1000}.{os.getpid()}"  # the cut step's own sleep
        long = client.run(ScriptStep(script=f"{where}; exec sleep {marker}", pool=POOLS["a"]))
        wait_for(lambda: long.result().state == RUNNING and _sleeping(marker), 30,
                 "the long step to run on host a")
        hosts.cut("a")
        cut_at = time.monotonic()
        during = client.run(ScriptStep(script=where, pool=POOLS["b"])).wait(60)
        assert during.state == SUCCESS  # the other host keeps serving
        wait_for(lambda: long.result().state == WORKER_LOST, BOUND + SLACK + 10,
                 "the cut host's step to end WorkerLost")
        lost_after = time.monotonic() - cut_at
        assert lost_after <= BOUND + SLACK, lost_after
        assert "stopped heartbeating" in long.result().message

        hosts.mend("a")
        wait_for(lambda: slugify(POOLS["a"]) in _healthy(client), 60,
                 "host a's worker live again by itself")
        wait_for(lambda: not _sleeping(marker), 30, "the lost step's script stopped on host a")
        after = client.run(ScriptStep(script=where, pool=POOLS["a"])).wait(60)
        assert after.state == SUCCESS
        lines = runs.read_text().splitlines()
        assert [line.split()[0] for line in lines].count(long.id) == 1  # not run twice
        assert f"{after.id} {hosts.names['a']}" in lines
        assert long.result().state == WORKER_LOST  # nothing ran it again meanwhile
        assert all(proc.poll() is None for proc in workers.values()), "a worker exited"
    finally:
        client.close()


def _answers(client: Client) -> bool:
    try:
        return bool(client.redis.ping())
    except redis.ConnectionError:  # not listening yet
        return False


def _healthy(client: Client) -> set[str]:
    return {w.pool for w in client.workers.list() if w.state == "Healthy"}


def _sleeping(marker: str) -> bool:
    """Whether the cut step's script (``sleep <marker>``) still runs, on whichever host."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes() == f"sleep\0{marker}\0".encode():
                    return True
    return False
