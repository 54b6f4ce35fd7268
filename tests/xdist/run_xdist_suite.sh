#!/usr/bin/env bash
# Runs pytest-xdist 3.8.0's own test suite (testing/ from its sdist) on the
# execnet-rs engine: the plugin execnet_rs.xdist forced on for every pytest
# run (the outer one and pytester's inner ones, through PYTEST_ADDOPTS) and the
# real execnet distribution NOT installed. Prints pytest's summary and checks
# that at least MIN_PASSED tests passed (on execnet 2.1.2: 200 passed,
# 2 skipped, 10 xfailed; docs/xdist.md explains every difference).
#
# usage: tests/xdist/run_xdist_suite.sh [--baseline] [pytest args...]
#   --baseline   the same suite on the real execnet 2.1.2 instead (no plugin)
# environment: PYTHON, XDIST_CACHE, EXECNET_RS_WHEEL (see lib.sh);
#   MIN_PASSED   pass threshold (default 195; 0 with --baseline)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
mode=ours
if [ "${1:-}" = "--baseline" ]; then mode=baseline; shift; fi
if [ "$mode" = baseline ]; then MIN_PASSED="${MIN_PASSED:-0}"; else MIN_PASSED="${MIN_PASSED:-195}"; fi

py="$(xdist_venv "$mode")"
if [ "$mode" = baseline ]; then
  unset PYTEST_ADDOPTS
else
  export PYTEST_ADDOPTS="-p execnet_rs.xdist"
  # pytester removes PYTEST_ADDOPTS from the environment of the pytest runs it
  # starts in subprocesses (runpytest_subprocess, spawn_pytest); this .pth file,
  # in this test venv only, puts the option back at every interpreter start, so
  # that those runs load the plugin as well (without it they could not even
  # import xdist: the real execnet is not installed).
  site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  cat >"$site/execnet_rs_xdist_suite.pth" <<'PTH'
import os; a = os.environ.get("PYTEST_ADDOPTS", ""); os.environ["PYTEST_ADDOPTS"] = a if "execnet_rs.xdist" in a else (a + " -p execnet_rs.xdist").strip()
PTH
fi

# The suite runs from a copy of the sdist's tree (pytester writes next to it).
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$CACHE/pytest_xdist-3.8.0/." "$work/"
cd "$work"
echo "pytest-xdist 3.8.0 testing/ on $mode, Python $("$py" -c 'import sys; print(sys.version.split()[0])')"
set +e
"$py" -m pytest testing -p no:cacheprovider -q -rfEsx "$@" >"$work/out.txt" 2>&1
rc=$?
set -e
if grep -q "short test summary info" "$work/out.txt"; then
  sed -n '/short test summary info/,$p' "$work/out.txt"
else
  tail -n 40 "$work/out.txt"
fi
passed="$(tail -n 1 "$work/out.txt" | grep -o '[0-9]* passed' | grep -o '[0-9]*' || echo 0)"
echo "pytest exit status $rc; $passed passed (need >= $MIN_PASSED)"
if [ "$passed" -lt "$MIN_PASSED" ]; then
  echo "--- failures (first 400 lines)"
  sed -n '/= FAILURES =/,$p' "$work/out.txt" | head -n 400
  exit 1
fi
