#!/usr/bin/env bash
# Makes (once) the venv of the interop suite: `setup_venv.sh [VENV_DIR]`, default target/interop-venv.
# Idempotent: a marker holds the hash of requirements.txt; a venv that matches is left alone.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:-$here/../../target/interop-venv}
req=$here/requirements.txt
py=${PYTHON:-python3}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9 2>/dev/null || true

want=$(sha256sum "$req" | cut -d' ' -f1)
marker=$venv/.requirements.sha256
if [ -x "$venv/bin/python" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
  exit 0
fi

if ! command -v "$py" >/dev/null; then
  echo "interop: $py not found. Install Python >= 3.11 with venv and pip (Debian: apt-get install python3 python3-venv python3-pip), or set JUMPSTARTER_ROUTER_SKIP_INTEROP=1 to skip the interop tests." >&2
  exit 1
fi
if ! "$py" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "interop: $py ($("$py" --version 2>&1)) lacks venv/ensurepip or is older than 3.11, which jumpstarter 0.9.0 needs. Install python3-venv (Debian: apt-get install python3-venv), or set JUMPSTARTER_ROUTER_SKIP_INTEROP=1 to skip the interop tests." >&2
  exit 1
fi

rm -rf "$venv"
"$py" -m venv "$venv"
if ! "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"; then
  echo "interop: pip could not install $req (needs access to PyPI), or set JUMPSTARTER_ROUTER_SKIP_INTEROP=1 to skip the interop tests." >&2
  exit 1
fi
echo "$want" >"$marker"
echo "interop venv ready: $venv"
