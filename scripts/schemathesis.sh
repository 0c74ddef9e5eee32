#!/usr/bin/env bash
# Schema-driven fuzzing of the live API: no 5xx, no answer that contradicts the schema.
#
#   ./scripts/schemathesis.sh [--max-examples N] [--max-time SECONDS] [--seed N]
#
# Starts the app the way scripts/demo.sh does, but on a throwaway SQLite file: migrate,
# a local postback sink (scripts/receiver.py, the only address the guard opens), the demo
# data (`manage.py seed_demo`, every postback pointed at the sink), a superuser token,
# `manage.py runserver` on a free 127.0.0.1 port. Then runs schemathesis against
# /api/schema/ with that token and every check, bounded in examples and time. Fails on
# any 5xx, any answer outside the schema, and any 500 line in the server log.
#
# Environment: FUZZ_PYTHON (an interpreter with the requirements and schemathesis
# installed; default: .venv after scripts/bootstrap.sh), FUZZ_KEEP=1 keeps the work
# directory (database, logs) for a look after a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MAX_EXAMPLES=60
MAX_TIME=120
SEED=20260101
while [[ $# -gt 0 ]]; do
    case "$1" in
        --max-examples) MAX_EXAMPLES="${2:?--max-examples needs a number}"; shift ;;
        --max-time) MAX_TIME="${2:?--max-time needs seconds}"; shift ;;
        --seed) SEED="${2:?--seed needs a number}"; shift ;;
        -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fuzz: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ -n "${FUZZ_PYTHON:-}" ]]; then
    PY="$FUZZ_PYTHON"
else
    "$ROOT/scripts/bootstrap.sh"
    PY="$ROOT/.venv/bin/python"
fi
ST="$(dirname "$PY")/schemathesis"
[[ -x "$ST" ]] || { echo "fuzz: schemathesis is not installed next to $PY" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/retrigger-fuzz.XXXXXX")"
PIDS=()
# shellcheck disable=SC2317  # reached through the trap
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ ${#PIDS[@]} -gt 0 ]]; then
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -f "$WORK/server.log" ]]; then
        echo "fuzz: last lines of the server log:" >&2
        tail -n 40 "$WORK/server.log" >&2 || true
    fi
    if [[ "${FUZZ_KEEP:-0}" == 1 ]]; then
        echo "fuzz: kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The app under test. Only the sink on 127.0.0.1 is opened in the address guard. The
# throttle is raised so the generated requests reach the validation behind it (the 429
# itself is covered by tests/test_hostile.py); no worker runs, so queued runs stay queued.
export DATABASE_URL="sqlite:///$WORK/fuzz.sqlite3"
export POSTBACK_ALLOWED_NETWORKS=127.0.0.1/32
export DJANGO_ALLOWED_HOSTS=127.0.0.1
export DJANGO_DEBUG=false
export RETRIGGER_THROTTLE_RATE=100000/min
export POSTBACK_MAX_ATTEMPTS=1
export POSTBACK_CONNECT_TIMEOUT=1
export POSTBACK_READ_TIMEOUT=2
export PYTHONUNBUFFERED=1
unset TASKS_BACKEND REDIS_URL CACHE_URL

echo "fuzz: migrating $WORK/fuzz.sqlite3"
"$PY" manage.py migrate --noinput -v 0

"$PY" scripts/receiver.py serve --ports-file "$WORK/receivers.json" --slow-delay 0 \
    >"$WORK/receiver.log" 2>&1 &
PIDS+=($!)
wait_for 15 "the postback sink" test -s "$WORK/receivers.json"
SINK="$(json_get "$WORK/receivers.json" healthy)"

DEMO_ADMIN_PASSWORD="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(12))')"
export DEMO_ADMIN_PASSWORD
"$PY" manage.py seed_demo --conversions 300 --superuser fuzz-admin \
    --healthy-url "$SINK" --failing-url "$SINK" --slow-url "$SINK" >"$WORK/seed.log"
TOKEN="$("$PY" manage.py drf_create_token fuzz-admin | awk '{print $3}')"
[[ -n "$TOKEN" ]] || { echo "fuzz: could not create an API token" >&2; exit 1; }

PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
"$PY" manage.py runserver "127.0.0.1:$PORT" --noreload >"$WORK/server.log" 2>&1 &
PIDS+=($!)
wait_for 60 "the server" "$PY" -c \
    'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$BASE/api/schema/"
echo "fuzz: server at $BASE, sink at $SINK"

# A reused Idempotency-Key with another body is a documented 422 and a key still in use a
# 409: both are right answers to schema-valid requests, so the positive-data check expects
# them besides the usual statuses.
cat >"$WORK/schemathesis.toml" <<'TOML'
[[operations]]
include-operation-id = "conversions_retrigger"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "409", "422", "429"]
TOML

# Rules across keys that OpenAPI 3.0 cannot state (fromDate after toDate, a repeated sort
# column, more list items in all than criteria.MAX_TOTAL_LIST_ITEMS) make a 400 from a
# body the schema calls valid; such bodies are not generated. tests/test_hostile.py sends
# them instead.
cat >"$WORK/fuzz_hooks.py" <<'PY'
from datetime import UTC, datetime, time

import schemathesis


def _moment(text, *, end_of_day):
    try:
        if len(text) == 10:
            return datetime.combine(
                datetime.fromisoformat(text).date(), time.max if end_of_day else time.min, UTC
            )
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@schemathesis.hook
def filter_body(context, body):
    if not isinstance(body, dict):
        return True
    start = _moment(body.get("fromDate"), end_of_day=False)
    end = _moment(body.get("toDate"), end_of_day=True)
    if start is not None and end is not None and start > end:
        return False
    sort = body.get("sort")
    if isinstance(sort, str) and sort.strip():
        names = [key.strip().lstrip("-").lower() for key in sort.split(",")]
        if len(names) != len(set(names)):
            return False
    lists = [v for v in body.values() if isinstance(v, list)]
    return sum(len(v) for v in lists) <= 20_000
PY
export SCHEMATHESIS_HOOKS=fuzz_hooks
export PYTHONPATH="$WORK${PYTHONPATH:+:$PYTHONPATH}"

# Every check; the token is sent on every request (schemathesis also tries without it
# for `ignored_auth`). Bounded by examples per operation and by wall time.
# Run from the work directory: schemathesis keeps a cache (.schemathesis/) in its cwd.
status=0
(cd "$WORK" && "$ST" --config-file "$WORK/schemathesis.toml" run "$BASE/api/schema/" \
    --header "Authorization: Token $TOKEN" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --max-time "$MAX_TIME" \
    --seed "$SEED" \
    --request-timeout 30 \
    --workers 1 \
    --no-color \
    --generation-database none \
    --output-sanitize true \
    --report junit --report-dir "$WORK/report") || status=$?

# runserver logs every request with its status; a 5xx here fails the run even when the
# answer happened to fit the schema.
if grep -E '" 5[0-9][0-9] ' "$WORK/server.log" >&2; then
    echo "fuzz: the server answered 5xx (above)" >&2
    status=1
fi
if grep -q 'Traceback' "$WORK/server.log"; then
    echo "fuzz: a traceback in the server log" >&2
    status=1
fi
echo "fuzz: $(grep -cE '"(GET|POST|PUT|PATCH|DELETE|OPTIONS|HEAD|TRACE) ' "$WORK/server.log" || true) requests served"
exit "$status"
