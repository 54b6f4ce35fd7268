#!/usr/bin/env bash
# Runs execnet 2.1.2's own API-level test files (from its sdist's testing/)
# against execnet_rs, with `import execnet` mapped to execnet_rs by the
# execnet_alias plugin. Prints pytest's summary; docs/python.md explains the
# failures. Usage: run_execnet_tests.sh [PYTHON]  (a python whose
# environment has execnet_rs and pytest installed, default: python3).
# The real execnet distribution must NOT be installed there (it would not
# be used, but the check below keeps the run honest).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${1:-python3}
if "$py" -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("execnet") is None)'; then
  echo "the real execnet is installed in $py's environment; use a venv without it" >&2
  exit 2
fi
work=$(mktemp -d /tmp/execnet-compat.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q --no-deps --no-binary :all: execnet==2.1.2 -d "$work"
tar xzf "$work"/execnet-2.1.2.tar.gz -C "$work"
t="$work/execnet-2.1.2/testing"
cd "$t"
rm -f "$t/../tox.ini" "$t/../pyproject.toml"
PYTHONPATH="$here:$here/shim" timeout 1200 "$py" -m pytest -p execnet_alias -p no:cacheprovider -q -rfE --tb=line \
  -o addopts= -p timeout --timeout=60 \
  test_channel.py test_gateway.py test_multi.py test_rsync.py test_termination.py test_xspec.py \
  "${@:2}" 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed" || true
