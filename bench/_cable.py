"""A pulled cable for the benchmarks: clients in a network namespace of their own, whose
connections are cut one at a time by iptables DROP rules inside that namespace.

``Cable`` creates a network namespace and a veth pair (the host end gets ``.1`` of a free
``/30`` in 10.253.0.0/16, the namespace end ``.2``); a server bound to ``server_ip`` is then
reachable from the namespace, and from this host as well (a local address: that traffic
goes over loopback, untouched). ``Cable.cut(port)`` adds ``-A INPUT -p tcp --dport PORT
-j DROP`` and ``-A OUTPUT -p tcp --sport PORT -j DROP`` in the namespace, in one
``iptables-restore --noflush`` transaction: the server never hears from that connection
again, no FIN and no RST arrive, so TCP stays open on its side. Every rule lives in the
namespace: the host's own tables and its loopback traffic are never touched. Names carry
this process's pid (``zbc<pid>``, ``zbc<pid>h``/``zbc<pid>n``), so a concurrent test or
benchmark does not collide. ``teardown`` deletes the namespace (and with it its rules and
the veth pair); call it in a ``finally`` once every process in the namespace was killed.

Needs root, ``ip`` (iproute2) and ``iptables``; ``Cable.unavailable()`` and ``setup()``
return the reason when the machine cannot do it.

The clients (``CableClients``) run in the namespace as ``python -m bench.clients cable``
(``bench/clients/cable.py``): well-behaved raw-socket clients until told ``pull K``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess

from bench.clients import Child

SUBNETS = ipaddress.ip_network("10.253.0.0/16")


def _run(*cmd: str, stdin: str | None = None) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30, input=stdin, text=True)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on an address or in a route of this host (all tables)."""
    out: list[ipaddress.IPv4Network] = []
    for cmd in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        try:
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        for token in text.split():
            if token[0].isdigit():
                with contextlib.suppress(ValueError):
                    out.append(ipaddress.IPv4Network(token, strict=False))
    return out


class Cable:
    """A network namespace with a veth link to this host, and DROP rules to pull cables."""

    def __init__(self) -> None:
        tag = f"zbc{os.getpid()}"
        self.netns = tag
        self.host_if, self.ns_if = f"{tag}h", f"{tag}n"
        self.server_ip = self.client_ip = ""
        self.cuts = 0
        self.created = False

    @staticmethod
    def unavailable() -> str | None:
        """Why this machine cannot pull cables, or None."""
        if os.geteuid() != 0:
            return "needs root to create a network namespace"
        missing = [t for t in ("ip", "iptables", "iptables-restore") if not shutil.which(t)]
        if missing:
            return f"needs {', '.join(missing)} (apt-get install iproute2 iptables)"
        return None

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used = _networks_in_use()
        subnets = list(SUBNETS.subnets(new_prefix=30))
        start = os.getpid() % len(subnets)
        for i in range(len(subnets)):
            net = subnets[(start + i) % len(subnets)]
            if not any(net.overlaps(u) for u in used):
                return net
        raise RuntimeError(f"no free /30 in {SUBNETS}")

    def setup(self) -> str | None:
        """Create the namespace and its link; the reason it cannot be done, or None."""
        reason = self.unavailable()
        if reason is not None:
            return reason
        try:
            net = self._free_subnet()
            server, client = list(net.hosts())
            self.server_ip, self.client_ip = str(server), str(client)
            _run("ip", "netns", "add", self.netns)
            self.created = True
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.netns)
            _run("ip", "addr", "add", f"{self.server_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            self.exec("ip", "addr", "add", f"{self.client_ip}/30", "dev", self.ns_if)
            self.exec("ip", "link", "set", self.ns_if, "up")
            self.exec("ip", "link", "set", "lo", "up")
            self.exec("iptables", "-w", "-L", "-n")  # iptables works in a namespace here
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            problems = self.teardown()
            detail = getattr(exc, "stderr", "") or ""
            return (
                f"cannot set up a network namespace: {exc} {detail.strip()}"
                + (f" ({'; '.join(problems)})" if problems else "")
            ).strip()
        return None

    def exec(self, *cmd: str, stdin: str | None = None) -> None:
        """Run ``cmd`` inside the namespace (raises on failure)."""
        _run("ip", "netns", "exec", self.netns, *cmd, stdin=stdin)

    def cut(self, port: int) -> None:
        """Pull the cable of the namespace's TCP connection from local ``port``."""
        self.exec(
            "iptables-restore",
            "-w",
            "--noflush",
            stdin=(
                "*filter\n"
                f"-A INPUT -p tcp --dport {port} -j DROP\n"
                f"-A OUTPUT -p tcp --sport {port} -j DROP\n"
                "COMMIT\n"
            ),
        )
        self.cuts += 1

    def flush(self) -> None:
        """Remove every rule (between two runs that reuse the namespace)."""
        self.exec("iptables", "-w", "-F")

    def clients(self, port: int, count: int, control: int, max_seconds: float) -> CableClients:
        return CableClients(self, port, count, control, max_seconds)

    def teardown(self) -> list[str]:
        """Delete the namespace (its rules, its veth end and so the host end go with it).

        Kill every process in it first. Returns what could not be removed (empty if all).
        """
        if not self.created:
            return []
        for cmd in (["ip", "netns", "del", self.netns], ["ip", "link", "del", self.host_if]):
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(cmd, capture_output=True, timeout=30)
        problems = []
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            names = subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
            ).stdout.split()
            if self.netns in names:
                problems.append(f"network namespace {self.netns} still exists")
        link = subprocess.run(
            ["ip", "link", "show", self.host_if], capture_output=True, text=True, timeout=10
        )
        if link.returncode == 0:
            problems.append(f"link {self.host_if} still exists")
        if not problems:
            self.created = False
        return problems


class CableClients(Child):
    """The ``cable`` clients (``bench.clients.cable``) in the namespace."""

    def __init__(
        self, cable: Cable, port: int, count: int, control: int, max_seconds: float
    ) -> None:
        # ``ip netns exec`` execs the command (no fork): this pid is the Python process.
        super().__init__(
            "cable",
            *("--host", cable.server_ip, "--port", str(port), "--count", str(count)),
            *("--control", str(control), "--max-seconds", str(max_seconds)),
            prefix=("ip", "netns", "exec", cable.netns),
        )
