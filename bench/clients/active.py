"""The ``active`` mode: echo clients at a steady rate plus one ``say`` client (``bench idle``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import time

from core.ws_codec import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from lab.jsonproc import StdinCommands, emit
from lab.rawws import client_frame, close_reply, open_ws, text_frame


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--echo-clients", type=int, default=4)
    p.add_argument("--echo-rate", type=float, default=50.0)
    p.add_argument("--say-rate", type=float, default=1.0)
    p.add_argument("--say-bytes", type=int, default=64)
    p.add_argument("--say-after", type=float, default=0.0, help="seconds before says")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--grace", type=float, default=5.0)


def run(a: argparse.Namespace) -> None:
    """Echo clients at a steady rate (round trips measured) plus one ``say`` client.

    Open loop: sends follow a fixed schedule whatever the replies do, so a server stall
    shows up as late replies, not as fewer samples. Says start ``--say-after`` seconds in.
    After the ``result`` line the clients stay connected (answering pings and the close
    frame) until stdin says ``close`` or closes, so their leaving is not part of the run.
    """
    ep = select.epoll()
    clients = []
    n_echo = a.echo_clients
    n_say = 1 if a.say_rate > 0 else 0
    for _ in range(n_echo + n_say):
        sock, frames, welcome = open_ws(a.host, a.port, source=a.source, timeout=10.0)
        sock.setblocking(False)
        clients.append(
            {
                "sock": sock,
                "frames": frames,
                "session": welcome["session"],
                "shard": welcome.get("shard"),
            }
        )
        ep.register(sock.fileno(), select.EPOLLIN)
    by_fd = {c["sock"].fileno(): i for i, c in enumerate(clients)}
    emit({"type": "connected", "clients": len(clients)})

    period = 1.0 / a.echo_rate
    t0 = time.perf_counter() + 0.2
    end = t0 + a.duration
    per_client = int(a.echo_rate * a.duration)
    # client i sends its k-th echo at t0 + (k + i / n_echo) * period
    next_k = [0] * n_echo
    sent: dict[tuple[int, int], float] = {}
    # (send time since t0 in s, round trip in ms, echo client index)
    rtts: list[tuple[float, float, int]] = []
    say_period = 1.0 / a.say_rate if n_say else 0.0
    say_start = t0 + min(a.say_after, a.duration)
    say_total = int(a.say_rate * (end - say_start)) if n_say else 0
    say_k = 0
    say_sent: dict[str, float] = {}
    say_wall: dict[str, float] = {}  # tag -> time.time() when sent
    say_rtts: list[tuple[float, float]] = []
    counts = {"said": 0, "pongs": 0}
    text = "x" * a.say_bytes
    errors: list[str] = []

    def on_frames(i: int, data: bytes, received: float) -> None:
        c = clients[i]
        for opcode, payload in c["frames"].feed(data):
            if opcode == OP_PING:
                c["sock"].send(client_frame(OP_PONG, payload))
                counts["pongs"] += 1
            elif opcode == OP_CLOSE:
                with contextlib.suppress(OSError):
                    c["sock"].send(close_reply(payload[0]))
                errors.append(f"client {i}: close frame {payload[0]}")
            elif opcode == OP_TEXT:
                if payload.startswith(b'{"type":"echo"'):
                    n = json.loads(payload)["data"]
                    started = sent.pop((i, n), None)
                    if started is not None:
                        rtts.append((started - t0, (received - started) * 1000.0, i))
                elif payload.startswith(b'{"type":"said"'):
                    counts["said"] += 1
                    if i == n_echo:
                        message = json.loads(payload)
                        if message.get("from") == c["session"]:
                            started = say_sent.pop(message["text"][:6], None)
                            if started is not None:
                                say_rtts.append((started - t0, (received - started) * 1000.0))

    stdin: StdinCommands | None = None  # read once the result is out
    going = True

    def poll(timeout: float) -> None:
        nonlocal going
        for fd, _ev in ep.poll(timeout):
            if stdin is not None and fd == stdin.fd:
                going = stdin.dispatch(lambda line: line != "close")
                continue
            i = by_fd[fd]
            try:
                data = clients[i]["sock"].recv(262144)
            except BlockingIOError:
                continue
            except OSError as exc:
                errors.append(f"client {i}: {exc!r}")
                data = b""
            if not data:
                errors.append(f"client {i}: connection closed")
                ep.unregister(fd)
                continue
            on_frames(i, data, time.perf_counter())

    grace_end = end + a.grace
    while True:
        now = time.perf_counter()
        if now > grace_end or (now > end and not sent and not say_sent):
            break
        nxt = grace_end
        for i in range(n_echo):
            k = next_k[i]
            if k >= per_client:
                continue
            due = t0 + (k + i / n_echo) * period
            if due <= now:
                n = i * per_client + k
                try:
                    clients[i]["sock"].send(text_frame({"type": "echo", "data": n}))
                except OSError as exc:
                    errors.append(f"echo send: {exc!r}")
                sent[(i, n)] = time.perf_counter()
                next_k[i] = k + 1
                due = t0 + (k + 1 + i / n_echo) * period
            nxt = min(nxt, due)
        if say_k < say_total:
            due = say_start + (say_k + 0.5) * say_period
            if due <= now:
                tag = f"{say_k:06d}"
                try:
                    clients[n_echo]["sock"].send(
                        text_frame({"type": "say", "text": tag + text[len(tag) :]})
                    )
                except OSError as exc:
                    errors.append(f"say send: {exc!r}")
                say_sent[tag] = time.perf_counter()
                say_wall[tag] = time.time()
                say_k += 1
                due = say_start + (say_k + 0.5) * say_period
            nxt = min(nxt, due)
        poll(max(0.0, nxt - time.perf_counter()))
    emit(
        {
            "type": "result",
            "rtts": rtts,
            "client_shards": [c["shard"] for c in clients[:n_echo]],
            "lost": len(sent),
            "t0": t0,
            "say_after": say_start - t0,
            "say_wall": say_wall,
            "say_rtts": say_rtts,
            "say_lost": len(say_sent),
            "said": counts["said"],
            "pongs": counts["pongs"],
            "errors": errors[:20],
        }
    )
    # Linger until told to go (bounded), still answering pings and close frames.
    stdin = StdinCommands(ep)
    stop_at = time.monotonic() + a.max_seconds
    while going and time.monotonic() < stop_at:
        poll(0.5)
    for c in clients:
        c["sock"].close()
