"""A fast postback receiver for the benchmark: many ports, fixed latency, counters.

    python bench/receiver.py --ports 16 --latency 0.02 --ports-file /tmp/ports.json

One asyncio process listens on 127.0.0.1 on `--ports` system-chosen ports (written as a
JSON list to `--ports-file` once all listen). Each answers every request with 200 and a
short body after `--latency` seconds, keeping the connection alive (HTTP/1.1); the last
`--slow-ports` ports of that list (none by default) answer after `--slow-latency`
seconds instead, a slow host among healthy ones. It counts,
per port: requests, connections opened, and the peak of connections open at once and
of requests in flight at once, which is what shows the product's per-host cap.

`GET /__stats` on any port answers the counters of every port as JSON (not counted);
`GET /__reset` zeroes them. A hand-written HTTP/1.1 parser that understands exactly what
the benchmark's clients send (no chunked request bodies), on uvloop when it is installed
(the product's requirements have it), else asyncio's own loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\nok"
)


class PortStats:
    __slots__ = ("connections", "in_flight", "open", "peak_in_flight", "peak_open", "requests")

    def __init__(self) -> None:
        self.reset()
        self.open = 0
        self.in_flight = 0

    def reset(self) -> None:
        self.connections = 0
        self.requests = 0
        self.peak_open = getattr(self, "open", 0)
        self.peak_in_flight = getattr(self, "in_flight", 0)

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "open_now": self.open,
            "peak_open": self.peak_open,
            "peak_in_flight": self.peak_in_flight,
        }


class Receiver(asyncio.Protocol):
    def __init__(self, port: int, stats: dict[int, PortStats], latency: float) -> None:
        self.port = port
        self.all_stats = stats
        self.stats = stats[port]
        self.latency = latency
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.pending = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        s = self.stats
        s.connections += 1
        s.open += 1
        s.peak_open = max(s.peak_open, s.open)

    def connection_lost(self, exc) -> None:
        self.stats.open -= 1
        self.stats.in_flight -= self.pending
        self.pending = 0
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lowered = head.lower()
            at = lowered.find(b"\r\ncontent-length:")
            if at >= 0:
                line_end = lowered.find(b"\r\n", at + 2)
                value = lowered[at + 17 : line_end if line_end >= 0 else len(lowered)]
                length = int(value.strip() or 0)
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            self._request(head)

    def _request(self, head: bytes) -> None:
        path = head.split(b" ", 2)[1] if b" " in head else b""
        if path.startswith(b"/__stats"):
            body = json.dumps({str(p): s.as_dict() for p, s in self.all_stats.items()}).encode()
            self._write(body)
            return
        if path.startswith(b"/__reset"):
            for s in self.all_stats.values():
                s.reset()
            self._write(b"{}")
            return
        s = self.stats
        s.requests += 1
        s.in_flight += 1
        self.pending += 1
        s.peak_in_flight = max(s.peak_in_flight, s.in_flight)
        if self.latency > 0:
            self.loop.call_later(self.latency, self._answer)
        else:
            self._answer()

    def _answer(self) -> None:
        if self.transport is None:
            return
        self.pending -= 1
        self.stats.in_flight -= 1
        self.transport.write(RESPONSE)

    def _write(self, body: bytes) -> None:
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )


async def serve(
    count: int,
    latency: float,
    ports_file: str | None,
    *,
    slow_ports: int = 0,
    slow_latency: float = 0.0,
) -> None:
    loop = asyncio.get_running_loop()
    stats: dict[int, PortStats] = {}
    # Filled in before the ports are published, so before any connection comes in.
    latencies: dict[int, float] = {}
    servers = []
    for _ in range(count):
        holder: dict[str, int] = {}
        server = await loop.create_server(
            lambda h=holder: Receiver(h["port"], stats, latencies[h["port"]]),
            "127.0.0.1",
            0,
            backlog=1024,
        )
        port = server.sockets[0].getsockname()[1]
        holder["port"] = port
        stats[port] = PortStats()
        servers.append(server)
    ports = sorted(stats)
    slow = ports[len(ports) - slow_ports :] if slow_ports > 0 else []
    for port in ports:
        latencies[port] = slow_latency if port in slow else latency
    if ports_file:
        tmp = f"{ports_file}.tmp"
        with open(tmp, "w") as handle:
            json.dump(ports, handle)
        os.replace(tmp, ports_file)
    else:
        print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds before answering")
    parser.add_argument("--ports-file")
    parser.add_argument(
        "--slow-ports", type=int, default=0, help="the last N ports listed answer slowly"
    )
    parser.add_argument(
        "--slow-latency", type=float, default=0.0, help="seconds before a slow port answers"
    )
    args = parser.parse_args(argv)
    asyncio.run(
        serve(
            args.ports,
            args.latency,
            args.ports_file,
            slow_ports=args.slow_ports,
            slow_latency=args.slow_latency,
        ),
        loop_factory=_loop_factory(),
    )
    return 0


def _loop_factory():
    """uvloop where installed: the receivers stand in for other machines, so the less of
    this machine's CPU they take from the client being measured, the truer the figure."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
