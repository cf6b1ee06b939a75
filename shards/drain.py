"""Draining a shard: for a shutdown, or to hand everything to a replacement (a roll).

Shutdown (SIGTERM, the supervisor's ``Drain``, or the supervisor gone): stop accepting,
send every client ``server_shutdown`` with a reconnect hint spread over a window (no
thundering herd on the siblings), close 1012, wait up to the drain timeout, close the rest
hard, report ``Drained`` and let the shard end.

A node leaving its cluster (``Drain(evacuate=True, hold_s>0)``): new connections get 503,
the rooms are evacuated as below but to the supervisor, which stores each room's state in
Redis for the node that claims the room next; if that fails, the rooms' sessions end
instead (``room_moved``). Then every other client is told to come back elsewhere, and the
shard holds their away sessions for ``hold_s`` so other nodes can fetch them.

Rolling restart (``Drain(evacuate=True)``): stop accepting, then move the shard's rooms and
sessions to the replacement one unit at a time (a room with its players, a slice of the
lobby), paced across the reconnect window. Each unit is frozen (its connections are not
read meanwhile), sent as bounded ``Evacuate`` frames, and once the supervisor says the
replacement holds it (``Evacuated(ok=True)``) its clients get ``server_shutdown`` + 1012
and come back to the replacement. Until its unit's turn a connection is served as usual:
heartbeats acked, messages processed. If a hand-off fails (``Evacuated(ok=False)``, or no
answer within the fetch timeout) the drain is aborted: every unit still here is served
again, accepting resumes, and the shard stays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from core.close_codes import CloseCode, How
from core.control import ControlMessage, Drained, Evacuated
from shards.log import log

if TYPE_CHECKING:
    from core.config import ServerConfig
    from shards.acceptor import Acceptor
    from shards.connection import Connections
    from shards.session_host import SessionHost, Unit

EVACUATION_PASSES = 3  # sessions that arrive during a roll are moved in another pass


class Drainer:
    def __init__(
        self,
        shard_index: int,
        config: ServerConfig,
        acceptor: Acceptor,
        connections: Connections,
        host: SessionHost | None,
        control: Callable[[ControlMessage], None],
        restart_accepting: Callable[[], None],
    ) -> None:
        self.shard_index = shard_index
        self.config = config
        self.acceptor = acceptor
        self.connections = connections
        self.host = host
        self._control = control
        self._restart_accepting = restart_accepting
        self.draining = False
        self.done = trio.Event()
        self._units: dict[int, Unit] = {}
        self._next_unit = 0
        self._answered = trio.Event()
        self._aborted = False
        self._reason = ""
        self._reconnect_after_ms = 0

    # ------------------------------------------------------------------ entry
    async def drain(
        self,
        reason: str,
        reconnect_after_ms: int,
        timeout: float,
        evacuate: bool = False,
        window_ms: int | None = None,
        hold_s: float = 0.0,
    ) -> None:
        if self.draining or self.done.is_set():
            return
        self.draining = True
        self._aborted = False
        self._reason, self._reconnect_after_ms = reason, reconnect_after_ms
        started = trio.current_time()
        if hold_s > 0:
            # Answer new connections (503, /healthz too) instead of leaving them unaccepted.
            self.connections.closing_reason = "node draining"
            if self.host is not None and not evacuate:
                self.host.evict_rooms("room_moved", reconnect_after_ms)
        else:
            self.acceptor.scope.cancel()
        self.acceptor.publish_load()
        self.acceptor.publish = False  # the replacement publishes this slot's load now
        log(
            "drain_start",
            shard=self.shard_index,
            connections=len(self.connections.links),
            reason=reason,
            evacuate=evacuate,
        )
        if evacuate and hold_s > 0 and self.host is not None:
            # Leaving the cluster: rooms go (through Redis) to whichever node claims them
            # next; when that fails they end here as if the lease were lost.
            if not await self._evacuate((window_ms or 0) / 1000, rooms_only=True):
                for unit in self._units.values():
                    self.host.abort_unit(unit)
                self._units.clear()
                self.host.evict_rooms("room_moved", reconnect_after_ms)
            window = reconnect_after_ms if window_ms is None else window_ms
            self._tell_everyone(reason, reconnect_after_ms, window)
        elif evacuate and self.host is not None:
            if not await self._evacuate((window_ms or 0) / 1000):
                self._abort()
                return
        else:
            window = reconnect_after_ms if window_ms is None else window_ms
            self._tell_everyone(reason, reconnect_after_ms, window)
        await self._finish(timeout, started, hold_s)

    def on_evacuated(self, message: Evacuated) -> None:
        """The supervisor's answer for one unit."""
        unit = self._units.pop(message.unit, None)
        if unit is None or self.host is None:
            return
        if message.ok and not self._aborted:
            for conn in self.host.commit_unit(unit):
                self.host.tell_to_leave(conn, self._reason, self._reconnect_after_ms)
        else:
            self._aborted = True
            self.host.abort_unit(unit)
        self._answered.set()

    # ------------------------------------------------------------------ evacuation
    async def _evacuate(self, window: float, rooms_only: bool = False) -> bool:
        host = self.host
        assert host is not None
        for _ in range(EVACUATION_PASSES):
            units = host.evacuation_units(rooms_only)
            if not units:
                break
            pause = window / max(1, len(units))
            for i, unit in enumerate(units):
                if i:
                    await trio.sleep(pause)  # relative: a stall does not release a burst
                if self._aborted:
                    break
                number = self._next_unit
                self._next_unit += 1
                self._units[number] = unit
                for frame in host.export_unit(number, unit):
                    self._control(frame)
            with trio.move_on_after(self.config.fetch_timeout + 1.0):
                while self._units and not self._aborted:
                    self._answered = trio.Event()
                    await self._answered.wait()
            if self._aborted or self._units:
                return False
            window = 0.0  # later passes: only stragglers that arrived meanwhile
        if rooms_only:
            return True
        # Connections without a session (never attached, or --app echo) just go.
        for link in list(self.connections.links.values()):
            if not link.closing and self.connections.handlers.get(link.slot) is None:
                link.close(CloseCode.SERVICE_RESTART, self._reason[:60])
        return True

    def _abort(self) -> None:
        host = self.host
        assert host is not None
        for unit in self._units.values():
            host.abort_unit(unit)
        log(
            "drain_aborted",
            shard=self.shard_index,
            units_kept=len(self._units),
            sessions=len(host.sessions),
        )
        self._units.clear()
        self.draining = False
        self.acceptor.publish = True
        self._restart_accepting()

    # ------------------------------------------------------------------ shutdown
    def _tell_everyone(self, reason: str, reconnect_after_ms: int, window_ms: int) -> None:
        links = [link for link in self.connections.links.values() if not link.closing]
        for i, link in enumerate(links):
            delay = reconnect_after_ms + (window_ms * i) // max(1, len(links))
            conn = self.connections.handlers.get(link.slot)
            if conn is not None and self.host is not None and conn.session is not None:
                self.host.tell_to_leave(conn, reason, delay)
            else:
                link.close(CloseCode.SERVICE_RESTART, reason[:60])

    async def _finish(self, timeout: float, started: float, hold_s: float = 0.0) -> None:
        connections = self.connections
        total = len(connections.links)
        if connections.links:
            connections.all_closed = trio.Event()
            with trio.move_on_after(timeout):
                await connections.all_closed.wait()
        forced = len(connections.links)
        for link in list(connections.links.values()):
            link.abort(How.SERVER_CLOSED, "drain timeout", CloseCode.SERVICE_RESTART)
        if forced:
            with trio.move_on_after(1):
                while connections.links:
                    connections.all_closed = trio.Event()
                    await connections.all_closed.wait()
        if hold_s > 0 and self.host is not None:
            held = len(self.host.sessions)
            with trio.move_on_after(hold_s):
                await self.host.wait_empty()
            log(
                "drain_hold_done",
                shard=self.shard_index,
                sessions=held,
                left=len(self.host.sessions),
                hold_s=hold_s,
            )
        log(
            "drain_done",
            shard=self.shard_index,
            closed=total - forced,
            forced=forced,
            duration_s=trio.current_time() - started,
        )
        self._control(Drained(shard=self.shard_index, closed=total - forced, forced=forced))
        self.done.set()
