"""A large background run started from the API, worked by real `db_worker` processes.

    createdb -h 127.0.0.1 -U postgres bench_background
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_background \\
        .venv/bin/python bench/background_run.py --conversions 100000 --workers 2

Migrates the database it is given, seeds `--conversions` conversions (one postback each,
spread over `--ports` receiver ports on 127.0.0.1, i.e. that many destination hosts),
starts `bench/receiver.py` and `--workers` `manage.py db_worker` processes, POSTs the
run to the API (it answers 202), then reads the run at its `Location` every second until
it is final. Prints the progress samples, the wall time from the POST to `completed`,
the throughput, and checks the counts and the receiver's request total. Use a database
of its own: the rows it seeds stay there (drop the database afterwards).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversions", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, help="db_worker processes")
    parser.add_argument("--ports", type=int, default=16, help="receiver ports (hosts)")
    parser.add_argument("--latency", type=float, default=0.0, help="receiver answer delay, s")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    os.environ["POSTBACK_ALLOWED_NETWORKS"] = "127.0.0.1/32"
    os.environ["RETRIGGER_MAX_LIMIT"] = str(max(args.conversions, 100_000))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from tests import factories as f

    call_command("migrate", verbosity=0)
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")

    children: list[subprocess.Popen] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-background-"))
    try:
        ports_file = workdir / "ports.json"
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "bench" / "receiver.py"),
                    "--ports",
                    str(args.ports),
                    "--latency",
                    str(args.latency),
                    "--ports-file",
                    str(ports_file),
                ],
            )
        )
        while not ports_file.exists():
            time.sleep(0.05)
        ports = json.loads(ports_file.read_text())

        account = seed(f, args.conversions, ports)
        admin = f.make_user(superuser=True)
        client = Client(HTTP_AUTHORIZATION=f"Token {f.token_for(admin)}")

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        for n in range(args.workers):
            log = (workdir / f"worker-{n}.log").open("wb")
            children.append(
                subprocess.Popen(
                    [sys.executable, "manage.py", "db_worker", "--interval", "0.2"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

        started = time.monotonic()
        response = client.post(
            "/api/conversions/retrigger",
            {"accountId": [account.pk], "limit": args.conversions},
            content_type="application/json",
        )
        accepted = time.monotonic() - started
        assert response.status_code == 202, response.content
        location = response["Location"]
        print(f"POST answered {response.status_code} in {accepted:.2f} s, Location {location}")

        samples = []
        run = {}
        while time.monotonic() - started < args.timeout:
            run = client.get(location).json()["run"]
            elapsed = time.monotonic() - started
            samples.append((elapsed, run["status"], run["processed"]))
            print(f"  {elapsed:7.1f} s  {run['status']:9}  processed {run['processed']:>7}")
            if run["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(1)
        wall = time.monotonic() - started

        stats = json.loads(
            urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/__stats", timeout=10).read()
        )
        received = sum(port["requests"] for port in stats.values())
        peak = max(port["peak_in_flight"] for port in stats.values())
        partial = [s for s in samples if s[1] == "running" and 0 < s[2] < args.conversions]
        print(
            json.dumps(
                {
                    "conversions": args.conversions,
                    "workers": args.workers,
                    "hosts": args.ports,
                    "receiver_latency_s": args.latency,
                    "status": run.get("status"),
                    "processed": run.get("processed"),
                    "delivered": run.get("delivered"),
                    "failed": run.get("failed"),
                    "skipped": run.get("skipped"),
                    "receiver_requests": received,
                    "peak_in_flight_per_host": peak,
                    "post_202_seconds": round(accepted, 2),
                    "wall_seconds": round(wall, 1),
                    "throughput_per_s": round(args.conversions / wall, 1),
                    "progress_samples_while_running": len(partial),
                },
                indent=2,
            )
        )
        ok = (
            run.get("status") == "completed"
            and run.get("processed") == run.get("delivered") == args.conversions
            and received == args.conversions
            and partial
        )
        return 0 if ok else 1
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


def seed(f, count: int, ports: list[int]):
    """One account, one affiliate and postback per receiver port, `count` conversions."""
    from conversions.models import Conversion

    account = f.make_account()
    kind = f.make_conversion_type()
    affiliates = []
    for port in ports:
        affiliate = f.make_affiliate(account)
        f.make_postback(affiliate, f"http://127.0.0.1:{port}/pb?e={{event_id}}&c={{click_id}}")
        affiliates.append(affiliate)
    first = Conversion.objects.order_by("-id").values_list("id", flat=True).first() or 0
    batch = []
    for n in range(count):
        batch.append(
            Conversion(
                id=first + 1 + n,
                account=account,
                affiliate=affiliates[n % len(affiliates)],
                conversion_type=kind,
                click_id=f"00000000-0000-4000-8000-{n:012d}",
                transaction_id=f"bench-{n}",
                payout="1.00",
                revenue="2.00",
                converted_at="2026-01-15T12:00:00Z",
            )
        )
        if len(batch) == 5000:
            Conversion.objects.bulk_create(batch)
            batch = []
    Conversion.objects.bulk_create(batch)
    return account


if __name__ == "__main__":
    sys.exit(main())
