"""Values keep their exact Python types both ways (converted in Rust)."""

import collections
import math

import pytest

import execnet_rs

VALUES = [
    None, True, False, 0, 1, -1, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1,
    2**200, -(2**200), 1.5, -0.0, float("inf"), float("-inf"), 1 + 2j, complex(0, -1),
    b"", b"\x00\xff", "", "text ü €", [], [1, [2]], (), (1,), (1, (2, 3)),
    {}, {"a": 1, 2: "b", (1, 2): [3]}, set(), {1, "a"}, frozenset(), frozenset({(1, 2)}),
    [True, 1, 1.0], {"nested": {"deep": [(), [], {}]}},
]


def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b))


@pytest.fixture
def echo(gw):
    ch = gw.remote_exec("for x in channel: channel.send(x)")
    yield ch
    ch.close()


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip_exact_type(echo, value):
    echo.send(value)
    assert same(echo.receive(10), value)


def test_nan_round_trips(echo):
    echo.send(float("nan"))
    assert math.isnan(echo.receive(10))


def test_subclasses_and_buffers_accepted(echo):
    class S(str):
        pass

    class D(dict):
        pass

    Point = collections.namedtuple("Point", "x y")
    for value, expected in [
        (S("s"), "s"),
        (D(a=1), {"a": 1}),
        (collections.OrderedDict([("b", 1), ("a", 2)]), {"b": 1, "a": 2}),
        (Point(1, 2), (1, 2)),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"cd"), b"cd"),
    ]:
        echo.send(value)
        assert same(echo.receive(10), expected), value


def test_dumperror_at_send_and_channel_stays_usable(echo):
    with pytest.raises(execnet_rs.DumpError):
        echo.send(object())
    with pytest.raises(execnet_rs.DumpError):
        echo.send([1, {2: object()}])
    echo.send("still fine")
    assert echo.receive(10) == "still fine"


def test_too_deep_is_dumperror(echo):
    v = []
    for _ in range(1000):
        v = [v]
    with pytest.raises(execnet_rs.DumpError):
        echo.send(v)
    echo.send(1)
    assert echo.receive(10) == 1


def test_channels_inside_values(gw):
    ch = gw.remote_exec(
        """
        a, b = channel.receive()
        a.send("via a")
        b.send(("via b", channel))
        """
    )
    a, b = gw.newchannel(), gw.newchannel()
    ch.send((a, b))
    assert a.receive(10) == "via a"
    text, back = b.receive(10)
    assert text == "via b" and back == ch and back.gateway is gw
    assert isinstance(back, execnet_rs.Channel)


def test_channel_of_other_gateway_refused(group, gw):
    import sys

    other = group.makegateway(f"popen//python={sys.executable}")
    ch = gw.remote_exec("channel.receive()")
    with pytest.raises(execnet_rs.DumpError):
        ch.send(other.newchannel())


def test_dumps_loads():
    for v in VALUES:
        assert same(execnet_rs.loads(execnet_rs.dumps(v)), v)
    with pytest.raises(execnet_rs.DumpError):
        execnet_rs.dumps(object())
    with pytest.raises(execnet_rs.LoadError):
        execnet_rs.loads(b"\xff\xff\xff")
    assert issubclass(execnet_rs.DumpError, execnet_rs.DataFormatError)
    assert issubclass(execnet_rs.LoadError, execnet_rs.DataFormatError)
