"""Fixtures: real gateways on the interpreters this machine has."""

import os
import sys

import pytest

import execnet_rs

# The tests never write the user's compiled-worker cache (~/.cache/execnet-rs);
# the engine reads this at its first popen start.
os.environ.setdefault("EXECNET_CACHE_DIR", "off")


def _pythons():
    found = [sys.executable]
    for p in ["/usr/bin/python3"] + [
        f"/root/.pyenv/versions/{v}/bin/python3" for v in ("3.9.18", "3.13.0")
    ]:
        if os.path.exists(p) and p not in found:
            found.append(p)
    return found


PYTHONS = _pythons()

# A worker under development (thread gateways exec the worker source in
# this process): EXECNET_RS_TEST_WORKER=path/to/worker.py.
if os.environ.get("EXECNET_RS_TEST_WORKER"):
    with open(os.environ["EXECNET_RS_TEST_WORKER"]) as f:
        execnet_rs._core.WORKER_SOURCE = f.read()


@pytest.fixture
def group():
    g = execnet_rs.Group()
    yield g
    g.terminate(timeout=2)


@pytest.fixture
def gw(group):
    return group.makegateway(f"popen//python={sys.executable}")
