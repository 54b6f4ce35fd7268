"""The basic round trip, on popen gateways of every interpreter found."""

import pytest

import execnet_rs
from conftest import PYTHONS


@pytest.mark.parametrize("python", PYTHONS)
def test_echo_on_each_python(group, python):
    gw = group.makegateway(f"popen//python={python}")
    ch = gw.remote_exec("for x in channel: channel.send(x)")
    ch.send(21)
    assert ch.receive() == 21
    ch.close()
    ch.waitclose(10)


def test_remote_exec_function_with_kwargs(gw):
    ch = gw.remote_exec(_add, a=1, b=2)
    assert ch.receive() == 3


def _add(channel, a, b):
    channel.send(a + b)


def test_import_does_not_touch_execnet():
    import sys

    assert execnet_rs.__engine__ == "execnet-rs"
    assert not any(m == "execnet" or m.startswith("execnet.") for m in sys.modules)
