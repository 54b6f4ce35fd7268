# Shared by run_xdist_suite.sh and bench_xdist.sh (source it): cached downloads
# and the two venvs, one with the real execnet 2.1.2 ("baseline") and one with
# execnet_rs and without the execnet distribution ("ours").
#   PYTHON            interpreter for the venvs (default: /usr/bin/python3)
#   XDIST_CACHE       download/venv cache (default: target/xdist-cache in the repo)
#   EXECNET_RS_WHEEL  an already built execnet_rs wheel to install instead of
#                     building ./adapters/python (CI reuses the Python step's wheel)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-/usr/bin/python3}"
CACHE="${XDIST_CACHE:-$repo/target/xdist-cache}"
# Exact versions: pytest 9 breaks 7 of xdist 3.8.0's tests (ENVIRONMENT.md).
PINS=(pytest==8.4.2 pytest-xdist==3.8.0 pexpect==4.9.0 ptyprocess==0.7.0
      filelock==4.3.2 psutil==7.2.2 iniconfig==2.3.1 pluggy==1.7.0
      packaging==26.4 Pygments==2.21.0)
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

# Downloads, once: wheels for the pins and execnet 2.1.2, and xdist's sdist
# (it holds testing/), unpacked at $CACHE/pytest_xdist-3.8.0.
xdist_downloads() {
  mkdir -p "$CACHE/wheels"
  local stamp="$CACHE/wheels/.done-$pyver"
  if [ ! -e "$stamp" ]; then
    "$PYTHON" -m pip download -q -d "$CACHE/wheels" "${PINS[@]}" execnet==2.1.2
    touch "$stamp"
  fi
  local sdist="$CACHE/pytest_xdist-3.8.0.tar.gz"
  if [ ! -e "$sdist" ]; then
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$CACHE" pytest-xdist==3.8.0
  fi
  [ -d "$CACHE/pytest_xdist-3.8.0/testing" ] || tar -xzf "$sdist" -C "$CACHE"
}

# xdist_venv baseline|ours: makes (or refreshes) that venv; prints its python.
# "ours" always reinstalls execnet_rs (the tree may have changed) and checks
# that the real execnet cannot be imported.
xdist_venv() {
  local mode="$1" venv="$CACHE/venv-$1-$pyver"
  xdist_downloads
  if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv" >&2
    "$venv/bin/pip" install -q --no-index --find-links "$CACHE/wheels" "${PINS[@]}" >&2
  fi
  if [ "$mode" = baseline ]; then
    "$venv/bin/pip" install -q --no-index --find-links "$CACHE/wheels" execnet==2.1.2 >&2
  else
    if [ -n "${EXECNET_RS_WHEEL:-}" ]; then
      "$venv/bin/pip" install -q --force-reinstall --no-deps "$EXECNET_RS_WHEEL" >&2
    else
      "$venv/bin/pip" install -q --force-reinstall --no-deps "$repo/adapters/python" >&2
    fi
    # pytest-xdist depends on execnet; make sure nothing can fall back to it.
    "$venv/bin/pip" uninstall -q -y execnet >/dev/null 2>&1 || true
    if "$venv/bin/python" -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("execnet") is None)'; then
      echo "the real execnet is still importable in $venv" >&2
      return 1
    fi
  fi
  echo "$venv/bin/python"
}
