"""Hosts as network namespaces on a bridge: each its own address, its link cuttable.

    lab = Hosts.create(3, zones=("a", "b"))   # meshop-<id>-h1..h3 on bridge mlab<id>
    subprocess.Popen([*lab.hosts[0].exec_prefix, "nats-server", ...])
    lab.cut(lab.hosts[1]); lab.heal(lab.hosts[1])
    lab.destroy()

The bridge lives in the namespace that created the lab (the machine's own), with the
subnet's first address, so the creating process reaches every host and relays there sit
on the hosts' links. Nothing leaves the subnet: the hosts have no route elsewhere.
Every name carries the lab's id (its subnet's third octet), so that labs of parallel test
runs do not meet, and `destroy` removes exactly what `create` made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Host", "Hosts", "LabError", "can_create"]

_PREFIX = "10.77"


class LabError(RuntimeError):
    """The lab could not be made (not root, iproute2 missing, ...): the command's own error."""


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    netns: str
    address: str
    zone: str
    #: The link's end in the lab's namespace (setting it down cuts the host off).
    link: str

    @property
    def exec_prefix(self) -> list[str]:
        """Prepend to a command to run it on this host."""
        return ["ip", "netns", "exec", self.netns]


def can_create() -> bool:
    """Whether this process may create network namespaces (root with iproute2)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=10)
    if done.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _links() -> set[str]:
    """Every network interface's name in this namespace."""
    done = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False)
    return {line.split(":")[1].strip().split("@")[0] for line in done.stdout.splitlines() if ":" in line}


def _taken(lab_id: int, links: set[str]) -> bool:
    """A lab id is taken while its bridge or any of its links exists: the kernel removes a
    deleted namespace's links asynchronously, sometimes minutes later (its sockets drain)."""
    return f"mlab{lab_id}" in links or any(name.startswith(f"ml{lab_id}h") for name in links)


class Hosts:
    """The hosts of one lab; `create` makes them, `destroy` removes them."""

    def __init__(self, lab_id: int, hosts: Sequence[Host]) -> None:
        self.lab_id = lab_id
        self.hosts = list(hosts)
        self.bridge = f"mlab{lab_id}"
        self.gateway = f"{_PREFIX}.{lab_id}.1"

    @classmethod
    def create(cls, count: int, *, zones: Sequence[str] = ("local",)) -> Hosts:
        """`count` hosts (1..32) on a new bridge; host i's zone is zones[i % len(zones)]."""
        if not 1 <= count <= 32:
            raise ValueError(f"a lab has 1 to 32 hosts, not {count}")
        if not zones:
            raise ValueError("give at least one zone")
        links = _links()
        lab_id = next((n for n in range(1, 255) if not _taken(n, links)), None)
        if lab_id is None:
            raise LabError("every lab id is in use (bridges mlab1..mlab254)")
        hosts = [
            Host(
                name=f"h{i + 1}",
                netns=f"meshop-{lab_id}-h{i + 1}",
                address=f"{_PREFIX}.{lab_id}.{11 + i}",
                zone=zones[i % len(zones)],
                link=f"ml{lab_id}h{i + 1}",
            )
            for i in range(count)
        ]
        lab = cls(lab_id, hosts)
        try:
            lab._build()
        except BaseException:
            lab.destroy()
            raise
        return lab

    def _build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            _ip("netns", "add", host.netns)
            _ip("link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
            _ip("link", "set", host.link, "master", self.bridge)
            _ip("link", "set", host.link, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in lab {self.lab_id}; hosts: {', '.join(h.name for h in self.hosts)}")

    def cut(self, host: Host) -> None:
        """Take the host's link down: nothing reaches it or leaves it until `heal`."""
        _ip("link", "set", host.link, "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.link, "up")

    def destroy(self) -> None:
        """Remove the hosts and the bridge; idempotent. Stop the hosts' processes first: a
        namespace outlives its name while a process is still in it."""
        for host in self.hosts:
            with contextlib.suppress(LabError):
                _ip("netns", "del", host.netns)
        with contextlib.suppress(LabError):
            _ip("link", "del", self.bridge)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.destroy()
