#!/usr/bin/env bash
# Set up the environment (once; reused afterwards) and run a job.
#   ./run.sh demo            the offline demo: every method on the synthetic world, one table
#   ./run.sh test [ARGS]     the test suite (ARGS go to pytest)
#   ./run.sh python ARGS     any command inside the environment, e.g. ./run.sh python train.py -c ...
#   ./run.sh clipdistill ARGS  the clipdistill tool inside the environment
set -euo pipefail
cd "$(dirname "$0")"
VENV="${CLIPDISTILL_VENV:-.venv}"
STAMP="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"

ensure_env() {
  # Found, not imported: importing Lightning alone takes seconds, on every ./run.sh command.
  if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ('clipcore', 'open_clip', 'lightning')))" 2>/dev/null; then
    return
  fi
  echo "setting up $VENV (first run only; torch is a large download)..." >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
}

cmd="${1:-demo}"
shift || true
ensure_env
case "$cmd" in
  demo) exec "$VENV/bin/python" demo.py "$@" ;;
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  python) exec "$VENV/bin/python" "$@" ;;
  clipdistill) exec "$VENV/bin/clipdistill" "$@" ;;
  *) echo "usage: ./run.sh demo | test [pytest args] | python ARGS | clipdistill ARGS" >&2; exit 2 ;;
esac
