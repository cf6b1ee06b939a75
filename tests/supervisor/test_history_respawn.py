"""The supervisor's history across a SIGKILLed shard: the crash and the respawn are
marked in order, the samples show the players lost and the new pid, and the sampling
neither stops nor forgets what came before (read over the control socket, as ``top``)."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio

from lab.rawws import RawClient
from lab.server import ServerProcess, open_server
from supervisor import control_socket

pytestmark = pytest.mark.timeout(30)

POLL_S = 0.2  # the feed samples once a second: five looks a sample


async def ask(server: ServerProcess, command: str) -> dict[str, Any]:
    return await trio.to_thread.run_sync(control_socket.request, server.control_socket, command)


class Followed:
    """What ``history <t of the last sample>`` polls have returned, each marker once."""

    def __init__(self) -> None:
        self.samples: list[dict[str, Any]] = []
        self.markers: list[dict[str, Any]] = []

    async def until(
        self, server: ServerProcess, done: Callable[[Followed], bool], timeout: float = 10.0
    ) -> None:
        with trio.fail_after(timeout):
            while True:
                since = self.samples[-1]["t"] if self.samples else None
                answer = await ask(server, "history" if since is None else f"history {since!r}")
                self.samples += answer["samples"]
                self.markers += [m for m in answer["markers"] if m not in self.markers]
                if done(self):
                    return
                await trio.sleep(POLL_S)

    def marker(self, kind: str, shard: int) -> dict[str, Any] | None:
        found = [m for m in self.markers if m["kind"] == kind and m["shard"] == shard]
        return found[0] if found else None


def players(sample: dict[str, Any], slot: int) -> int:
    return int(sample["shards"][str(slot)]["players"])


async def test_a_killed_shard_is_marked_crashed_then_respawned_and_sampling_goes_on() -> None:
    async with open_server(shards=2) as server:
        clients: list[RawClient] = []
        try:
            welcomes = []
            for _ in range(6):
                client, welcome = await RawClient.open(server.port)
                clients.append(client)
                welcomes.append(welcome)
            on = Counter(int(w["shard"]) for w in welcomes if w is not None)
            victim, count = on.most_common(1)[0]
            other = 1 - victim
            victims = [c for c, w in zip(clients, welcomes, strict=True) if w["shard"] == victim]
            status = await ask(server, "status")
            (old_pid,) = [s["pid"] for s in status["shards"] if s["shard"] == victim]

            followed = Followed()
            # Every player counted (shards report their load once a second).
            await followed.until(
                server,
                lambda f: (
                    bool(f.samples)
                    and players(f.samples[-1], victim) == count
                    and players(f.samples[-1], other) == on[other]
                ),
            )
            before = followed.samples[-1]
            assert before["shards"][str(victim)]["pid"] == old_pid

            killed_at = time.time()
            os.kill(old_pid, signal.SIGKILL)
            for client in victims:  # its players lost their connections, no close frame
                assert await client.closed_with() == 1006

            await followed.until(server, lambda f: f.marker("shard_respawn", victim) is not None)
            respawn = followed.marker("shard_respawn", victim)
            crash = followed.marker("shard_crash", victim)
            assert crash is not None and respawn is not None, followed.markers
            assert crash["signal"] == "SIGKILL"
            assert followed.markers.index(crash) < followed.markers.index(respawn)
            assert killed_at - 0.01 <= crash["t"] <= respawn["t"]
            new_pid = respawn["pid"]
            assert new_pid != old_pid

            # Samples go on: the slot's new process, without the players it lost.
            await followed.until(
                server,
                lambda f: (
                    f.samples[-1]["t"] > respawn["t"]
                    and f.samples[-1]["shards"][str(victim)]["pid"] == new_pid
                ),
            )
            after = [s for s in followed.samples if s["t"] > killed_at]
            assert after and all(players(s, victim) <= count for s in after)
            assert players(after[-1], victim) == 0
            assert players(after[-1], other) == on[other]  # the other shard's kept theirs
            assert after[-1]["players"] == on[other]
            # The dead shard could not count its connections' end: the supervisor counts
            # the ones its last report carried as abnormal (1006, what the clients saw).
            full = await ask(server, "history")
            pairs = zip(full["samples"], full["samples"][1:], strict=False)
            abnormal = sum(
                b["rates"].get("disconnect|abnormal", 0) * (b["t"] - a["t"]) for a, b in pairs
            )
            assert abs(abnormal - count) < 0.5, (abnormal, count)

            # One sample a second throughout, and the ones before the kill still held.
            full = await ask(server, "history")
            ts = [s["t"] for s in full["samples"]]
            gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
            assert gaps and all(0.5 <= gap <= 1.6 for gap in gaps), gaps
            assert before in full["samples"]
            assert ts[0] <= before["t"] < killed_at < ts[-1]
            # What the polls since a time gathered is what the history holds (a sample or
            # marker newer than the last poll may have come since).
            first, last = followed.samples[0]["t"], followed.samples[-1]["t"]
            assert [s for s in full["samples"] if first <= s["t"] <= last] == followed.samples
            assert full["markers"][: len(followed.markers)] == followed.markers
        finally:
            for client in clients:
                await client.aclose()
