#!/usr/bin/env bash
# CI's xdist step: pytest-xdist 3.8.0 on execnet-rs (issue 14), with the real
# execnet distribution not installed.
#  1. our own xdist tests (adapters/python/tests/test_xdist.py: dist modes,
#     maxfail, rsync, via, ssh against a real sshd, our socket server, dead
#     workers, -s output, leftover threads, Ctrl-C, the contract-M marker);
#  2. xdist's own testing/ suite with the plugin forced on (>= 195 passed).
# Downloads and venvs are cached in $XDIST_CACHE (default target/xdist-cache).
# ~4 minutes on 2 cores (one build of ./adapters/python from a warm target dir,
# ~30 s of our tests, ~2 min of xdist's suite).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
py="$(xdist_venv ours)"
echo "--- our xdist tests ($("$py" -c 'import sys; print(sys.version.split()[0])'))"
(cd "$repo/adapters/python" &&
  EXECNET_XDIST_REQUIRED=1 "$py" -m pytest -p execnet_rs.xdist -p no:cacheprovider -rs -q tests/test_xdist.py)
echo "--- pytest-xdist 3.8.0's own suite"
"$here/run_xdist_suite.sh"
