#!/usr/bin/env bash
# Create or update the project's virtual environment in `.venv` and print nothing
# unless something had to be done.
#
#   ./scripts/bootstrap.sh            # find Python >= 3.12, create .venv, install
#   PYTHON=/path/to/python3.13 ./scripts/bootstrap.sh   # choose the interpreter
#
# Reruns are fast: the install is skipped while requirements*.txt and the interpreter
# are unchanged (a hash is kept in .venv/.requirements.sha256). Other scripts run this
# first and then use .venv/bin/python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
MIN_MAJOR=3
MIN_MINOR=12

log() { printf 'bootstrap: %s\n' "$*" >&2; }

# True when "$1" runs and is at least Python 3.12 with the venv module.
python_ok() {
    "$1" - "$MIN_MAJOR" "$MIN_MINOR" >/dev/null 2>&1 <<'PY'
import sys
import venv  # noqa: F401  (Debian splits it out: without it we cannot build .venv)
need = (int(sys.argv[1]), int(sys.argv[2]))
sys.exit(0 if sys.version_info[:2] >= need else 1)
PY
}

# Candidates in order of preference. `python3` comes first when it is new enough; the
# version-named commands and version managers cover machines whose `python3` is older.
# Candidates below 3.12 are listed too and then rejected by python_ok.
python_candidates() {
    [[ -n "${PYTHON:-}" ]] && echo "$PYTHON"
    local name
    for name in python3 python python3.12 python3.13 python3.14; do
        command -v "$name" 2>/dev/null || true
    done
    # pyenv shims for versions that are installed but not selected fail, so look at
    # the installed versions themselves. The oldest suitable one wins, as with the
    # named commands above: 3.12 is what the project targets (pyproject.toml).
    if command -v pyenv >/dev/null 2>&1; then
        local root
        root="$(pyenv root 2>/dev/null || true)"
        if [[ -n "$root" && -d "$root/versions" ]]; then
            find "$root/versions" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null \
                | grep -E '^3\.[0-9]+\.[0-9]+$' | sort -t. -k1,1n -k2,2n -k3,3nr \
                | while read -r version; do
                    echo "$root/versions/$version/bin/python3"
                done
        fi
    fi
    if command -v uv >/dev/null 2>&1; then
        uv python find ">=$MIN_MAJOR.$MIN_MINOR" 2>/dev/null || true
    fi
    # Other common version managers keep interpreters under the home directory.
    local dir
    for dir in "$HOME/.local/share/mise/installs/python" "$HOME/.asdf/installs/python"; do
        [[ -d "$dir" ]] || continue
        find "$dir" -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -rV \
            | while read -r version; do echo "$dir/$version/bin/python3"; done
    done
}

find_python() {
    local candidate
    while read -r candidate; do
        [[ -n "$candidate" ]] || continue
        if python_ok "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done < <(python_candidates)
    return 1
}

requirements_hash() {
    # The interpreter's version is part of the hash: a new Python needs a new install.
    {
        cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt"
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

if [[ -x "$VENV/bin/python" ]] && python_ok "$VENV/bin/python"; then
    :
else
    if [[ -e "$VENV" ]]; then
        log "existing .venv is unusable (missing or older than $MIN_MAJOR.$MIN_MINOR); recreating it"
        rm -rf "$VENV"
    fi
    if ! PY="$(find_python)"; then
        log "no Python >= $MIN_MAJOR.$MIN_MINOR found (looked at PYTHON, python3, python3.1x,"
        log "pyenv, uv, mise and asdf). Install one, or set PYTHON=/path/to/python3.12."
        exit 1
    fi
    log "creating .venv with $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
    "$PY" -m venv "$VENV"
fi

wanted="$(requirements_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]]; then
    exit 0
fi

# -qq: errors only; a mirror or find-links setup of the machine can be chatty.
log "installing requirements-dev.txt into .venv (quiet; takes a minute the first time)"
started=$SECONDS
if ! "$VENV/bin/python" -m pip install -qq --disable-pip-version-check \
    -r "$ROOT/requirements-dev.txt"; then
    log "pip install failed"
    exit 1
fi
echo "$wanted" >"$STAMP"
log "installed in $((SECONDS - started)) s"
