#!/usr/bin/env python3
"""A local postback receiver for the demo: several affiliates' servers in one process.

    python scripts/receiver.py serve --ports-file .demo/receivers.json
    python scripts/receiver.py stats --url http://127.0.0.1:PORT/_stats

`serve` listens on 127.0.0.1 with one port per behaviour:

- `healthy`  answers 200 at once,
- `failing`  answers 500 to everything (the product retries, then gives up),
- `slow`     answers 200 after `--slow-delay` seconds (default 2).

It records what it received (requests, distinct `event_id`s, repeats, Standard Webhooks
signatures checked with `--secret`) and serves the numbers as JSON at `/_stats` on every
port. Ports are chosen by the system unless given; the chosen base URLs are written to
`--ports-file` (JSON) once every port is listening, so a caller can wait for that file.

Standard library only: it must run before and outside the project's virtualenv.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BEHAVIOURS = ("healthy", "failing", "slow")
MAX_BODY = 1024 * 1024


class Stats:
    """Counters per behaviour, shared by every handler thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = {name: self._empty() for name in BEHAVIOURS}
        self._event_ids: dict[str, dict[str, int]] = {name: {} for name in BEHAVIOURS}
        self.started = time.time()

    @staticmethod
    def _empty() -> dict:
        return {
            "requests": 0,
            "methods": {},
            "without_event_id": 0,
            "signed_valid": 0,
            "signed_invalid": 0,
            "last": [],
        }

    def record(
        self,
        behaviour: str,
        *,
        method: str,
        path: str,
        event_id: str | None,
        signature: bool | None,
    ) -> None:
        with self._lock:
            data = self._data[behaviour]
            data["requests"] += 1
            data["methods"][method] = data["methods"].get(method, 0) + 1
            if event_id:
                seen = self._event_ids[behaviour]
                seen[event_id] = seen.get(event_id, 0) + 1
            else:
                data["without_event_id"] += 1
            if signature is True:
                data["signed_valid"] += 1
            elif signature is False:
                data["signed_invalid"] += 1
            data["last"] = (data["last"] + [f"{method} {path}"])[-3:]

    def snapshot(self) -> dict:
        with self._lock:
            result = {}
            for name in BEHAVIOURS:
                seen = self._event_ids[name]
                result[name] = {
                    **self._data[name],
                    "distinct_event_ids": len(seen),
                    # Event ids that arrived more than once. Expected at `failing` (the
                    # product retries), a sign of double firing at `healthy`.
                    "repeated_event_ids": sum(1 for count in seen.values() if count > 1),
                }
            result["uptime_s"] = round(time.time() - self.started, 1)
            return result


def verify_signature(secret: str, headers, body: bytes) -> bool | None:
    """Standard Webhooks: HMAC-SHA256 over `id.timestamp.body`, base64, `v1,` prefixed.

    None when the request carries no signature headers (an unsigned postback).
    """
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id or timestamp or signatures):
        return None
    if not (secret and msg_id and timestamp and signatures):
        return False
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        key = raw.encode()
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for item in signatures.split():
        version, _, value = item.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


def event_id_of(query: str, body: bytes) -> str | None:
    values = parse_qs(query).get("event_id")
    if values and values[0]:
        return values[0]
    if body:
        try:
            document = json.loads(body)
        except ValueError:
            return None
        if isinstance(document, dict) and document.get("event_id"):
            return str(document["event_id"])
    return None


def make_handler(behaviour: str, stats: Stats, *, slow_delay: float, secret: str, verbose: bool):
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as a real affiliate server would offer; every answer has a length.
        protocol_version = "HTTP/1.1"
        server_version = f"demo-receiver-{behaviour}"

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            parts = urlsplit(self.path)
            length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
            body = self.rfile.read(length) if length else b""
            if parts.path == "/_stats":
                self._answer(200, stats.snapshot())
                return
            stats.record(
                behaviour,
                method=self.command,
                path=parts.path,
                event_id=event_id_of(parts.query, body),
                signature=verify_signature(secret, self.headers, body),
            )
            if behaviour == "failing":
                self._answer(500, {"error": "the demo's failing receiver always fails"})
                return
            if behaviour == "slow":
                time.sleep(slow_delay)
            self._answer(200, {"ok": True})

        do_GET = do_POST = do_PUT = do_HEAD = _handle

        def log_message(self, format, *args):
            if verbose:
                sys.stderr.write(f"[{behaviour}] {format % args}\n")

    return Handler


def serve(args: argparse.Namespace) -> int:
    stats = Stats()
    ports = {"healthy": args.healthy_port, "failing": args.failing_port, "slow": args.slow_port}
    servers: list[ThreadingHTTPServer] = []
    urls = {}
    for behaviour in BEHAVIOURS:
        handler = make_handler(
            behaviour,
            stats,
            slow_delay=args.slow_delay,
            secret=args.secret,
            verbose=args.verbose,
        )
        server = ThreadingHTTPServer((args.host, ports[behaviour]), handler)
        server.daemon_threads = True
        servers.append(server)
        urls[behaviour] = f"http://{args.host}:{server.server_address[1]}"
    urls["stats"] = f"{urls['healthy']}/_stats"

    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()

    if args.ports_file:
        # Written atomically: a reader polling for the file never sees half of it.
        tmp = f"{args.ports_file}.tmp"
        with open(tmp, "w") as handle:
            json.dump(urls, handle)
        os.replace(tmp, args.ports_file)
    print("receiver listening: " + ", ".join(f"{k} {v}" for k, v in urls.items()), flush=True)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    for server in servers:
        server.shutdown()
        server.server_close()
    print(format_stats(stats.snapshot()), flush=True)
    return 0


def format_stats(snapshot: dict) -> str:
    lines = []
    for name in BEHAVIOURS:
        data = snapshot[name]
        methods = ", ".join(f"{m} {n}" for m, n in sorted(data["methods"].items())) or "-"
        line = (
            f"  {name:<8} {data['requests']:>6} requests ({methods}), "
            f"{data['distinct_event_ids']} distinct event ids, "
            f"{data['repeated_event_ids']} received more than once"
        )
        if data["signed_valid"] or data["signed_invalid"]:
            line += f", signatures: {data['signed_valid']} valid / {data['signed_invalid']} invalid"
        lines.append(line)
    return "\n".join(lines)


def show_stats(args: argparse.Namespace) -> int:
    with urllib.request.urlopen(args.url, timeout=5) as response:  # loopback only
        snapshot = json.load(response)
    print(json.dumps(snapshot, indent=2) if args.json else format_stats(snapshot))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the receivers until SIGINT/SIGTERM")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--healthy-port", type=int, default=0)
    p_serve.add_argument("--failing-port", type=int, default=0)
    p_serve.add_argument("--slow-port", type=int, default=0)
    p_serve.add_argument("--slow-delay", type=float, default=2.0, help="seconds")
    p_serve.add_argument("--secret", default="", help="Standard Webhooks secret to verify")
    p_serve.add_argument("--ports-file", help="write the base URLs here as JSON")
    p_serve.add_argument("--verbose", action="store_true", help="log every request")
    p_serve.set_defaults(func=serve)

    p_stats = sub.add_parser("stats", help="print the counters of a running receiver")
    p_stats.add_argument("--url", required=True, help="http://127.0.0.1:PORT/_stats")
    p_stats.add_argument("--json", action="store_true")
    p_stats.set_defaults(func=show_stats)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
