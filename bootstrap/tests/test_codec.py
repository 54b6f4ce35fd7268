"""The worker's CBOR codec: golden vectors, round trips, subclasses, errors."""
import collections
import enum
import json
import math
import os
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostclient import W  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "core", "tests",
                      "vectors", "golden.json")


def typed(t):
    """Typed JSON of golden.json -> Python value."""
    (k, v), = t.items()
    if k == "none":
        return None
    if k == "bool":
        return v
    if k == "int":
        return int(v)
    if k == "float":
        return float(v)
    if k == "complex":
        return complex(float(v[0]), float(v[1]))
    if k == "bytes":
        return bytes.fromhex(v)
    if k == "str":
        return v
    if k == "list":
        return [typed(x) for x in v]
    if k == "tuple":
        return tuple(typed(x) for x in v)
    if k == "dict":
        return dict((typed(a), typed(b)) for a, b in v)
    if k == "set":
        return set(typed(x) for x in v)
    if k == "frozenset":
        return frozenset(typed(x) for x in v)
    if k == "channel":
        return W.Channel(None, v)
    raise AssertionError("unknown typed JSON kind %r" % k)


def same(a, b):
    """Structural equality: exact types, floats bitwise (any NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(x, y) and same(a[x], b[y]) for x, y in zip(a, b))
    if isinstance(a, W.Channel):
        return a.id == b.id
    return a == b


def rt(v):
    return W.loads(W.dumps(v), lambda i: W.Channel(None, i))


class GoldenVectors(unittest.TestCase):
    def setUp(self):
        if not os.path.exists(GOLDEN):
            msg = "GOLDEN VECTORS MISSING: %s does not exist (written by the core)" % GOLDEN
            sys.stderr.write("\n*** %s ***\n" % msg)
            self.skipTest(msg)
        with open(GOLDEN) as f:
            self.golden = json.load(f)

    def test_values(self):
        n = 0
        for e in self.golden["values"]:
            with self.subTest(e["name"]):
                want = typed(e["value"])
                raw = bytes.fromhex(e["hex"])
                got = W.loads(raw, lambda i: W.Channel(None, i))
                self.assertTrue(same(got, want), "%s: decoded %r, want %r" % (e["name"], got, want))
                if not e.get("decode_only"):
                    self.assertEqual(W.dumps(want).hex(), e["hex"], e["name"])
                    q = W._quick(want)  # channel.send's inline encoder, where it applies
                    self.assertIn(q and q.hex(), (None, e["hex"]), e["name"])
                n += 1
        self.assertGreater(n, 20)

    def test_frames(self):
        for f in self.golden["frames"]:
            with self.subTest(f["name"]):
                payload = bytes.fromhex(f["payload_hex"])
                self.assertEqual(W.frame(f["kind"], f["channel"], payload).hex(), f["hex"])
                if payload and f["kind"] not in (W.DATA_MORE,) and f["name"] != "data_more_last":
                    v = W.loads(payload)  # every whole payload decodes
                    self.assertEqual(W.dumps(v), payload, f["name"])


class RoundTrip(unittest.TestCase):
    def test_every_type(self):
        values = [
            None, True, False, 0, 1, 23, 24, 255, 256, 65535, 65536, 2 ** 32, 2 ** 63 - 1, 2 ** 63,
            2 ** 64, -1, -24, -25, -2 ** 63, -2 ** 63 - 1, -2 ** 64, -2 ** 64 - 1, 10 ** 100,
            -10 ** 100, 1.5, -0.0, float("inf"), float("-inf"), float("nan"), 5e-324,
            complex(1, -2.5), complex(float("nan"), float("inf")), b"", b"\x00\xff" * 100,
            "", "h\xe9llo \u20ac \U0001F600", "a\x00b", [], [1, [2, [3]]], (), (1,), (1, "a"),
            {}, {"a": 1, 2: "b", (1, 2): None, None: [], 1.5: b"x", frozenset([1]): ()},
            set(), {1, 2, 3}, frozenset(), frozenset(["x", (1, 2)]), {(1, 2)},
            [{"k": ({1}, frozenset([2]), b"b")}], W.Channel(None, 7), [W.Channel(None, 2 ** 32 - 1)],
        ]
        for v in values:
            with self.subTest(v=v):
                self.assertTrue(same(rt(v), v), "%r -> %r" % (v, rt(v)))

    def test_quick_encoder_is_dumps(self):
        # channel.send encodes the commonest items inline (_quick): byte for byte
        # dumps, including every length and integer boundary, else None
        ints = [0, 23, 24, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 63,
                -1, -24, -25, -256, -257, -2 ** 63, -2 ** 63 - 1, 10 ** 30]
        strs = ["", "ab", "a" * 23, "a" * 24, "\xe9" * 12, "\U0001F600" * 6, "a" * 255,
                "a" * 256, "a" * 70000]
        values = ints + strs + [tuple(ints[:i]) for i in range(len(ints))] + [
            tuple(strs[:i]) for i in range(len(strs))] + [
            (1, "ab"), (70000, "x"), ("x", -1), tuple(range(23)), tuple(range(24)), (1, 1.5),
            (1, (2, 3)), (True, 1), 1.5, True, None, b"ab", [1], MyStr("s"), (MyStr("s"), 1),
            Point(1, 2), Color.RED]
        quick = 0
        for v in values:
            with self.subTest(v=v):
                q = W._quick(v)
                if q is not None:
                    quick += 1
                    self.assertEqual(q, W.dumps(v))
        self.assertEqual(W._quick((5, "ab")), W.dumps((5, "ab")))
        self.assertGreater(quick, 40)

    def test_dict_order_kept(self):
        d = dict((str(i), i) for i in range(100, 0, -1))
        self.assertEqual(list(rt(d)), list(d))

    def test_large_bytes_and_lists(self):
        b = os.urandom(1 << 20)
        self.assertEqual(rt(b), b)
        lst = list(range(-5000, 5000))
        self.assertEqual(rt(lst), lst)

    def test_shortest_heads(self):
        self.assertEqual(W.dumps(23), b"\x17")
        self.assertEqual(W.dumps(24), b"\x18\x18")
        self.assertEqual(W.dumps(-1), b"\x20")
        self.assertEqual(W.dumps("a" * 24)[:2], b"\x78\x18")
        self.assertEqual(W.dumps(float("nan")), bytes.fromhex("fb7ff8000000000000"))

    def test_depth(self):
        v = []
        for _ in range(199):
            v = [v]
        self.assertTrue(same(rt(v), v))  # 200 levels
        with self.assertRaises(W.DumpError):
            W.dumps([v])
        with self.assertRaises(W.LoadError):
            W.loads(b"\x81" * 200 + b"\x80")
        W.loads(b"\x81" * 199 + b"\x80")

    def test_depth_counts_tag_and_array(self):
        # protocol.md 7.1: every array, map and tag is a level: a complex
        # (tag 40003 + [re, im]) is two, as the Rust decoder counts it
        cplx = b"\xd9\x9c\x43\x82" + b"\xfb" + b"\0" * 8 + b"\xfb" + b"\0" * 8
        W.loads(b"\x81" * 198 + cplx)
        with self.assertRaises(W.LoadError):
            W.loads(b"\x81" * 199 + cplx)


class Point(collections.namedtuple("Point", "x y")):
    pass


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class MyList(list):
    pass


class MyDict(dict):
    pass


class MyFloat(float):
    pass


class Subclasses(unittest.TestCase):
    def test_encoded_as_base_type(self):
        cases = [
            (collections.OrderedDict([("b", 1), ("a", 2)]), {"b": 1, "a": 2}),
            (Point(1, 2), (1, 2)),
            (Color.RED, 1),
            (MyStr("s"), "s"),
            (MyList([1]), [1]),
            (MyDict(a=1), {"a": 1}),
            (MyFloat(2.5), 2.5),
            (bytearray(b"ab"), b"ab"),
            (memoryview(b"abc"), b"abc"),
            (memoryview(b"abcdef")[1:5:2], b"bd"),
            (memoryview(struct.pack("<2H", 1, 2)).cast("H"), struct.pack("<2H", 1, 2)),
            (collections.defaultdict(list, {1: [2]}), {1: [2]}),
            (True, True),
        ]
        for v, want in cases:
            with self.subTest(v=v):
                self.assertEqual(W.dumps(v), W.dumps(want))
                got = rt(v)
                self.assertTrue(same(got, want), "%r -> %r" % (v, got))

    def test_bool_stays_bool(self):
        self.assertIs(rt(True), True)
        self.assertIs(rt([False])[0], False)


class Errors(unittest.TestCase):
    def test_unsupported_types_name_the_type(self):
        class Custom(object):
            pass

        for v in [object(), Custom(), [1, Custom()], {"k": range(3)}, {Custom(): 1}, Ellipsis,
                  type, len]:
            with self.subTest(v=v):
                with self.assertRaises(TypeError) as cm:
                    W.dumps(v)
                # execnet's text, which remote code and tests match
                self.assertIn("can't serialize <class '", str(cm.exception))
        with self.assertRaises(TypeError) as cm:
            W.dumps([Custom()])
        self.assertIn(".Custom'>", str(cm.exception))

    def test_malformed_items_are_load_errors(self):
        bad = [
            b"", b"\x18", b"\x19\x01", b"\x5f", b"\x7f", b"\x9f", b"\xbf", b"\x42a", b"\x63ab",
            b"\x62\xff\xfe", b"\x82\x01", b"\xa1\x01", b"\xc6\x01", b"\xd9\x9c\x45\x80",
            b"\xf7", b"\xf8\x20", b"\xf0", b"\x01\x02", b"\x1c", b"\xfb\x00",
            b"\xd9\x9c\x41\x01", b"\xc2\x01", b"\xd9\x9c\x43\x82\x01\x02", b"\xd9\x9c\x44\x61a",
            b"\xd9\x9c\x44\x1b\x00\x00\x00\x01\x00\x00\x00\x00", b"\x9b" + b"\xff" * 8,
            b"\x62\xed\xa0\x80"[:1] + b"\xed\xa0\x80",
        ]
        for b in bad:
            with self.subTest(b=b.hex()):
                with self.assertRaises(W.LoadError):
                    W.loads(b, lambda i: W.Channel(None, i))

    def test_unhashable_is_unrepresentable_not_malformed(self):
        for b, name in [(b"\xa1\x81\x01\x01", "list"), (b"\xa1\xa0\x01", "dict"),
                        (b"\xd9\x01\x02\x81\x80", "list"), (b"\x82\xa1\x80\x01\x02", "list")]:
            with self.subTest(b=b.hex()):
                with self.assertRaises(W.Unrepresentable) as cm:
                    W.loads(b)
                self.assertIn(name, str(cm.exception))
        # still checked for well-formedness after the unhashable key
        with self.assertRaises(W.LoadError):
            W.loads(b"\x82\xa1\x80\x01\x1c")


if __name__ == "__main__":
    unittest.main()
