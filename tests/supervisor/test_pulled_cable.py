"""A pulled cable: a client in a network namespace we create, behind an iptables DROP.

TCP stays "open" on the server (no FIN, no RST ever arrives): only the heartbeat can find
this zombie, within interval + timeout + tick of the client's last frame. Needs root,
``ip netns`` and ``iptables`` (``.ci/run`` installs them); skipped, with the reason
printed, where the machine forbids namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import trio

from core.heartbeat import HeartbeatPolicy
from lab.server import ROOT, open_server

pytestmark = pytest.mark.timeout(120)

NS = f"wsz{os.getpid() % 100000}"
HOST_IF, NS_IF = f"vz{os.getpid() % 100000}a", f"vz{os.getpid() % 100000}b"
SERVER_IP, CLIENT_IP = "10.251.7.1", "10.251.7.2"

CLIENT = r"""
import sys
from lab.rawws import OP_PING, OP_PONG, client_frame, open_ws
sock, frames, welcome = open_ws(sys.argv[1], int(sys.argv[2]), timeout=10)
print("welcome", welcome["session"], flush=True)
data = b""
while True:  # a well-behaved client: reads, answers every ping
    for kind, value in frames.feed(data):
        if kind == OP_PING:
            sock.sendall(client_frame(OP_PONG, value))
    data = sock.recv(65536)
    if not data:
        break
"""


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _setup_namespace() -> str | None:
    """Create the namespace and its veth link; the reason it cannot be done, or None."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace"
    if not shutil.which("ip") or not shutil.which("iptables"):
        return "needs iproute2 and iptables (apt-get install iproute2 iptables)"
    try:
        _run("ip", "netns", "add", NS)
        _run("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
        _run("ip", "link", "set", NS_IF, "netns", NS)
        _run("ip", "addr", "add", f"{SERVER_IP}/30", "dev", HOST_IF)
        _run("ip", "link", "set", HOST_IF, "up")
        _run("ip", "netns", "exec", NS, "ip", "addr", "add", f"{CLIENT_IP}/30", "dev", NS_IF)
        _run("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
        _run("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
    except (subprocess.CalledProcessError, OSError) as exc:
        _teardown_namespace()
        detail = getattr(exc, "stderr", b"") or b""
        return f"this machine forbids network namespaces: {exc} {detail.decode().strip()}"
    return None


def _teardown_namespace() -> None:
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, timeout=30)
    subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, timeout=30)


async def test_a_client_behind_a_dropped_network_is_found_within_the_bound() -> None:
    reason = _setup_namespace()
    if reason is not None:
        print(f"SKIP pulled-cable test: {reason}")
        pytest.skip(reason)
    interval, timeout = 0.5, 1.0
    client: subprocess.Popen[str] | None = None
    try:
        async with open_server(
            "--host",
            SERVER_IP,
            "--heartbeat-interval",
            str(interval),
            "--heartbeat-timeout",
            str(timeout),
            shards=2,
        ) as server:
            client = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    NS,
                    sys.executable,
                    "-c",
                    CLIENT,
                    SERVER_IP,
                    str(server.port),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            assert client.stdout is not None
            line = await trio.to_thread.run_sync(client.stdout.readline)
            assert line.startswith("welcome"), line
            session = line.split()[1]
            assert not server.log.events("disconnect", session=session)
            # Pull the cable: nothing leaves or enters the client's network any more.
            _run("ip", "netns", "exec", NS, "iptables", "-A", "INPUT", "-j", "DROP")
            _run("ip", "netns", "exec", NS, "iptables", "-A", "OUTPUT", "-j", "DROP")
            dropped_at = time.time()
            found = await server.log.wait_for("disconnect", session=session, timeout=30)
            bound = HeartbeatPolicy(interval, timeout).detection_bound
            after = float(found["ts"]) - dropped_at
            print(
                f"pulled cable found after {after:.3f} s (silent {found['silent_s']} s), "
                f"bound {bound:.3f} s"
            )
            assert (found["kind"], found["code"]) == ("heartbeat_timeout", "1006")
            assert float(found["silent_s"]) <= bound + 0.05
            assert after <= bound + 0.25  # the log line and this machine's scheduling
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait(timeout=10)
        _teardown_namespace()
