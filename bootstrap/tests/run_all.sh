#!/bin/sh
# Runs the bootstrap suites on every interpreter present: the pyenv CPythons
# (3.6-3.13 on these machines), Debian's python3 and pypy3. Exit status 1 if
# any suite fails. Usage: sh bootstrap/tests/run_all.sh
cd "$(dirname "$0")/../.." || exit 2
status=0
for py in /root/.pyenv/versions/3.*/bin/python3 /usr/bin/python3 /usr/bin/pypy3; do
    [ -x "$py" ] || continue
    echo "== $py"
    "$py" -m unittest discover -s bootstrap/tests || status=1
done
exit $status
