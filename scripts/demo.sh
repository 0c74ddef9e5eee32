#!/usr/bin/env bash
# The main job, end to end, on a fresh clone:
#
#   ./scripts/demo.sh                       # ... then serves the admin until Ctrl-C
#   ./scripts/demo.sh --exit-after-summary  # stop after the summary (CI)
#
# Options: --force (re-fire already delivered pairs), --conversions N (demo data size,
# default 5000), --limit N (size of the background run, default 1000), --port P (the
# server's port; default 8000, or a free one when 8000 is taken).
#
# It creates .venv (scripts/bootstrap.sh), migrates the database (DATABASE_URL, unset =
# db.sqlite3 in the checkout), starts the local postback receivers (healthy, failing,
# slow), loads the demo data pointing at them, starts `manage.py runserver` and
# `manage.py db_worker`, makes an admin user with a random password and a DRF token,
# re-triggers through the real HTTP API and prints a summary. Logs go to .demo/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

EXIT_AFTER_SUMMARY=0
FORCE=()
CONVERSIONS=5000
LIMIT=1000
PORT="${DEMO_PORT:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --exit-after-summary) EXIT_AFTER_SUMMARY=1 ;;
        --force) FORCE=(--force) ;;
        --conversions) CONVERSIONS="${2:?--conversions needs a number}"; shift ;;
        --limit) LIMIT="${2:?--limit needs a number}"; shift ;;
        --port) PORT="${2:?--port needs a number}"; shift ;;
        -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
[[ -t 1 ]] || say() { printf '\n%s\n' "$*"; }

# --- 1. Python environment -------------------------------------------------------------
say "1/6  Python environment (.venv)"
"$ROOT/scripts/bootstrap.sh"
PY="$ROOT/.venv/bin/python"
echo "     $("$PY" --version)"

# The demo's own settings; each can be overridden from the environment.
# Loopback is blocked by the address guard unless opened: the receivers live there.
export POSTBACK_ALLOWED_NETWORKS="${POSTBACK_ALLOWED_NETWORKS:-127.0.0.1/32}"
export DJANGO_ALLOWED_HOSTS="${DJANGO_ALLOWED_HOSTS:-127.0.0.1,localhost}"
export PYTHONUNBUFFERED=1

STATE="$ROOT/.demo"
mkdir -p "$STATE"
rm -f "$STATE/receivers.json"

PIDS=()
# shellcheck disable=SC2317  # reached through the trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ ${#PIDS[@]} -gt 0 ]]; then
        echo
        echo "demo: stopping server, worker and receivers"
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        # Give them a moment to finish cleanly, then make sure.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            local alive=0 pid
            for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [[ $alive -eq 0 ]] && break
            sleep 0.3
        done
        kill -KILL "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_taken() {
    "$PY" -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"
}
WAIT_HINT="see the logs in .demo/"
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# --- 2. Database -----------------------------------------------------------------------
say "2/6  Database migrations (${DATABASE_URL:+DATABASE_URL}${DATABASE_URL:-db.sqlite3})"
"$PY" manage.py migrate --noinput -v 0
echo "     schema ready"

# --- 3. Receivers and demo data -----------------------------------------------------------
say "3/6  Local postback receivers and demo data"
# A fresh Standard Webhooks secret per run for the signed POST postback; the receiver
# checks the signatures with it.
SECRET="whsec_$("$PY" -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(24)).decode())')"
"$PY" scripts/receiver.py serve --ports-file "$STATE/receivers.json" \
    --slow-delay "${DEMO_SLOW_DELAY:-2}" --secret "$SECRET" >"$STATE/receiver.log" 2>&1 &
PIDS+=($!)
wait_for 15 "the receiver" test -s "$STATE/receivers.json"
HEALTHY="$(json_get "$STATE/receivers.json" healthy)"
FAILING="$(json_get "$STATE/receivers.json" failing)"
SLOW="$(json_get "$STATE/receivers.json" slow)"
STATS="$(json_get "$STATE/receivers.json" stats)"
echo "     healthy $HEALTHY · failing (500) $FAILING · slow (${DEMO_SLOW_DELAY:-2} s) $SLOW"

