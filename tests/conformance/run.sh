#!/usr/bin/env bash
# Run the conformance suite: build or reuse the venv, then pytest with the venv's Python.
# Configuration is the CONFORMANCE_* environment (README.md); extra arguments go to pytest.
# pytest's exit code 5 (no tests collected) is a failure here, never a pass.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
"$root/scripts/conformance-venv.sh"
export PYTHONDONTWRITEBYTECODE=1
rc=0
"$root/tests/conformance/.venv/bin/python" -m pytest -q "$root/tests/conformance" "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "conformance: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
