#!/usr/bin/env python3
"""Generates golden.json: the byte-exact contract between execnet-core and the
Python worker (docs/protocol.md). Independent of both implementations: a
20-line CBOR writer that follows protocol.md section 7.1 literally, so every
hex string can be checked by hand against RFC 8949. Run: python3 gen_golden.py
"""
import json
import math
import struct

T_TUPLE, T_FROZENSET, T_COMPLEX, T_CHANNEL, T_SET = 40001, 40002, 40003, 40004, 258


def head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    for ai, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | ai]) + n.to_bytes(size, "big")
    raise ValueError(n)


def f64(x):
    if math.isnan(x):
        return bytes.fromhex("fb7ff8000000000000")
    return b"\xfb" + struct.pack(">d", x)


def mag(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def enc(t):
    """t is a typed value: (kind, payload)."""
    kind, v = t
    if kind == "none":
        return b"\xf6"
    if kind == "bool":
        return b"\xf5" if v else b"\xf4"
    if kind == "int":
        if 0 <= v < 1 << 63:
            return head(0, v)
        if -(1 << 63) <= v < 0:
            return head(1, -1 - v)
        if v > 0:
            return head(6, 2) + head(2, len(mag(v))) + mag(v)
        m = mag(-1 - v)
        return head(6, 3) + head(2, len(m)) + m
    if kind == "float":
        return f64(v)
    if kind == "complex":
        return head(6, T_COMPLEX) + head(4, 2) + f64(v[0]) + f64(v[1])
    if kind == "bytes":
        return head(2, len(v)) + v
    if kind == "str":
        b = v.encode("utf-8")
        return head(3, len(b)) + b
    if kind == "list":
        return head(4, len(v)) + b"".join(enc(x) for x in v)
    if kind in ("tuple", "set", "frozenset"):
        tag = {"tuple": T_TUPLE, "set": T_SET, "frozenset": T_FROZENSET}[kind]
        return head(6, tag) + head(4, len(v)) + b"".join(enc(x) for x in v)
    if kind == "dict":
        return head(5, len(v)) + b"".join(enc(k) + enc(x) for k, x in v)
    if kind == "channel":
        return head(6, T_CHANNEL) + head(0, v)
    raise ValueError(kind)


def fstr(x):
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def typed_json(t):
    kind, v = t
    if kind == "none":
        return {"none": None}
    if kind == "bool":
        return {"bool": v}
    if kind == "int":
        return {"int": str(v)}
    if kind == "float":
        return {"float": fstr(v)}
    if kind == "complex":
        return {"complex": [fstr(v[0]), fstr(v[1])]}
    if kind == "bytes":
        return {"bytes": v.hex()}
    if kind == "str":
        return {"str": v}
    if kind in ("list", "tuple", "set", "frozenset"):
        return {kind: [typed_json(x) for x in v]}
    if kind == "dict":
        return {"dict": [[typed_json(k), typed_json(x)] for k, x in v]}
    if kind == "channel":
        return {"channel": v}
    raise ValueError(kind)


N = ("none", None)
def I(n): return ("int", n)
def F(x): return ("float", x)
def S(s): return ("str", s)
def B(b): return ("bytes", b)
def L(*xs): return ("list", list(xs))
def T(*xs): return ("tuple", list(xs))
def D(*kv): return ("dict", list(kv))


def deep(n):
    v = N
    for _ in range(n):
        v = L(v)
    return v


VALUES = [
    ("none", N),
    ("false", ("bool", False)),
    ("true", ("bool", True)),
    ("int_0", I(0)),
    ("int_1", I(1)),
    ("int_23", I(23)),
    ("int_24", I(24)),
    ("int_255", I(255)),
    ("int_256", I(256)),
    ("int_65535", I(65535)),
    ("int_65536", I(65536)),
    ("int_2_pow_32_minus_1", I(2**32 - 1)),
    ("int_2_pow_32", I(2**32)),
    ("int_minus_1", I(-1)),
    ("int_minus_24", I(-24)),
    ("int_minus_25", I(-25)),
    ("int_minus_256", I(-256)),
    ("int_minus_257", I(-257)),
    ("int_minus_2_pow_32", I(-2**32)),
    ("int_i64_max", I(2**63 - 1)),
    ("int_i64_min", I(-2**63)),
    ("int_i64_max_plus_1", I(2**63)),
    ("int_i64_min_minus_1", I(-2**63 - 1)),
    ("int_u64_max", I(2**64 - 1)),
    ("int_2_pow_64", I(2**64)),
    ("int_minus_2_pow_64", I(-2**64)),
    ("int_minus_2_pow_64_minus_1", I(-2**64 - 1)),
    ("int_2_pow_200", I(2**200)),
    ("int_minus_10_pow_40", I(-10**40)),
    ("int_huge_factorial_50", I(math.factorial(50))),
    ("float_1_5", F(1.5)),
    ("float_0_1", F(0.1)),
    ("float_zero", F(0.0)),
    ("float_negative_zero", F(-0.0)),
    ("float_nan", F(float("nan"))),
    ("float_inf", F(float("inf"))),
    ("float_minus_inf", F(float("-inf"))),
    ("float_1e300", F(1e300)),
    ("float_min_subnormal", F(5e-324)),
    ("complex", ("complex", (1.0, -2.5))),
    ("complex_nan_inf", ("complex", (float("nan"), float("inf")))),
    ("bytes_empty", B(b"")),
    ("bytes_00_ff", B(b"\x00\xff")),
    ("bytes_24", B(bytes(range(24)))),
    ("bytes_300", B(bytes(i % 256 for i in range(300)))),
    ("str_empty", S("")),
    ("str_ascii", S("hello")),
    ("str_unicode", S("h\u00e9llo \u20ac \u4e16\u754c")),
    ("str_emoji", S("\U0001F600")),
    ("str_nul", S("a\x00b")),
    ("list_empty", L()),
    ("list_nested", L(I(1), L(I(2), I(3)))),
    ("list_24", ("list", [I(i) for i in range(24)])),
    ("tuple_empty", T()),
    ("tuple_int_str", T(I(1), S("a"))),
    ("tuple_single", T(N)),
    ("dict_empty", D()),
    ("dict_str_int", D((S("a"), I(1)), (S("b"), I(2)))),
    ("dict_insertion_order", D((S("z"), I(1)), (S("a"), I(2)))),
    ("dict_tuple_int_none_keys", D((T(I(1), I(2)), S("t")), (I(3), N), (N, ("bool", True)))),
    ("dict_float_bytes_frozenset_keys",
     D((F(1.5), I(1)), (B(b"k"), I(2)), (("frozenset", [I(1)]), I(3)))),
    ("set_empty", ("set", [])),
    ("set_single", ("set", [I(1)])),
    ("frozenset_empty", ("frozenset", [])),
    ("frozenset_single", ("frozenset", [S("x")])),
    ("set_of_tuples", ("set", [T(I(1), I(2))])),
    ("channel_1", ("channel", 1)),
    ("channel_2", ("channel", 2)),
    ("channel_70000", ("channel", 70000)),
    ("nested_everything", D(
        (S("k"), L(T(I(1), ("set", [I(2)])), B(b"\x01"), N, ("channel", 3))),
        (T(), D((S("inner"), ("complex", (0.0, 1.0))))),
    )),
    ("list_depth_200", deep(200)),
]

# Entries only a decoder must accept: encoders never produce these bytes.
DECODE_ONLY = [
    ("dec_uint64_max_major0", I(2**64 - 1), "1bffffffffffffffff"),
    ("dec_uint_2_pow_63_major0", I(2**63), "1b8000000000000000"),
    ("dec_nint_minus_2_pow_64_major1", I(-2**64), "3bffffffffffffffff"),
    ("dec_nint_minus_2_pow_63_minus_1_major1", I(-2**63 - 1), "3b8000000000000000"),
    ("dec_small_positive_bignum", I(1), "c24101"),
    ("dec_small_negative_bignum", I(-2), "c34101"),
    ("dec_bignum_leading_zeros", I(2**64), "c24a00010000000000000000"),
    ("dec_non_shortest_int", I(1), "1801"),
    ("dec_half_float_1", F(1.0), "f93c00"),
    ("dec_half_float_minus_2", F(-2.0), "f9c000"),
    ("dec_half_float_inf", F(float("inf")), "f97c00"),
    ("dec_half_float_nan", F(float("nan")), "f97e00"),
    ("dec_half_float_max", F(65504.0), "f97bff"),
    ("dec_single_float_1_5", F(1.5), "fa3fc00000"),
    ("dec_single_float_nan", F(float("nan")), "fa7fc00000"),
    ("dec_other_nan_payload", F(float("nan")), "fb7ff0000000000001"),
    ("dec_complex_half_floats", ("complex", (1.0, -2.0)), "d99c4382f93c00f9c000"),
]


def frame(kind, channel, payload):
    return bytes([kind]) + channel.to_bytes(4, "big") + len(payload).to_bytes(4, "big") + payload


HELLO, EXEC, DATA, DATA_MORE, CLOSE, LAST, WINDOW, TERMINATE, SREQ, SREP, OUTPUT = range(1, 12)

host_hello = enc(D(
    (S("version"), I(1)),
    (S("window"), I(4194304)),
    (S("max_frame"), I(1048576)),
    (S("max_item"), I(1073741824)),
    (S("options"), D((S("execmodel"), S("thread")), (S("output"), S("forward")),
                     (S("debug"), ("bool", False)))),
))
worker_hello = enc(D(
    (S("version"), I(1)),
    (S("implementation"), S("cpython")),
    (S("version_info"), L(I(3), I(12), I(1), S("final"), I(0))),
    (S("executable"), S("/usr/bin/python3")),
    (S("platform"), S("linux")),
    (S("pid"), I(4242)),
    (S("cwd"), S("/home/user")),
    (S("execmodel"), S("thread")),
))
item = enc(L(I(1), S("two"), T(I(3), N)))
big_item = enc(S("hello world"))  # 6b 68656c6c6f20776f726c64 (12 bytes)

FRAMES = [
    ("hello_host", HELLO, 0, host_hello,
     "host HELLO: version 1, window 4 MiB, max_frame 1 MiB, max_item 1 GiB, "
     "options {execmodel: thread, output: forward, debug: false}"),
    ("hello_worker", HELLO, 0, worker_hello,
     "worker HELLO: cpython 3.12.1 final, /usr/bin/python3 on linux, pid 4242, "
     "cwd /home/user, execmodel thread"),
    ("exec_source", EXEC, 1,
     enc(D((S("source"), S("channel.send(42)")), (S("call"), N))),
     "EXEC on channel 1: run source 'channel.send(42)', no call"),
    ("exec_call", EXEC, 3,
     enc(D((S("source"), S("def f(channel, x):\n    channel.send(x)\n")),
           (S("call"), L(S("f"), D((S("x"), I(1))))))),
     "EXEC on channel 3: run source, then call f(channel, x=1)"),
    ("data", DATA, 1, item, "DATA on channel 1: one whole item [1, 'two', (3, None)]"),
    ("data_worker_channel", DATA, 2, enc(I(42)), "DATA on worker channel 2: item 42"),
    ("data_more_1", DATA_MORE, 3, big_item[:5],
     "DATA_MORE on channel 3: first 5 bytes of the item 'hello world'"),
    ("data_more_2", DATA_MORE, 3, big_item[5:9],
     "DATA_MORE on channel 3: next 4 bytes of the same item"),
    ("data_more_last", DATA, 3, big_item[9:],
     "DATA on channel 3: last 3 bytes; reassembled item is 'hello world'"),
    ("close", CLOSE, 1, b"", "CLOSE channel 1, no error"),
    ("close_error", CLOSE, 3,
     enc(S("Traceback (most recent call last):\nValueError: boom\n")),
     "CLOSE channel 3 with error text"),
    ("last_message", LAST, 5, b"", "LAST_MESSAGE on channel 5 (half-close)"),
    ("window", WINDOW, 1, enc(I(65536)), "WINDOW on channel 1: grant 65536 more bytes"),
    ("window_small", WINDOW, 2, enc(I(23)), "WINDOW on channel 2: grant 23 more bytes"),
    ("terminate", TERMINATE, 0, b"", "TERMINATE without reason"),
    ("terminate_reason", TERMINATE, 0, enc(S("host shutting down")),
     "TERMINATE with reason 'host shutting down'"),
    ("status_request", SREQ, 0, enc(I(7)), "STATUS_REQUEST id 7"),
    ("status_reply", SREP, 0,
     enc(D((S("id"), I(7)), (S("numchannels"), I(2)), (S("numexecuting"), I(1)),
           (S("execmodel"), S("thread")))),
     "STATUS_REPLY id 7: 2 channels, 1 executing, execmodel thread"),
    ("output_stdout", OUTPUT, 0, enc(L(I(1), B(b"hello\n"))), "OUTPUT fd 1: b'hello\\n'"),
    ("output_stderr", OUTPUT, 0, enc(L(I(2), B(b"oops\n"))), "OUTPUT fd 2: b'oops\\n'"),
]


def main():
    values = [
        {"name": n, "value": typed_json(t), "hex": enc(t).hex(), "decode_only": False}
        for n, t in VALUES
    ]
    values += [
        {"name": n, "value": typed_json(t), "hex": h, "decode_only": True}
        for n, t, h in DECODE_ONLY
    ]
    frames = [
        {"name": n, "kind": k, "channel": c, "payload_hex": p.hex(),
         "hex": frame(k, c, p).hex(), "meaning": m}
        for n, k, c, p, m in FRAMES
    ]
    with open(__file__.replace("gen_golden.py", "golden.json"), "w") as f:
        # One entry per line: diffable, and small despite the deep values.
        f.write('{"values": [\n')
        f.write(",\n".join(json.dumps(v, ensure_ascii=False) for v in values))
        f.write('\n],\n"frames": [\n')
        f.write(",\n".join(json.dumps(x, ensure_ascii=False) for x in frames))
        f.write("\n]}\n")


if __name__ == "__main__":
    main()