ADMIN_USER="${DEMO_ADMIN_USER:-admin}"
DEMO_ADMIN_PASSWORD="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(12))')"
export DEMO_ADMIN_PASSWORD
started=$SECONDS
"$PY" manage.py seed_demo --conversions "$CONVERSIONS" --superuser "$ADMIN_USER" \
    --healthy-url "$HEALTHY" --failing-url "$FAILING" --slow-url "$SLOW" --secret "$SECRET" | sed 's/^/     /'
echo "     loaded in $((SECONDS - started)) s"
# `drf_create_token` prints "Generated token KEY for user NAME" (the existing key if any).
TOKEN="$("$PY" manage.py drf_create_token "$ADMIN_USER" | awk '{print $3}')"
[[ -n "$TOKEN" ]] || { echo "demo: could not create an API token" >&2; exit 1; }

# --- 4. Server and worker ----------------------------------------------------------------
if [[ -z "$PORT" ]]; then
    PORT=8000
    if port_taken "$PORT"; then PORT="$(free_port)"; fi
fi
BASE="http://127.0.0.1:$PORT"
say "4/6  Server $BASE and background worker"
# --insecure serves the admin's static files with DEBUG off; this is a local demo server.
"$PY" manage.py runserver "127.0.0.1:$PORT" --noreload --insecure >"$STATE/server.log" 2>&1 &
PIDS+=($!)
"$PY" manage.py db_worker >"$STATE/worker.log" 2>&1 &
PIDS+=($!)
wait_for 60 "the server" "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$BASE/admin/login/"
echo "     up (logs: .demo/server.log, .demo/worker.log, .demo/receiver.log)"

# --- 5. Re-trigger through the API ---------------------------------------------------------
say "5/6  Re-triggering postbacks through the HTTP API"
status=0
"$PY" scripts/demo_client.py --base-url "$BASE" --token "$TOKEN" --receiver-stats "$STATS" \
    --limit "$LIMIT" "${FORCE[@]}" || status=$?

# --- 6. Admin --------------------------------------------------------------------------
say "6/6  Admin"
cat <<EOF
     admin:     $BASE/admin/   user: $ADMIN_USER   password: $DEMO_ADMIN_PASSWORD
                (also northwind-admin, an admin of account 1 only, and globex-member,
                 a member of account 2 who may not re-trigger; same password)
     runs:      $BASE/admin/conversions/retriggerrun/
     API:       curl -X POST -H 'Authorization: Token $TOKEN' -H 'Content-Type: application/json' \\
                  -d '{"affiliateId": [1001], "limit": 10}' '$BASE/api/conversions/retrigger?dryRun=true'
     API docs:  $BASE/api/docs/
EOF

# A worker that logged a traceback is a failure even when every API answer looked right
# (for example a broken stale-run sweeper would only show there).
if grep -q "Traceback" "$STATE/worker.log" "$STATE/server.log" 2>/dev/null; then
    echo
    echo "demo: a traceback was logged by the server or the worker:" >&2
    grep -h -A 12 "Traceback" "$STATE/worker.log" "$STATE/server.log" | head -n 40 >&2 || true
    [[ $status -ne 0 ]] || status=1
fi
if [[ $status -ne 0 ]]; then
    echo
    echo "demo: the API check failed (exit $status); last lines of the logs:" >&2
    tail -n 20 "$STATE/server.log" "$STATE/worker.log" >&2 || true
fi
if [[ $EXIT_AFTER_SUMMARY -eq 1 ]]; then
    exit "$status"
fi

echo
echo "Serving until Ctrl-C ..."
# Returns when the server dies (or on Ctrl-C through the trap).
wait "${PIDS[1]}" || true
echo "demo: the server stopped; see .demo/server.log" >&2
exit 1
