#!/usr/bin/env bash
# End-to-end xdist benchmark, execnet-rs vs execnet 2.1.2 in one run (see
# bench_xdist.py for the rows). Makes/refreshes the two venvs (lib.sh), then
# runs bench_xdist.py; extra arguments go to it (--repeat N, --only ROW).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ours="$(xdist_venv ours)"
base="$(xdist_venv baseline)"
echo "Python $("$ours" -c 'import sys; print(sys.version.split()[0])'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$ours" "$(dirname "$0")/bench_xdist.py" --ours "$ours" --execnet "$base" "$@"
