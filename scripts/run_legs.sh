#!/usr/bin/env bash
# Run every leg of the version matrix (noxfile.py), JOBS at a time (default 2: the machine
# has 2 cores and the legs wait on PostgreSQL and uWSGI half the time). Each leg's output
# goes to .matrix/LEG.log; a failed leg's last lines are printed. Exit 1 if any leg failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
JOBS="${JOBS:-2}"
mkdir -p .matrix
sessions=$(.venv/bin/nox -l --json | .venv/bin/python -c \
    'import json, sys; print("\n".join(s["session"] for s in json.load(sys.stdin) if s["session"] not in ("report", "lint", "fast", "random", "mutation")))')
run_leg() {
    local leg=$1 log t0=$SECONDS
    log=".matrix/$(echo "$leg" | tr -c 'A-Za-z0-9.\n-' '_').log"
    .venv/bin/nox -s "$leg" >"$log" 2>&1
    local rc=$?
    # One line per leg, read by scripts/matrix_report.py: a leg fails on its exit status
    # (pytest also fails on warnings raised after the last test, which JUnit never shows).
    printf '%s\t%s\t%s\n' "$leg" "$rc" "$((SECONDS - t0))" >>.matrix/sessions.tsv
    if [ "$rc" -eq 0 ]; then
        echo "leg $leg: ok ($((SECONDS - t0)) s)"
    else
        echo "leg $leg: FAILED ($((SECONDS - t0)) s), last lines of $log:"
        tail -n 40 "$log" | sed 's/^/    /'
        return 1
    fi
}
export -f run_leg
echo "$sessions" | xargs -P "$JOBS" -I{} bash -c 'run_leg "$1"' _ {}
