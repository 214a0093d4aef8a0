#!/usr/bin/env bash
# Create <dir>/.venv with Python 3.12 and the exact pins of <dir>/requirements.txt, where
# <dir> is the first argument (default tests/conformance; tests/api-fuzz holds schemathesis,
# tests/s3 the S3-compatible server of the audit export tests).
# Idempotent: a no-op when the venv was built from the
# current requirements (their SHA-256 is stored inside the venv); rebuilt from scratch when
# they change. Python 3.12 comes from $CONFORMANCE_PYTHON, pyenv (3.12.x) or python3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-tests/conformance}
venv=$dir/.venv
req=$dir/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)

is_312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }

if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && is_312 "$venv/bin/python"; then
  echo "conformance-venv: $venv is current"
  exit 0
fi

python=
candidates=()
[ -n "${CONFORMANCE_PYTHON:-}" ] && candidates+=("$CONFORMANCE_PYTHON")
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12\.[0-9]+$' | sort -t. -k3,3nr); do
    candidates+=("$(pyenv prefix "$v")/bin/python3.12")
  done
fi
command -v python3.12 >/dev/null 2>&1 && candidates+=("$(command -v python3.12)")
for c in ${candidates[@]+"${candidates[@]}"}; do
  if [ -x "$c" ] && is_312 "$c"; then python=$c; break; fi
done
if [ -z "$python" ]; then
  echo "conformance-venv: Python 3.12 not found (set CONFORMANCE_PYTHON, install pyenv 3.12.x, or put python3.12 on PATH)" >&2
  exit 1
fi

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$req"
echo "$want" > "$stamp"
echo "conformance-venv: built $venv with $("$venv/bin/python" -V) from $req"
