# shellcheck shell=bash
# Shell helpers shared by scripts/demo.sh and scripts/schemathesis.sh (sourced, not run).
# Callers set PY (the virtualenv's python) and WAIT_HINT (what to say on a time-out).

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "$what did not come up within ${seconds} s${WAIT_HINT:+; $WAIT_HINT}" >&2
            return 1
        fi
        sleep 0.2
    done
}

json_get() {  # json_get FILE KEY
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}
