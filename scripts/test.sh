#!/usr/bin/env bash
# The test suite: ./scripts/test.sh [pytest arguments]
#
# Creates/updates .venv (scripts/bootstrap.sh) and runs pytest on the database that
# DATABASE_URL names (unset: SQLite; pytest-django makes and drops its own test
# database either way). `.ci/run` calls this same command.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
