"""Several hosts on one machine: each a Linux network namespace with its own address
on a private bridge (veth pairs), so a test can run Redis, the API, the object store
and workers on different addresses, then cut a host's link or kill a whole host.
Needs root and iproute2 (``ip netns``); :func:`namespaces_available` says why not.

    with Network() as net:
        redis_host = net.host("redis")          # 10.N.0.2
        redis_host.popen(["redis-server", ...])
        net.host("w1").cut()                    # link down: the host is unreachable
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path


def namespaces_available() -> str | None:
    """None when namespaces can be made here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"hvprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


class Host:
    """One namespace, its address, and the processes started in it."""

    def __init__(self, network: "Network", name: str, index: int):
        self.network = network
        self.name = name
        self.netns = f"{network.tag}-{name}"[:15]
        self.outer = f"{network.tag}v{index}"  # the veth end on the bridge
        self.address = f"{network.subnet}.{index}"
        self.processes: list[subprocess.Popen] = []
        _ip("netns", "add", self.netns)
        inner = f"{network.tag}i{index}"
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", self.netns)
        _ip("link", "set", self.outer, "master", network.bridge)
        _ip("link", "set", self.outer, "up")
        _ip("link", "set", "lo", "up", netns=self.netns)
        _ip("addr", "add", f"{self.address}/24", "dev", inner, netns=self.netns)
        _ip("link", "set", inner, "up", netns=self.netns)
        _ip("route", "add", "default", "via", network.gateway, netns=self.netns)

    @property
    def prefix(self) -> list[str]:
        """What runs a command on this host."""
        return ["ip", "netns", "exec", self.netns]

    def wrap(self, command: list[str]) -> list[str]:
        return [*self.prefix, *command]

    def popen(self, command: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        process = subprocess.Popen(self.wrap(command), **kwargs)
        self.processes.append(process)
        return process

    def cut(self) -> None:
        """Take the host's link down: nothing reaches it, it reaches nothing."""
        _ip("link", "set", self.outer, "down")

    def restore(self) -> None:
        _ip("link", "set", self.outer, "up")

    def kill(self) -> None:
        """SIGKILL every process of the host, at once (the machine is gone)."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def pids(self) -> list[int]:
        result = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True,
                                text=True)
        return [int(pid) for pid in result.stdout.split()]

    def remove(self) -> None:
        self.kill()
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


class Network:
    """A bridge in the root namespace (its address is the hosts' gateway, so the test
    process itself reaches every host) and the hosts on it."""

    def __init__(self, log_dir: Path | None = None):
        # Distinct per test process (pytest-xdist's gw0, gw1 run side by side), so their
        # bridges, namespaces and subnets never meet.
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
        number = 20 + (os.getpid() % 50) * 4 + worker % 4
        self.tag = f"hv{number}"
        self.subnet = f"10.{number}.77"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self.log_dir = log_dir

    def __enter__(self) -> "Network":
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)  # leftovers
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def host(self, name: str) -> Host:
        host = self.hosts[name] = Host(self, name, len(self.hosts) + 2)
        return host

    def __exit__(self, *exc) -> None:
        for host in self.hosts.values():
            host.remove()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
