"""Throughput, per-host caps, selection scaling and memory of the re-trigger path.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres python bench/run.py

Everything runs on this machine in one go, receiver and clients side by side:

1. throughput: `--postbacks` pairs spread over `--hosts` receiver ports (one asyncio
   process, `--latency` seconds per answer) delivered by
   - a sequential loop of `requests.get` (the baseline, `--seq-requests` of them),
   - an aiohttp client with `--aiohttp-connections` connections, the same URLs,
   - the product: `manage.py retrigger_conversions` in a subprocess (the real service
     path: planning, skip rules, claims, HTTP, bulk writes of attempts and counters),
   alternated for `--rounds` rounds, best round of each reported; plus the receiver's
   peak of connections open at once per port, which must stay within the cap;
2. selection scaling: a selective dry run (`--affiliate-id` of an affiliate with 500
   conversions) at 10k / 100k / 1M rows in PostgreSQL, best of `--scale-repeats`;
3. memory: a real run over 20k and over 200k conversions, peak resident memory;
4. isolation: `--isolation-postbacks` pairs over `--hosts` hosts delivered by the product
   three times: every host healthy, one host slow (`--slow-latency` seconds an answer),
   one host dead (connection refused, so its pairs are retried). From the stored
   attempts: the healthy hosts' postbacks per second, from the run's first attempt to
   the last healthy host's last answer, which must stay near the all-healthy figure.

Databases `<--db-prefix>` and `<--db-prefix>_scale_<rows>` are created next to the one
`DATABASE_URL` names (PostgreSQL only) and reused on later runs: seeding is skipped
when the rows are there; earlier runs' attempts are truncated so every run does the
same work. Seeding is `INSERT ... SELECT generate_series` in PostgreSQL
itself, with the conversion indexes dropped and rebuilt around big loads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil
import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TEMPLATE = (
    "http://127.0.0.1:{port}/pb?click={{click_id}}&payout={{payout}}"
    "&tx={{transaction_id}}&ev={{event_id}}&t={{timestamp}}"
)
THROUGHPUT_ACCOUNT = 1
MEMORY_ACCOUNT = 2
SCALE_ACCOUNT = 3
ISOLATION_ACCOUNT = 4
NEEDLE_AFFILIATE = 999
NEEDLE_ROWS = 500
MEMORY_FIRST_ID = 10_000_001
ISOLATION_FIRST_ID = 20_000_001
ISOLATION_FIRST_AFFILIATE = 401


# --- databases and seeding ---------------------------------------------------------------


def database_url(base: str, name: str) -> str:
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def ensure_database(base: str, name: str) -> str:
    with psycopg.connect(database_url(base, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url(base, name)
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--run-syncdb", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        check=True,
    )
    return url


def seed_reference(conn: psycopg.Connection, account: int, affiliates: list[int]) -> None:
    conn.execute(
        "INSERT INTO conversions_account (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        [account, f"bench {account}"],
    )
    conn.execute(
        "INSERT INTO conversions_conversiontype (id, name) VALUES (1, 'sale') "
        "ON CONFLICT DO NOTHING"
    )
    for affiliate in affiliates:
        conn.execute(
            "INSERT INTO conversions_affiliate (id, account_id, name, is_active) "
            "VALUES (%s, %s, %s, true) ON CONFLICT DO NOTHING",
            [affiliate, account, f"affiliate {affiliate}"],
        )
        has = conn.execute(
            "SELECT 1 FROM conversions_postback WHERE affiliate_id = %s", [affiliate]
        ).fetchone()
        if not has:
            conn.execute(
                "INSERT INTO conversions_postback "
                "(affiliate_id, url, method, is_active, secret, conversion_type_id) "
                "VALUES (%s, %s, 'GET', true, '', NULL)",
                [affiliate, TEMPLATE.format(port=9)],
            )


def point_postbacks(conn: psycopg.Connection, affiliates: list[int], ports: list[int]) -> None:
    for index, affiliate in enumerate(affiliates):
        conn.execute(
            "UPDATE conversions_postback SET url = %s WHERE affiliate_id = %s",
            [TEMPLATE.format(port=ports[index % len(ports)]), affiliate],
        )


def seed_conversions(
    conn: psycopg.Connection,
    *,
    account: int,
    first_id: int,
    count: int,
    affiliates: list[int],
    rebuild_indexes: bool,
) -> None:
    """Rows first_id .. first_id+count-1 that are not there yet, spread over affiliates."""
    have = conn.execute(
        "SELECT count(*) FROM conversions_conversion WHERE id BETWEEN %s AND %s",
        [first_id, first_id + count - 1],
    ).fetchone()[0]
    if have >= count:
        return
    started = time.perf_counter()
    indexes = []
    if rebuild_indexes:
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
            "'conversions_conversion' AND indexname <> 'conversions_conversion_pkey'"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
    conn.execute(
        """
        INSERT INTO conversions_conversion (
            id, created_at, updated_at, click_id, transaction_id, status, payout, revenue,
            currency, converted_at, sub1, sub2, sub3, sub4, sub5, account_id, affiliate_id,
            brand_id, conversion_type_id, traffic_source_id)
        SELECT g, ts, ts, md5('c' || g)::uuid, 'tx-' || g, 'approved', (g %% 1000) / 10.0,
               (g %% 1000) / 5.0, 'USD', ts, 'sub ' || (g %% 97), '', '', '', '', %(account)s,
               (%(affiliates)s::int[])[1 + g %% %(n)s], NULL, 1, NULL
        FROM (
            SELECT g, timestamptz '2026-01-01' + (g %% 525600) * interval '1 minute' AS ts
            FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
        ) AS rows
        ON CONFLICT (id) DO NOTHING
        """,
        {
            "account": account,
            "affiliates": affiliates,
            "n": len(affiliates),
            "first": first_id,
            "last": first_id + count - 1,
        },
    )
    for _, definition in indexes:
        conn.execute(definition)
    # As a live table would be: statistics, hint bits and the visibility map (index-only
    # scans) in place, so the first measured run does not pay for the bulk load.
    conn.execute("VACUUM (ANALYZE) conversions_conversion")
    print(f"  seeded {count - have:,} conversions in {time.perf_counter() - started:.1f}s")


# --- the receiver ---------------------------------------------------------------------------


class Receivers:
    """`count` ports answering after `latency`; the last `slow` of them after `slow_latency`."""

    def __init__(
        self, count: int, latency: float, *, slow: int = 0, slow_latency: float = 0.0
    ) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="bench-receiver-")
        ports_file = Path(self.dir.name, "ports.json")
        self.process = subprocess.Popen(
            [
                PYTHON,
                str(ROOT / "bench" / "receiver.py"),
                "--ports",
                str(count),
                "--latency",
                str(latency),
                "--slow-ports",
                str(slow),
                "--slow-latency",
                str(slow_latency),
                "--ports-file",
                str(ports_file),
            ]
        )
        deadline = time.monotonic() + 15
        while not ports_file.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.05)
        self.ports: list[int] = json.loads(ports_file.read_text())
        self.cpu = psutil.Process(self.process.pid)

    def stats(self) -> dict[int, dict]:
        answer = requests.get(f"http://127.0.0.1:{self.ports[0]}/__stats", timeout=5).json()
        return {int(port): counters for port, counters in answer.items()}

    def reset(self) -> None:
        requests.get(f"http://127.0.0.1:{self.ports[0]}/__reset", timeout=5)

    def cpu_seconds(self) -> float:
        times = self.cpu.cpu_times()
        return times.user + times.system

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.dir.cleanup()


# --- the three clients ----------------------------------------------------------------------


def throughput_urls(conn: psycopg.Connection, ports: list[int], count: int) -> list[str]:
    """The URLs the product sends for the throughput set (event ids aside)."""
    rows = conn.execute(
        "SELECT c.click_id, c.payout, c.transaction_id, c.converted_at, c.affiliate_id "
        "FROM conversions_conversion c WHERE c.account_id = %s ORDER BY c.id LIMIT %s",
        [THROUGHPUT_ACCOUNT, count],
    ).fetchall()
    urls = []
    for n, (click, payout, tx, at, affiliate) in enumerate(rows):
        port = ports[(affiliate - 1) % len(ports)]
        urls.append(
            f"http://127.0.0.1:{port}/pb?click={click}&payout={payout:.2f}&tx={tx}"
            f"&ev=00000000-0000-5000-8000-{n:012d}&t={int(at.timestamp())}"
        )
    return urls


def _own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def sequential_baseline(urls: list[str]) -> float:
    started = time.perf_counter()
    for url in urls:
        requests.get(url, timeout=10).raise_for_status()
    return len(urls) / (time.perf_counter() - started)


def aiohttp_client(urls: list[str], connections: int) -> float:
    import aiohttp

    async def main() -> float:
        connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(url: str) -> None:
                async with session.get(url) as response:
                    await response.read()
                    response.raise_for_status()

            started = time.perf_counter()
            await asyncio.gather(*(one(url) for url in urls))
            return len(urls) / (time.perf_counter() - started)

    return asyncio.run(main())


# Tables every run inserts into and deletes from. Vacuumed before each product run: a
# PostgreSQL with autovacuum off (this kind of machine has it off) would otherwise carry
# the dead rows of every earlier round into the next one's indexes.
CHURNED_TABLES = (
    "conversions_deliveryclaim",
    "conversions_runitem",
    "conversions_deliveryattempt",
    "conversions_retriggerchunk",
    "conversions_retriggerrun",
)


def vacuum(db_url: str) -> None:
    if not db_url.startswith("postgres"):
        return
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"VACUUM (ANALYZE) {', '.join(CHURNED_TABLES)}")


def product(db_url: str, args: list[str], env: dict[str, str]) -> dict:
    vacuum(db_url)
    completed = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "product.py"), "retrigger_conversions", *args],
        cwd=ROOT,
        env={**os.environ, **env, "DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        raise RuntimeError(f"retrigger_conversions {' '.join(args)} failed")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# --- the sections -------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def section_throughput(opts, db_url: str, env: dict[str, str]) -> bool:
    print(
        f"\n== throughput: {opts.postbacks:,} postbacks, {opts.hosts} hosts, "
        f"{opts.latency * 1000:.0f} ms latency, cap {opts.cap} per host =="
    )
    affiliates = list(range(1, opts.hosts + 1))
    receivers = Receivers(opts.hosts, opts.latency)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            seed_reference(conn, THROUGHPUT_ACCOUNT, affiliates)
            seed_conversions(
                conn,
                account=THROUGHPUT_ACCOUNT,
                first_id=1,
                count=opts.postbacks,
                affiliates=affiliates,
                rebuild_indexes=False,
            )
            point_postbacks(conn, affiliates, receivers.ports)
            urls = throughput_urls(conn, receivers.ports, opts.postbacks)
        sequential = sequential_baseline(urls[: opts.seq_requests])
        aio_rates, aio_cpu, runs = [], [], []
        for _ in range(opts.rounds):
            cpu_started = _own_cpu()
            aio_rates.append(aiohttp_client(urls, opts.aiohttp_connections))
            aio_cpu.append((_own_cpu() - cpu_started) / len(urls))
            receivers.reset()
            cpu = receivers.cpu_seconds()
            result = product(
                db_url,
                [
                    "--account-id",
                    str(THROUGHPUT_ACCOUNT),
                    "--limit",
                    str(opts.postbacks),
                    "--force",
                ],
                env,
            )
            result["receiver_cpu"] = receivers.cpu_seconds() - cpu
            result["ports"] = receivers.stats()
            result["rate"] = opts.postbacks / result["seconds"]
            result["complete"] = (result["run"] or {}).get("delivered") == opts.postbacks
            runs.append(result)
    finally:
        receivers.close()

    # Only runs that delivered every postback count; anything else is shown, not ranked.
    best = max(runs, key=lambda r: (r["complete"], r["rate"]))
    aio = max(aio_rates)
    ports = best["ports"]
    peak_open = max(p["peak_open"] for p in ports.values())
    peak_flight = max(p["peak_in_flight"] for p in ports.values())
    delivered = (best["run"] or {}).get("delivered")
    print(
        table(
            ["client", "postbacks/s", "rounds (postbacks/s)"],
            [
                ["sequential requests.get", f"{sequential:,.0f}", f"{opts.seq_requests} requests"],
                [
                    f"aiohttp, {opts.aiohttp_connections} connections",
                    f"{aio:,.0f}",
                    ", ".join(f"{r:,.0f}" for r in aio_rates),
                ],
                [
                    "product (retrigger_conversions)",
                    f"{best['rate']:,.0f}",
                    ", ".join(_round_label(r) for r in runs),
                ],
            ],
        )
    )
    ratio_seq = best["rate"] / sequential
    ratio_aio = best["rate"] / aio
    statements = ", ".join(f"{k} {v}" for k, v in sorted(best["statements"].items()))
    print(
        table(
            ["figure", "value", "goal"],
            [
                ["product / sequential", f"{ratio_seq:.1f}x", ">= 50x"],
                ["product / aiohttp", f"{ratio_aio:.2f}x", ">= 0.6x"],
                [
                    "delivered",
                    f"{delivered:,}" if delivered is not None else "?",
                    f"{opts.postbacks:,}",
                ],
                ["peak connections open at one host", peak_open, f"<= {opts.cap}"],
                ["peak requests in flight at one host", peak_flight, f"<= {opts.cap}"],
                ["worker processes (sharing the cap)", (best["run"] or {}).get("workers"), ""],
                ["SQL statements (whole command)", best["queries"], "no query per conversion"],
                ["  by kind", statements, ""],
                ["peak RSS while the command ran", f"{best['peak_rss_mb']:.0f} MiB", ""],
                [
                    "CPU per postback: product / aiohttp",
                    f"{1e6 * best['cpu_seconds'] / opts.postbacks:,.0f} us / "
                    f"{1e6 * min(aio_cpu):,.0f} us",
                    "",
                ],
                ["receiver CPU during the product run", f"{best['receiver_cpu']:.2f} s", ""],
            ],
        )
    )
    return (
        best["complete"]
        and ratio_seq >= 50
        and ratio_aio >= 0.6
        and peak_open <= opts.cap
        and peak_flight <= opts.cap
        and delivered == opts.postbacks
    )


def _round_label(result: dict) -> str:
    if result["complete"]:
        return f"{result['rate']:,.0f}"
    run = result["run"] or {}
    return f"INCOMPLETE ({run.get('status')}, {run.get('delivered')} delivered)"


def section_scaling(opts, base: str, env: dict[str, str]) -> bool:
    sizes = [int(s) for s in opts.scale.split(",") if s]
    print(
        f"\n== selection scaling: dry run, --affiliate-id {NEEDLE_AFFILIATE} "
        f"({NEEDLE_ROWS} matches), PostgreSQL =="
    )
    bulk = list(range(201, 301))
    rows, times = [], []
    for size in sizes:
        # One database per size, seeded once and reused by later runs.
        url = ensure_database(base, f"{opts.db_prefix}_scale_{size}")
        with psycopg.connect(url, autocommit=True) as conn:
            seed_reference(conn, SCALE_ACCOUNT, [*bulk, NEEDLE_AFFILIATE])
            seed_conversions(
                conn,
                account=SCALE_ACCOUNT,
                first_id=1,
                count=size,
                affiliates=bulk,
                rebuild_indexes=size >= 100_000,
            )
            # 500 needles spread evenly over the id range, the same at every size.
            needles = conn.execute(
                "SELECT count(*) FROM conversions_conversion WHERE affiliate_id = %s",
                [NEEDLE_AFFILIATE],
            ).fetchone()[0]
            if needles != NEEDLE_ROWS:
                conn.execute(
                    "UPDATE conversions_conversion SET affiliate_id = %s "
                    "WHERE id %% %s = 0 AND id <= %s",
                    [NEEDLE_AFFILIATE, size // NEEDLE_ROWS, size],
                )
                conn.execute("ANALYZE conversions_conversion")
        samples = []
        for _ in range(opts.scale_repeats):
            result = product(
                url,
                ["--affiliate-id", str(NEEDLE_AFFILIATE), "--limit", "1000", "--dry-run", "--json"],
                env,
            )
            samples.append(result)
        best = min(samples, key=lambda r: r["seconds"])
        times.append(best["seconds"])
        rows.append(
            [
                f"{size:,}",
                f"{best['seconds'] * 1000:.0f} ms",
                f"{statistics.median(s['seconds'] for s in samples) * 1000:.0f} ms",
                best["queries"],
                _dry_run_summary(best["output"]),
            ]
        )
    print(table(["rows", "best", "median", "SQL", "summary"], rows))
    ratio = times[-1] / times[0]
    print(f"largest / smallest: {ratio:.2f}x (goal: about 2x at most)")
    return ratio <= 2.2


def _dry_run_summary(output: str) -> str:
    # `--json` because the plain-text summary of a command dry run is broken at the moment
    # (it takes the missing result list for a queued run).
    run = json.loads(output)["run"]
    return f"matched {run['matched']}, would fire {run['retriggered']}"


def section_memory(opts, db_url: str, env: dict[str, str]) -> bool:
    sizes = [int(s) for s in opts.memory.split(",") if s]
    print(
        f"\n== memory: real runs (delivery and DB writes), {opts.memory_latency * 1000:.0f} ms "
        "latency =="
    )
    affiliates = list(range(101, 101 + opts.hosts))
    receivers = Receivers(opts.hosts, opts.memory_latency)
    rows, peaks = [], []
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            seed_reference(conn, MEMORY_ACCOUNT, affiliates)
            seed_conversions(
                conn,
                account=MEMORY_ACCOUNT,
                first_id=MEMORY_FIRST_ID,
                count=max(sizes),
                affiliates=affiliates,
                rebuild_indexes=max(sizes) >= 100_000,
            )
            point_postbacks(conn, affiliates, receivers.ports)
        for size in sizes:
            result = product(
                db_url,
                ["--account-id", str(MEMORY_ACCOUNT), "--limit", str(size), "--force"],
                {**env, "RETRIGGER_MAX_LIMIT": str(max(sizes))},
            )
            peaks.append(result["peak_rss_mb"])
            run = result["run"] or {}
            rows.append(
                [
                    f"{size:,}",
                    f"{result['peak_rss_mb']:.0f} MiB",
                    f"{result['peak_rss_mb'] - result['rss_before_mb']:+.0f} MiB",
                    f"{result['seconds']:.1f} s",
                    f"{size / result['seconds']:,.0f}",
                    result["queries"],
                    f"{1000 * result['queries'] / size:.1f}",
                    run.get("delivered"),
                ]
            )
    finally:
        receivers.close()
    print(
        table(
            [
                "conversions",
                "peak RSS",
                "over start",
                "time",
                "per s",
                "SQL",
                "SQL/1000",
                "delivered",
            ],
            rows,
        )
    )
    ratio = peaks[-1] / peaks[0]
    print(f"largest / smallest peak RSS: {ratio:.2f}x (goal: about 1.5x at most)")
    return ratio <= 1.5


def refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section_isolation(opts, db_url: str, env: dict[str, str]) -> bool:
    count = opts.isolation_postbacks
    print(
        f"\n== isolation: {count:,} postbacks, {opts.hosts} hosts, "
        f"{opts.latency * 1000:.0f} ms latency, cap {opts.cap} per host; one host slow "
        f"({opts.slow_latency:g} s an answer) or dead (connection refused) =="
    )
    affiliates = list(range(ISOLATION_FIRST_AFFILIATE, ISOLATION_FIRST_AFFILIATE + opts.hosts))
    victim = affiliates[-1]  # the host that turns slow or dead; the others stay healthy
    # One port more than hosts: the extra one is the slow host, pointed at when needed.
    receivers = Receivers(opts.hosts + 1, opts.latency, slow=1, slow_latency=opts.slow_latency)
    healthy_ports, slow_port = receivers.ports[:-1], receivers.ports[-1]
    scenarios = [
        ("all healthy", healthy_ports[-1]),
        (f"one host slow ({opts.slow_latency:g} s)", slow_port),
        ("one host dead (refused)", refused_port()),
    ]
    rows, rates, complete = [], [], []
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:
            seed_reference(conn, ISOLATION_ACCOUNT, affiliates)
            seed_conversions(
                conn,
                account=ISOLATION_ACCOUNT,
                first_id=ISOLATION_FIRST_ID,
                count=count,
                affiliates=affiliates,
                rebuild_indexes=False,
            )
            expected = conn.execute(
                "SELECT count(*) FROM conversions_conversion "
                "WHERE account_id = %s AND affiliate_id <> %s",
                [ISOLATION_ACCOUNT, victim],
            ).fetchone()[0]
        for label, victim_port in scenarios:
            with psycopg.connect(db_url, autocommit=True) as conn:
                point_postbacks(conn, affiliates, [*healthy_ports[:-1], victim_port])
            result = product(
                db_url,
                ["--account-id", str(ISOLATION_ACCOUNT), "--limit", str(count), "--force"],
                env,
            )
            with psycopg.connect(db_url, autocommit=True) as conn:
                healthy = healthy_figures(conn, result["run"]["id"], victim)
                outcome = victim_outcome(conn, result["run"]["id"], victim)
            rates.append(healthy["rate"])
            baseline = max(rates[0], 1e-9)
            complete.append(healthy["delivered"] == expected)
            rows.append(
                [
                    label,
                    f"{healthy['rate']:,.0f}",
                    f"{healthy['rate'] / baseline:.2f}",
                    f"{healthy['delivered']:,}/{expected:,}",
                    f"{healthy['seconds']:.1f} s",
                    outcome,
                    f"{result['seconds']:.1f} s",
                ]
            )
    finally:
        receivers.close()
    print(
        table(
            [
                "scenario",
                "healthy-host postbacks/s",
                "ratio to all-healthy",
                "healthy delivered",
                "healthy done after",
                "slow/dead host (attempts)",
                "whole command",
            ],
            rows,
        )
    )
    worst = min(rate / max(rates[0], 1e-9) for rate in rates[1:])
    print(
        f"healthy hosts with one slow or dead host: {worst:.2f}x the all-healthy rate at "
        "worst (goal: >= 0.8x, a slow or dead host does not slow delivery to the others)"
    )
    return worst >= 0.8 and all(complete)


def healthy_figures(conn: psycopg.Connection, run_id: int, victim: int) -> dict:
    """Healthy hosts' delivered pairs and the time from the run's first attempt start to
    their last answer (an attempt's `created_at` is when it started)."""
    first, last, delivered = conn.execute(
        "SELECT min(created_at), "
        "max(created_at + duration_ms * interval '1 millisecond') "
        "FILTER (WHERE affiliate_id <> %(victim)s), "
        "count(*) FILTER (WHERE affiliate_id <> %(victim)s AND delivered) "
        "FROM conversions_deliveryattempt WHERE run_id = %(run)s",
        {"run": run_id, "victim": victim},
    ).fetchone()
    seconds = (last - first).total_seconds() if first and last else 0.0
    return {"delivered": delivered, "seconds": seconds, "rate": delivered / max(seconds, 1e-6)}


def victim_outcome(conn: psycopg.Connection, run_id: int, victim: int) -> str:
    """Pairs delivered, then attempts by outcome with their median duration."""
    pairs, delivered = conn.execute(
        "SELECT count(*) FILTER (WHERE final), count(*) FILTER (WHERE final AND delivered) "
        "FROM conversions_deliveryattempt WHERE run_id = %s AND affiliate_id = %s",
        [run_id, victim],
    ).fetchone()
    kinds = conn.execute(
        "SELECT CASE WHEN delivered THEN 'ok' ELSE error END, count(*), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) "
        "FROM conversions_deliveryattempt WHERE run_id = %s AND affiliate_id = %s "
        "GROUP BY 1 ORDER BY 2 DESC",
        [run_id, victim],
    ).fetchall()
    attempts = ", ".join(f"{n:,} {kind} (median {ms:,.0f} ms)" for kind, n, ms in kinds)
    return f"{delivered:,}/{pairs:,} delivered; {attempts}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postbacks", type=int, default=4000)
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--cap", type=int, default=8, help="POSTBACK_HOST_CONCURRENCY")
    parser.add_argument("--workers", type=int, help="POSTBACK_MAX_WORKERS (default: setting)")
    parser.add_argument("--seq-requests", type=int, default=200)
    parser.add_argument("--aiohttp-connections", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scale", default="10000,100000,1000000")
    parser.add_argument("--scale-repeats", type=int, default=3)
    parser.add_argument("--memory", default="20000,200000")
    parser.add_argument("--memory-latency", type=float, default=0.0)
    parser.add_argument("--isolation-postbacks", type=int, default=4000)
    parser.add_argument(
        "--slow-latency", type=float, default=1.0, help="isolation: the slow host's answer, s"
    )
    parser.add_argument("--db-prefix", default="bench")
    parser.add_argument(
        "--only",
        choices=["throughput", "scaling", "memory", "isolation"],
        action="append",
        help="run only these sections (repeatable)",
    )
    opts = parser.parse_args(argv)

    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        parser.error("DATABASE_URL must name a PostgreSQL server (any database on it)")
    env = {
        "POSTBACK_ALLOWED_NETWORKS": "127.0.0.1/32",
        "POSTBACK_HOST_CONCURRENCY": str(opts.cap),
        "LOG_LEVEL": "ERROR",
    }
    if opts.workers:
        env["POSTBACK_MAX_WORKERS"] = str(opts.workers)
    sections = opts.only or ["throughput", "scaling", "memory", "isolation"]

    print(
        f"machine: {platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("product settings: " + ", ".join(f"{k}={v}" for k, v in sorted(env.items())))
    db_url = ensure_database(base, opts.db_prefix)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE conversions_deliveryattempt, conversions_runitem, conversions_deliveryclaim,"
            " conversions_retriggerchunk, conversions_retriggerrun_accounts,"
            " conversions_retriggerrun CASCADE"
        )
    verdicts = {}
    if "throughput" in sections:
        verdicts["throughput"] = section_throughput(opts, db_url, env)
    if "scaling" in sections:
        verdicts["scaling"] = section_scaling(opts, base, env)
    if "memory" in sections:
        verdicts["memory"] = section_memory(opts, db_url, env)
    if "isolation" in sections:
        verdicts["isolation"] = section_isolation(opts, db_url, env)
    print("\n" + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in verdicts.items()))
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
