"""Lab hosts: network namespaces with their own addresses, reachable, cuttable, removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from meshop.lab.hosts import Hosts, can_create

pytestmark = pytest.mark.integration

SERVER = """
import socket
s = socket.create_server(("0.0.0.0", 7000))
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hi")
    c.close()
"""
PROBE = """
import socket, sys
try:
    print(socket.create_connection((sys.argv[1], 7000), timeout=0.5).recv(2).decode())
except OSError:
    print("unreachable")
"""


@pytest.fixture(scope="module")
def lab() -> Hosts:
    if not can_create():
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the lab's hosts must be creatable there")
        pytest.skip("network namespaces need root")
    with Hosts.create(2, zones=("a", "b")) as hosts:
        yield hosts


def probe(prefix: list[str], address: str) -> str:
    return subprocess.run(
        [*prefix, sys.executable, "-c", PROBE, address], capture_output=True, text=True
    ).stdout.strip()


def test_hosts_reach_each_other_and_a_cut_host_is_unreachable_until_healed(lab: Hosts) -> None:
    h1, h2 = lab.hosts
    assert (h1.zone, h2.zone) == ("a", "b")
    assert h1.address != h2.address
    server = subprocess.Popen([*h2.exec_prefix, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "listening"
        assert probe(h1.exec_prefix, h2.address) == "hi"
        assert probe([], h2.address) == "hi"  # the lab's own namespace reaches every host
        assert probe(h1.exec_prefix, "127.0.0.1") == "unreachable"  # h1's loopback is its own
        lab.cut(h2)
        assert probe(h1.exec_prefix, h2.address) == "unreachable"
        lab.heal(h2)
        deadline = time.monotonic() + 10
        while probe(h1.exec_prefix, h2.address) != "hi":
            assert time.monotonic() < deadline, "the healed link did not come back"
    finally:
        server.kill()
        server.communicate()


def test_destroy_removes_every_namespace_and_the_bridge() -> None:
    if not can_create():
        pytest.skip("network namespaces need root")
    hosts = Hosts.create(1)
    names = [h.netns for h in hosts.hosts]
    hosts.destroy()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"{hosts.bridge}:" not in links
    hosts.destroy()  # idempotent
