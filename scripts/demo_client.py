"""The demo's API client: re-trigger postbacks over real HTTP and print what happened.

    .venv/bin/python scripts/demo_client.py --base-url http://127.0.0.1:8000 \\
        --token KEY [--receiver-stats http://127.0.0.1:PORT/_stats] [--force]

Steps, each a real request with `Authorization: Token KEY`:

1. a request without a token (must be refused with 401),
2. a dry run over the last 30 days (200: what would fire, what would be skipped),
3. a re-trigger of a few affiliates' newest conversions, finished within the request
   (200, with per-conversion results and the failures' error codes),
4. a re-trigger of the newest conversions of the last 30 days, more than
   RETRIGGER_SYNC_MAX, so the API answers 202 and the worker (`manage.py db_worker`)
   does it; the run is polled at its `Location` until final,
5. the same request again with the same `Idempotency-Key` (must return the same run),

then the receivers' own counters. Exits 1 when the API misbehaves (unexpected status,
missing keys, counts that do not add up, a background run that does not finish, a
healthy receiver that got the same event twice without --force).
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

import requests

FINAL = {"completed", "failed", "cancelled"}
RUN_KEYS = {
    "id",
    "status",
    "matched",
    "selected",
    "retriggered",
    "delivered",
    "failed",
    "skipped",
    "skippedByReason",
}


class Misbehaviour(Exception):
    pass


class Client:
    def __init__(self, base_url: str, token: str, timeout: float):
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self.session = requests.Session()
        # Loopback only: no proxy from the environment may get in between.
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Token {token}"
        self.session.headers["Accept"] = "application/json"

    def url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/"))

    def post(
        self,
        path: str,
        body: dict | None,
        *,
        params: dict | None = None,
        headers: dict | None = None,
        auth: bool = True,
    ) -> tuple[requests.Response, float]:
        started = time.monotonic()
        if auth:
            response = self.session.post(
                self.url(path), json=body, params=params, headers=headers, timeout=self.timeout
            )
        else:
            response = requests.post(self.url(path), json=body, timeout=self.timeout)
        return response, time.monotonic() - started

    def get(self, path: str) -> requests.Response:
        return self.session.get(self.url(path), timeout=self.timeout)


def expect(response: requests.Response, *statuses: int) -> dict[str, Any]:
    if response.status_code not in statuses:
        raise Misbehaviour(
            f"{response.request.method} {response.url} answered {response.status_code}, "
            f"expected {' or '.join(map(str, statuses))}: {response.text[:500]}"
        )
    try:
        document = response.json()
    except ValueError as exc:
        raise Misbehaviour(f"{response.url} did not answer JSON: {response.text[:200]}") from exc
    if not isinstance(document, dict):
        raise Misbehaviour(f"{response.url} answered {type(document).__name__}, not an object")
    return document


def check_run(document: dict[str, Any], *, final: bool) -> dict[str, Any]:
    for key in ("info", "run"):
        if key not in document:
            raise Misbehaviour(f"answer without '{key}': {str(document)[:300]}")
    run = document["run"]
    missing = RUN_KEYS - set(run)
    if missing:
        raise Misbehaviour(f"run without {sorted(missing)}: {run}")
    if final:
        # Every selected conversion either fired (and then delivered or failed) or was
        # skipped: the contract's counts must add up.
        if run["retriggered"] + run["skipped"] != run["selected"]:
            raise Misbehaviour(f"retriggered + skipped != selected in {run}")
        if run["status"] != "dry_run" and run["delivered"] + run["failed"] != run["retriggered"]:
            raise Misbehaviour(f"delivered + failed != retriggered in {run}")
        if run["selected"] > run["matched"]:
            raise Misbehaviour(f"selected > matched in {run}")
    return run


def heading(text: str) -> None:
    print(f"\n== {text}")


def counts_line(run: dict[str, Any], *, dry: bool = False) -> str:
    fired = "would fire" if dry else "retriggered"
    parts = [
        f"matched {run['matched']}",
        f"selected {run['selected']}",
        f"{fired} {run['retriggered']}",
    ]
    if not dry:
        parts += [f"delivered {run['delivered']}", f"failed {run['failed']}"]
    parts.append(f"skipped {run['skipped']}")
    return "   " + " · ".join(parts)


def reasons_line(run: dict[str, Any]) -> str:
    reasons = run.get("skippedByReason") or {}
    if not reasons:
        return "   skipped pairs by reason: none"
    return "   skipped pairs by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.items())


def print_failures(results: list[dict[str, Any]], limit: int = 5) -> None:
    failures = [
        (result["conversionId"], pair)
        for result in results
        for pair in result.get("postbacks", [])
        if pair.get("outcome") == "failed"
    ]
    if not failures:
        print("   failures: none")
        return
    print(f"   failures ({len(failures)} pairs; first {min(limit, len(failures))}):")
    for conversion_id, pair in failures[:limit]:
        status = f" (HTTP {pair['statusCode']})" if pair.get("statusCode") else ""
        print(
            f"     conversion {conversion_id} → postback {pair.get('postbackId')}: "
            f"{pair.get('error')}{status} after {pair.get('attempts')} attempt(s)"
        )


def poll(client: Client, location: str, *, timeout: float, interactive: bool) -> dict:
    started = time.monotonic()
    last_print = 0.0
    while True:
        document = expect(client.get(location), 200)
        run = check_run(document, final=False)
        elapsed = time.monotonic() - started
        if run["status"] in FINAL:
            if interactive:
                print()
            return document
        if elapsed > timeout:
            raise Misbehaviour(f"run {run['id']} still {run['status']} after {timeout:.0f} s")
        line = (
            f"   {run['status']:<9} processed {run.get('processed', '?')}/{run['selected']}"
            f" · delivered {run['delivered']} · failed {run['failed']}"
            f" · skipped {run['skipped']} · {elapsed:.0f} s"
        )
        if interactive:
            print("\r" + line, end="", flush=True)
        elif elapsed - last_print >= 5 or last_print == 0.0:
            print(line, flush=True)
            last_print = elapsed or 0.001
        time.sleep(0.5)


def receiver_summary(url: str, *, strict: bool) -> None:
    heading("What the local receivers saw")
    session = requests.Session()
    session.trust_env = False
    stats = expect(session.get(url, timeout=5), 200)
    for name in ("healthy", "failing", "slow"):
        data = stats.get(name, {})
        line = (
            f"   {name:<8} {data.get('requests', 0):>5} requests, "
            f"{data.get('distinct_event_ids', 0)} distinct event ids, "
            f"{data.get('repeated_event_ids', 0)} seen more than once"
        )
        if data.get("signed_valid") or data.get("signed_invalid"):
            line += f", signatures {data['signed_valid']} valid / {data['signed_invalid']} invalid"
        print(line)
    print("   (the failing receiver sees each event up to POSTBACK_MAX_ATTEMPTS times: retries)")
    if strict and stats.get("healthy", {}).get("repeated_event_ids"):
        raise Misbehaviour("the healthy receiver got the same event twice without force")


def run_demo(args: argparse.Namespace) -> None:
    client = Client(args.base_url, args.token, args.timeout)
    endpoint = "/api/conversions/retrigger"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = (today - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    force = {"force": "true"} if args.force else {}

    heading("1. No token: must be refused")
    response, _ = client.post(endpoint, {}, auth=False)
    expect(response, 401)
    print(f"   HTTP {response.status_code} as expected")

    heading(f"2. Dry run: conversions since {since[:10]}, newest {args.limit}")
    body = {"fromDate": since, "limit": args.limit, "sort": "-date"}
    response, took = client.post(endpoint, body, params={"dryRun": "true", **force})
    document = expect(response, 200)
    run = check_run(document, final=True)
    if run["status"] != "dry_run" or run["id"] is not None:
        raise Misbehaviour(f"a dry run must have id null and status dry_run: {run}")
    print(f"   HTTP 200 in {took:.1f} s · nothing sent, nothing stored")
    print(counts_line(run, dry=True))
    print(reasons_line(run))

    heading("3. Re-trigger now: newest 60 of affiliates 1001, 1003, 1004 (within the request)")
    body = {"affiliateId": [1001, 1003, 1004], "limit": 60, "sort": "-date"}
    response, took = client.post(endpoint, body, params=force)
    document = expect(response, 200)
    run = check_run(document, final=True)
    print(f"   HTTP 200 in {took:.1f} s · run #{run['id']} {run['status']}")
    print(counts_line(run))
    print(reasons_line(run))
    print_failures(document.get("results") or [])

    heading(
        f"4. Re-trigger in the background: since {since[:10]}, newest {args.limit} "
        "(more than RETRIGGER_SYNC_MAX: 202, then the worker)"
    )
    body = {"fromDate": since, "limit": args.limit, "sort": "-date"}
    key = f"demo-{uuid.uuid4()}"
    response, took = client.post(endpoint, body, params=force, headers={"Idempotency-Key": key})
    document = expect(response, 202, 200)
    run = check_run(document, final=False)
    if response.status_code == 202:
        location = response.headers.get("Location")
        if not location:
            raise Misbehaviour("202 without a Location header")
        print(f"   HTTP 202 in {took:.1f} s · run #{run['id']} {run['status']} · {location}")
        started = time.monotonic()
        document = poll(client, location, timeout=args.run_timeout, interactive=sys.stdout.isatty())
        run = check_run(document, final=True)
        print(f"   run #{run['id']} {run['status']} after {time.monotonic() - started:.1f} s")
        if run["status"] != "completed":
            raise Misbehaviour(f"background run ended {run['status']}: {run}")
    else:
        # Only when the selection happens to fit RETRIGGER_SYNC_MAX.
        run = check_run(document, final=True)
        print(f"   HTTP 200 in {took:.1f} s (small enough to finish within the request)")
    print(counts_line(run))
    print(reasons_line(run))
    if (
        not args.force
        and run["retriggered"] == 0
        and run["skippedByReason"].get("already_delivered")
    ):
        print("   (delivered by an earlier demo run: ./scripts/demo.sh --force fires them again)")

    # From here on a problem is reported at the end; the receivers' counters still help.
    problems: list[str] = []
    heading("5. The same request again with the same Idempotency-Key")
    try:
        replay, _ = client.post(endpoint, body, params=force, headers={"Idempotency-Key": key})
        replay_doc = expect(replay, response.status_code)
        replay_run = check_run(replay_doc, final=False)
        if replay_run["id"] != run["id"]:
            raise Misbehaviour(f"replay made run {replay_run['id']}, expected run {run['id']}")
        print(f"   HTTP {replay.status_code} · the same run #{run['id']}, nothing fired again")
    except Misbehaviour as exc:
        print(f"   PROBLEM: {exc}")
        problems.append(str(exc))

    if args.receiver_stats:
        try:
            receiver_summary(args.receiver_stats, strict=not args.force)
        except Misbehaviour as exc:
            print(f"   PROBLEM: {exc}")
            problems.append(str(exc))
    if problems:
        raise Misbehaviour("; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-trigger postbacks through the real API.")
    parser.add_argument("--base-url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--token", required=True)
    parser.add_argument("--receiver-stats", help="the demo receiver's /_stats URL")
    parser.add_argument("--force", action="store_true", help="fire already delivered ones too")
    parser.add_argument("--limit", type=int, default=1000, help="size of the background run")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=600.0,
        help="how long to wait for the background run, seconds",
    )
    args = parser.parse_args(argv)
    try:
        run_demo(args)
    except Misbehaviour as exc:
        print(f"\nDEMO FAILED: the API misbehaved: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"\nDEMO FAILED: HTTP error talking to the API: {exc}", file=sys.stderr)
        return 1
    print("\nAll API answers were as the contract says.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
