# execnet worker, wire protocol version 1 (see docs/protocol.md, normative).
#
# Stdlib only; runs unchanged on CPython 3.6-3.13 and PyPy3. The host starts
#   python -u -c "import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read(N)))"
# and writes this file, zlib-compressed (N bytes), to stdin, followed at once by
# frames. Sections: codec, framing, channels, gateway (execution, main loop),
# execnet compatibility (the `execnet` module remote code imports). Thread mode:
# executed with a __name__ other than "__main__" it only defines things; then
# serve_thread(read_fd, write_fd) serves one gateway in the calling thread.
# Size is start-up time: ~97 KB of source, ~26.6 KB compressed (zlib level 9).
# Env EXECNET_DEBUG=1 traces to stderr, EXECNET_DEBUG=/path appends to a file.
import os
import _struct as struct  # the C module: "struct" is a Python wrapper around it
import sys
import _thread
import time
from _collections import deque  # C modules only: "threading" and "collections" would
from _weakref import ref as _wref  # cost ~2.5 ms of CPU per start (_Cond, _MainFinder)

# ------------------------------------------------------------------ codec
# CBOR (RFC 8949) restricted to the value model of protocol.md section 7.1.


class DataFormatError(Exception):
    """Base of DumpError and LoadError, as in execnet."""


class DumpError(DataFormatError, TypeError):
    """A value cannot be sent over a channel (nothing was sent)."""


class LoadError(DataFormatError, ValueError):
    """A received item is not a well-formed value (protocol violation)."""


class Unrepresentable(ValueError):
    """A well-formed value that Python cannot represent (unhashable key)."""


MAX_DEPTH = 200
_SMALL = [bytes((i,)) for i in range(256)]
_P1 = struct.Struct(">BB").pack
_P2 = struct.Struct(">BH").pack
_P4 = struct.Struct(">BI").pack
_P8 = struct.Struct(">BQ").pack
_PD = struct.Struct(">Bd").pack
_U2 = struct.Struct(">H").unpack_from
_U4 = struct.Struct(">I").unpack_from
_U8 = struct.Struct(">Q").unpack_from
_UH = struct.Struct(">e").unpack_from
_UF = struct.Struct(">f").unpack_from
_UD = struct.Struct(">d").unpack_from
_NAN = b"\xfb\x7f\xf8\x00\x00\x00\x00\x00\x00"
_I64 = 0x7FFFFFFFFFFFFFFF
T_TUPLE, T_FROZENSET, T_COMPLEX, T_CHANNEL, T_SET = 40001, 40002, 40003, 40004, 258


def _head(m, n):
    if n < 24:
        return _SMALL[m | n]
    if n < 0x100:
        return _P1(m | 24, n)
    if n < 0x10000:
        return _P2(m | 25, n)
    if n < 0x100000000:
        return _P4(m | 26, n)
    return _P8(m | 27, n)


def _e_none(v, o, d):
    o.append(b"\xf6")


def _e_bool(v, o, d):
    o.append(b"\xf5" if v else b"\xf4")


def _e_int(v, o, d):
    if 0 <= v < 24:
        o.append(_SMALL[v])
    elif v >= 0:
        if v <= _I64:
            o.append(_head(0, v))
        else:
            b = int(v).to_bytes((v.bit_length() + 7) // 8, "big")
            o += (b"\xc2", _head(0x40, len(b)), b)
    else:
        n = -1 - v
        if n <= _I64:
            o.append(_head(0x20, n))
        else:
            b = n.to_bytes((n.bit_length() + 7) // 8, "big")
            o += (b"\xc3", _head(0x40, len(b)), b)


def _e_float(v, o, d):
    o.append(_PD(0xFB, v) if v == v else _NAN)


def _e_complex(v, o, d):
    r, i = v.real, v.imag
    o += (b"\xd9\x9c\x43\x82", _PD(0xFB, r) if r == r else _NAN, _PD(0xFB, i) if i == i else _NAN)


def _e_str(v, o, d):
    b = v.encode("utf-8")
    o += (_head(0x60, len(b)), b)


def _e_bytes(v, o, d):
    o += (_head(0x40, len(v)), v)


def _e_view(v, o, d):
    v = v.cast("B") if v.c_contiguous else memoryview(v.tobytes())
    o += (_head(0x40, len(v)), v)


def _e_seq(v, o, d, m=0x80):
    if d >= MAX_DEPTH:
        raise DumpError("value nested deeper than %d levels" % MAX_DEPTH)
    o.append(_head(m, len(v)))
    d += 1
    for x in v:
        f = _ENC.get(type(x)) or _lookup(x)
        f(x, o, d)


def _e_tuple(v, o, d):
    o.append(b"\xd9\x9c\x41")
    _e_seq(v, o, d + 1)


def _e_set(v, o, d):
    o.append(b"\xd9\x01\x02")
    _e_seq(v, o, d + 1)


def _e_frozenset(v, o, d):
    o.append(b"\xd9\x9c\x42")
    _e_seq(v, o, d + 1)


def _e_dict(v, o, d):
    if d >= MAX_DEPTH:
        raise DumpError("value nested deeper than %d levels" % MAX_DEPTH)
    o.append(_head(0xA0, len(v)))
    d += 1
    g = _ENC.get
    for k, x in v.items():
        f = g(type(k)) or _lookup(k)
        f(k, o, d)
        f = g(type(x)) or _lookup(x)
        f(x, o, d)


def _e_channel(v, o, d):
    o += (b"\xd9\x9c\x44", _head(0, v.id))


def _lookup(v):
    for t, f in _BASES:
        if isinstance(v, t):
            _ENC[type(v)] = f
            return f
    raise DumpError(  # execnet's words first: code matches "can't serialize"
        "can't serialize %r: not sendable over a channel (supported: None, bool, int, "
        "float, complex, bytes, str, list, tuple, dict, set, frozenset, Channel)"
        % (type(v),)
    )


def dumps(v):
    """Encode one value to CBOR bytes; raises DumpError for unsupported types."""
    o = []
    (_ENC.get(type(v)) or _lookup(v))(v, o, 0)
    return b"".join(o)


_TUPLE = [b"\xd9\x9c\x41" + _SMALL[0x80 | n] for n in range(24)]


def _quick(v):
    """dumps(v) for the commonest small items -- an int, a str, a short tuple of ints
    in [0, 65535] and short strs -- without dumps' dispatch per value (half of its cost for
    (i, 'ab')); None for anything else."""
    t = type(v)
    if t is int:
        if 0 <= v < 24:
            return _SMALL[v]
        if -_I64 - 1 <= v <= _I64:
            return _head(0, v) if v >= 0 else _head(0x20, -1 - v)
    elif t is tuple:
        if len(v) < 24:
            r = _TUPLE[len(v)]  # bytes +=: cheaper than a list and a join at this size
            for x in v:
                t = type(x)
                if t is int and 0 <= x < 0x10000:
                    r += _SMALL[x] if x < 24 else _P1(24, x) if x < 256 else _P2(25, x)
                elif t is str and len(x) < 256:
                    x = x.encode("utf-8")
                    r += _head(0x60, len(x)) + x
                else:
                    return None
            return r
    elif t is str:
        v = v.encode("utf-8")
        return _head(0x60, len(v)) + v


def _arg(b, p):
    a = b[p] & 31
    if a < 24:
        return a, p + 1
    if a == 24:
        return b[p + 1], p + 2
    if a == 25:
        return _U2(b, p + 1)[0], p + 3
    if a == 26:
        return _U4(b, p + 1)[0], p + 5
    if a == 27:
        return _U8(b, p + 1)[0], p + 9
    raise LoadError("indefinite length or reserved head 0x%02x" % b[p])


def _d_uint(b, p, d, x):
    c = b[p]  # values below 24 went to _d_small
    if c == 0x18:
        return b[p + 1], p + 2
    if c == 0x19:
        return _U2(b, p + 1)[0], p + 3
    return _arg(b, p)


def _d_nint(b, p, d, x):
    n, p = _arg(b, p)
    return -1 - n, p


def _d_bytes(b, p, d, x):
    n, p = _arg(b, p)
    e = p + n
    if e > len(b):
        raise LoadError("truncated byte string")
    # one copy: slicing a bytearray and then bytes() would copy twice
    return (b[p:e] if type(b) is bytes else bytes(memoryview(b)[p:e])), e


def _d_str(b, p, d, x):
    n = b[p] - 0x60
    if n < 24:
        p += 1
    else:
        n, p = _arg(b, p)
    e = p + n
    if e > len(b):
        raise LoadError("truncated text string")
    try:
        return b[p:e].decode("utf-8"), e
    except AttributeError:  # a memoryview (big items, Gateway._load)
        return str(b[p:e], "utf-8"), e


def _d_items(b, p, d, x):
    n, p = _arg(b, p)
    if n > len(b) - p:
        raise LoadError("truncated array")
    d += 1
    if d > MAX_DEPTH:
        raise LoadError("nesting deeper than %d" % MAX_DEPTH)
    r = []
    a = r.append
    for _ in range(n):
        v, p = _DEC[b[p]](b, p, d, x)
        a(v)
    return r, p


def _d_map(b, p, d, x):
    n, p = _arg(b, p)
    if n * 2 > len(b) - p:
        raise LoadError("truncated map")
    d += 1
    if d > MAX_DEPTH:
        raise LoadError("nesting deeper than %d" % MAX_DEPTH)
    r = {}
    for _ in range(n):
        k, p = _DEC[b[p]](b, p, d, x)
        v, p = _DEC[b[p]](b, p, d, x)
        try:
            r[k] = v
        except TypeError:
            x.append("dict key of type %r" % type(k).__name__)
    return r, p


def _mkset(t, items, x):
    try:
        return t(items)
    except TypeError:
        for i in items:
            try:
                hash(i)
            except TypeError:
                x.append("%s member of type %r" % (t.__name__, type(i).__name__))
                break


def _d_tag(b, p, d, x):
    t, p = _arg(b, p)
    d += 1
    if d > MAX_DEPTH:
        raise LoadError("nesting deeper than %d" % MAX_DEPTH)
    m = b[p] >> 5
    if t == T_TUPLE and m == 4:
        v, p = _d_items(b, p, d, x)
        return tuple(v), p
    if t == T_SET and m == 4:
        v, p = _d_items(b, p, d, x)
        return _mkset(set, v, x), p
    if t == T_FROZENSET and m == 4:
        v, p = _d_items(b, p, d, x)
        return _mkset(frozenset, v, x), p
    if t in (2, 3) and m == 2:
        v, p = _d_bytes(b, p, d, x)
        v = int.from_bytes(v, "big")
        return (v if t == 2 else -1 - v), p
    if t == T_COMPLEX and b[p] == 0x82 and b[p + 1] in _FLOATS:
        if d + 1 > MAX_DEPTH:  # the [re, im] array is a level too (protocol 7.1)
            raise LoadError("nesting deeper than %d" % MAX_DEPTH)
        r, p = _DEC[b[p + 1]](b, p + 1, d, x)
        if b[p] in _FLOATS:
            i, p = _DEC[b[p]](b, p, d, x)
            return complex(r, i), p
    if t == T_CHANNEL and m == 0:
        n, p = _arg(b, p)
        if n > 0xFFFFFFFF or x[0] is None:
            raise LoadError("bad channel reference %d" % n)
        return x[0](n), p
    raise LoadError("unknown or malformed tag %d" % t)


def _d_tag2(b, p, d, x):
    # 0xD9 (two-byte tag): a short tuple decoded inline, the most common tagged value
    # (same depth rules as _d_tag + _d_items); anything else goes the general way
    c = b[p + 3]
    if b[p + 1] == 0x9C and b[p + 2] == 0x41 and 0x80 <= c < 0x98 and d + 2 <= MAX_DEPTH:
        d += 2
        p += 4
        r = []
        a = r.append
        for _ in range(c - 0x80):
            c = b[p]
            if c < 24:
                a(c)
                p += 1
            else:
                v, p = _DEC[c](b, p, d, x)
                a(v)
        return tuple(r), p
    return _d_tag(b, p, d, x)


def _d_simple(b, p, d, x):
    c = b[p]
    if c == 0xFB:
        return _UD(b, p + 1)[0], p + 9
    if c == 0xF6:
        return None, p + 1
    if c == 0xF5:
        return True, p + 1
    if c == 0xF4:
        return False, p + 1
    if c == 0xFA:
        return _UF(b, p + 1)[0], p + 5
    if c == 0xF9:
        return _UH(b, p + 1)[0], p + 3
    raise LoadError("unsupported simple value 0x%02x" % c)


def _d_small(b, p, d, x):
    return b[p], p + 1


_FLOATS = (0xF9, 0xFA, 0xFB)
_DEC = [_d_uint, _d_nint, _d_bytes, _d_str, _d_items, _d_map, _d_tag, _d_simple]
_DEC = [_d_small if i < 24 else _DEC[i >> 5] for i in range(256)]
_DEC[0xD9] = _d_tag2


def loads(b, chan=None):
    """Decode exactly one CBOR value. chan(id) resolves channel references."""
    x = [chan]  # decoding context: x[0] resolves channels, errors are appended
    try:
        v, p = _DEC[b[0]](b, 0, 0, x)
    except LoadError:
        raise
    except (IndexError, struct.error):
        raise LoadError("truncated item")
    except UnicodeDecodeError:
        raise LoadError("text string is not valid UTF-8")
    if p != len(b):
        raise LoadError("%d trailing bytes after item" % (len(b) - p))
    if len(x) > 1:
        raise Unrepresentable("received a value Python cannot represent: " + x[1])
    return v


# ------------------------------------------------------------------ framing
HELLO, EXEC, DATA, DATA_MORE, CLOSE, LAST_MESSAGE, WINDOW = 1, 2, 3, 4, 5, 6, 7
TERMINATE, STATUS_REQUEST, STATUS_REPLY, OUTPUT = 8, 9, 10, 11
_HDR = struct.Struct(">BII")
_hdr = _HDR.pack
_WRITEV = getattr(os, "writev", None)
_PYPY = sys.implementation.name == "pypy"
IDLE = 10.0  # seconds an executor thread waits for another EXEC before it ends
HOT = 0.002  # seconds the reader thread leaves the stream to a thread likely to receive again
GRACE = 0.05  # seconds a busy main thread has after TERMINATE before it is interrupted
BIG = 1 << 16  # DATA payloads from this size on are not copied out of the read buffers
SPARE = 1 << 23  # bytes of an item-assembly buffer kept for the next item (Gateway._free)
READ = 1 << 18  # bytes read at most beyond what a frame needs (Reader._fill)


class ProtocolError(Exception):
    pass


class _Cond(object):
    """threading.Condition on a _thread lock (waiter clean-up on exceptions included):
    the worker does not import threading (see _MainFinder)."""

    __slots__ = ("_lock", "_waiters")

    def __init__(self, lock):
        self._lock, self._waiters = lock, deque()

    def wait(self, timeout=None):
        if not self._lock.locked():
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _thread.allocate_lock()
        waiter.acquire()
        self._waiters.append(waiter)
        self._lock.release()
        got = False
        try:  # the lock is taken back whatever happens (KeyboardInterrupt...)
            if timeout is None:
                waiter.acquire()
                got = True
            elif timeout > 0:
                got = waiter.acquire(True, timeout)
            else:
                got = waiter.acquire(False)
            return got
        finally:
            self._lock.acquire()
            if not got:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def wait_for(self, pred, timeout=None):
        end, left = None, timeout
        ok = pred()
        while not ok:
            if left is not None:
                if end is None:
                    end = time.monotonic() + left
                else:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
            self.wait(left)
            ok = pred()
        return ok

    def notify(self, n=1):
        if not self._lock.locked():
            raise RuntimeError("cannot notify on un-acquired lock")
        waiters = self._waiters
        while waiters and n > 0:
            waiter = waiters[0]
            try:
                waiter.release()
            except RuntimeError:
                pass  # released by a notify interrupted before it removed it (gh-92530)
            else:
                n -= 1
            try:
                waiters.remove(waiter)
            except ValueError:
                pass

    def notify_all(self):
        if self._waiters:
            self.notify(len(self._waiters))
        elif not self._lock.locked():
            raise RuntimeError("cannot notify on un-acquired lock")


def frame(kind, cid, payload=b""):
    return _hdr(kind, cid, len(payload)) + payload


class Reader(object):
    """Frames from a file descriptor, with large readinto into one reusable buffer.

    A DATA/DATA_MORE payload of BIG bytes or more is not copied into a bytes object:
    it comes as a memoryview, valid until the next read -- of this buffer, or of the
    buffer sink(kind, channel, n) returned for it (the item being assembled, which the
    part not buffered yet is read into directly). Fresh large buffers per frame cost
    page faults: the allocator returns freed ones to the kernel (issue 16)."""

    sink = None

    def __init__(self, fd, pre=b"", size=1 << 12):
        import io

        self.f = io.FileIO(fd, "rb", closefd=False)
        # small at first: a bytearray is zeroed, and each page of it is a page fault
        # in every worker start (16 for 64 KiB: ~4 % of a forked worker's); _fill
        # grows it when the stream outgrows it
        self.buf = bytearray(max(size, len(pre)))
        self.buf[: len(pre)] = pre
        self.mv = memoryview(self.buf)
        self.s, self.e = 0, len(pre)

    def _fill(self, need):
        while self.e - self.s < need:
            if len(self.buf) - self.s < need:
                data = bytes(self.mv[self.s : self.e])
                # a frame larger than the buffer, or the first time the stream
                # filled the small first one: a busy stream gets 64 KiB reads
                size = need + (1 << 16) if len(self.buf) < need else max(len(self.buf), 1 << 16)
                if size != len(self.buf):
                    self.mv.release()
                    self.buf = bytearray(size)
                    self.mv = memoryview(self.buf)
                self.buf[: len(data)] = data
                self.s, self.e = 0, len(data)
            # at most READ beyond the need: a large payload after this frame is left
            # in the pipe for sink's buffer, not copied through ours
            e = self.e
            n = self.f.readinto(self.mv[e : e + max(need - e + self.s, READ)])
            if not n:
                return False
            self.e += n
        return True

    def buffered(self):
        return self.e - self.s

    def buffered_frame(self, max_frame):
        """(kind, channel, payload) if the next frame is buffered whole, else None."""
        s = self.s
        if self.e - s >= 9:
            kind, cid, n = _HDR.unpack_from(self.buf, s)
            if n <= max_frame and self.e - s - 9 >= n:
                self.s = s = s + 9
                if n >= BIG and (kind == DATA or kind == DATA_MORE):
                    self.s += n
                    if self.sink:
                        d = self.sink(kind, cid, n)
                        if d is not None:
                            d[:] = self.mv[s : s + n]
                            return kind, cid, d
                    return kind, cid, self.mv[s : s + n]
                self.s = s + n
                return kind, cid, bytes(self.mv[s : s + n])

    def read(self, max_frame):
        """Return (kind, channel, payload) or None at a clean end of stream."""
        f = self.buffered_frame(max_frame)
        if f:
            return f
        if not self._fill(9):
            if self.e != self.s:
                raise ProtocolError("truncated frame header")
            return None
        kind, cid, n = _HDR.unpack_from(self.buf, self.s)
        if n > max_frame:
            raise ProtocolError("frame of %d bytes exceeds max_frame %d" % (n, max_frame))
        if n >= BIG and (kind == DATA or kind == DATA_MORE) and self.sink:
            d = self.sink(kind, cid, n)
            if d is not None:
                s = self.s + 9
                k = min(self.e - s, n)
                d[:k] = self.mv[s : s + k]
                self.s = s + k
                while k < n:
                    r = self.f.readinto(d[k:])
                    if not r:
                        raise ProtocolError("truncated frame")
                    k += r
                return kind, cid, d
        if not self._fill(9 + n):
            raise ProtocolError("truncated frame")
        s = self.s + 9
        self.s = s + n
        if n >= BIG and (kind == DATA or kind == DATA_MORE):
            return kind, cid, self.mv[s : s + n]
        return kind, cid, bytes(self.mv[s : s + n])


# ------------------------------------------------------------------ channels
class RemoteError(Exception):
    """The peer closed the channel with an error (its formatted traceback)."""

    def __init__(self, formatted):
        Exception.__init__(self, formatted)
        self.formatted = formatted

    def __str__(self):
        return self.formatted


class TimeoutError(IOError):
    """receive()/waitclose() timed out."""


_NOENDMARKER = object()
# A callback runs on the thread that reads the gateway's input (_tl.rd: the reader
# thread, or a receive() leading): a wait there for more input would never end
_FOREVER = ("would wait forever: %s on %r in a channel callback, which runs on the "
            "thread that reads this gateway's input")
_NOITEM = object()  # Gateway._lead: no item handed back

# The channel lifecycle (protocol.md section 6.1) as one table, the literal mirror of
# core/src/lifecycle.rs: state "local/remote" -> the outcome of each event of
# _LIFE_EVENTS: the next state, _R (a local command that is refused) or _V (a frame
# the peer may not send: protocol violation). bootstrap/tests/test_channel_policy.py
# checks it against core/tests/vectors/channel_policy.json, generated from the core's
# table: change both, or neither. Only _life changes a channel's state.
_R, _V = "refused", "violation"
_LIFE_EVENTS = dict((e, i) for i, e in enumerate((
    "send", "half_close", "close", "last_transmitted", "close_transmitted",
    "recv_data", "recv_last", "recv_close")))
_LIFECYCLE = {
    "open/open": ("open/open", "last_queued/open", "close_queued/open", _R, _R, "open/open", "open/last", "close_queued/closed"),
    "open/last": ("open/last", "last_queued/last", "close_queued/last", _R, _R, _V, _V, "close_queued/closed"),
    "open/closed": (_R, _R, _R, _R, _R, _V, _V, _V),
    "last_queued/open": (_R, _R, "close_queued/open", "last_sent/open", _R, "last_queued/open", "last_queued/last", "close_queued/closed"),
    "last_queued/last": (_R, _R, "close_queued/last", "last_sent/last", _R, _V, _V, "close_queued/closed"),
    "last_queued/closed": (_R, _R, _R, _R, _R, _V, _V, _V),
    "last_sent/open": (_R, _R, "close_queued/open", _R, _R, "last_sent/open", "last_sent/last", "close_queued/closed"),
    "last_sent/last": (_R, _R, "close_queued/last", _R, _R, _V, _V, "close_queued/closed"),
    "last_sent/closed": (_R, _R, _R, _R, _R, _V, _V, _V),
    "close_queued/open": (_R, _R, _R, _R, "close_sent/open", "close_queued/open", "close_queued/open", "close_queued/closed"),
    "close_queued/last": (_R, _R, _R, _R, "close_sent/last", _V, _V, "close_queued/closed"),
    "close_queued/closed": (_R, _R, _R, _R, "close_sent/closed", _V, _V, _V),
    "close_sent/open": (_R, _R, _R, _R, _R, "close_sent/open", "close_sent/open", "close_sent/closed"),
    "close_sent/last": (_R, _R, _R, _R, _R, _V, _V, "close_sent/closed"),
    "close_sent/closed": (_R, _R, _R, _R, _R, _V, _V, _V),
}


# The window policy's constants (protocol.md section 6.2; core/src/window.rs, shared
# through core/tests/vectors/channel_policy.json); its rules are Gateway._w_*.
GRANT_DIVISOR = 2  # owed credit goes back once window // 2 is owed ...
EAGER_DIVISOR = 16  # ... or from window // 16 where a thread blocks or sends anyway


def _w_thresholds(window):
    # (_half, _eager) of a window: the grant thresholds, at least one byte each
    return max(1, window // GRANT_DIVISOR), max(1, window // EAGER_DIVISOR)


def _life(ch, event):
    # under _lock: applies a lifecycle event to ch and returns the state before it;
    # None when the table refuses it (a local command); ProtocolError for a violation.
    # The flags the hot paths read are set from the state here, and only here (they
    # never go back: every path through the table only moves forward)
    st = ch._st
    nxt = _LIFECYCLE[st][_LIFE_EVENTS[event]]
    if nxt == _R:
        return None
    if nxt == _V:
        raise ProtocolError("%s on channel %d in state %s" % (event, ch.id, st))
    ch._st = nxt
    local, _, remote = nxt.partition("/")
    if local[:5] == "close":
        ch._sc = True  # closing: this side closed or answered the peer's CLOSE
    elif local[:4] == "last":
        ch._sl = True
    if remote == "closed":
        ch._rc = True
    elif remote == "last":
        ch._rl = True
    return st


class Channel(object):
    """One end of a channel (execnet-compatible remote API)."""

    RemoteError = RemoteError
    TimeoutError = TimeoutError
    _executing = False
    _h = None  # weak reference to the handle remote code holds (Gateway._handle)
    _sl = False  # LAST_MESSAGE queued or sent
    _st = "open/open"  # lifecycle state (_LIFECYCLE); _sc/_sl/_rc/_rl follow it (_life)

    def __init__(self, gw, id):
        self.gateway = gw
        self.id = id
        self._cv = _Cond(gw._lock) if gw else None
        self._items = deque()
        self._cb = None
        self._credit = self._rwin = gw.window if gw else 0
        self._owed = 0
        self._held = 0  # DATA_MORE credit held while items wait (protocol §6.2)
        self._out = deque()
        self._queued = self._sent = self._w = self._fed = 0
        self._sc = self._rc = self._rl = self._ended = self._fired = False
        self._err = None
        if gw is not None and gw._threaded:
            self.send = self._send_t
        self._more = None  # bytes of the item being assembled (DATA_MORE) so far
        self._asm = None  # its buffer (Gateway._room)

    def __repr__(self):
        return "<Channel id=%d %s>" % (self.id, "closed" if self.isclosed() else "open")

    def isclosed(self):
        return self._sc or self._rc

    def send(self, item):
        """Send one value; blocks while the channel is out of credit."""
        data = _quick(item) or dumps(item)
        gw = self.gateway
        if gw._drops:
            gw._reap()
        n = len(data)
        if n > gw.max_item:
            raise ValueError("item of %d bytes exceeds max_item %d" % (n, gw.max_item))
        # bare acquire/release (try/finally is free): "with" costs twice as much, and
        # a small send is mostly such overhead (thread mode uses _send_t instead)
        wl, lk = gw._wlock, gw._lock
        wl.acquire()
        try:
            lk.acquire()
            try:
                if self._sc or self._rc or gw._dead:
                    raise IOError("cannot send to %r" % (self,))
                fast = not self._out and n <= self._credit and n <= gw.max_frame
                if fast:
                    # fast path: nothing queued, enough credit: one frame, one write
                    self._credit -= n
                    # owed credit rides along from _eager up (Gateway._w_early; its
                    # threshold is checked here first: no call per small send)
                    w = gw._w_early(self) if self._owed >= gw._eager else None
                else:
                    self._out.append([DATA, memoryview(data), 0])
                    self._queued += 1
                    mine = self._queued
            finally:
                lk.release()
            if fast:
                h = _hdr(DATA, self.id, n)
                if n >= 65536:
                    return gw._writev([w or b"", h, data])
                data = w + h + data if w else h + data
                try:
                    k = os.write(gw._outfd, data)
                except (OSError, TypeError, ValueError):
                    k = 0  # nothing written: _writev says why (terminated, connection lost)
                if k < len(data):
                    gw._writev([memoryview(data)[k:]])
                return
        finally:
            wl.release()
        gw._pump(self)
        self._wait_sent(mine)

    def _send_t(self, item):
        # send() in thread mode, where _stop_user may raise KeyboardInterrupt in this
        # thread at any bytecode: a bare acquire could then leak its lock, so every
        # lock here is taken with "with", and the item always goes through _out
        data = _quick(item) or dumps(item)
        gw = self.gateway
        if gw._drops:
            gw._reap()
        if len(data) > gw.max_item:
            raise ValueError("item of %d bytes exceeds max_item %d" % (len(data), gw.max_item))
        with gw._lock:
            if self._sc or self._rc or gw._dead:
                raise IOError("cannot send to %r" % (self,))
            self._out.append([DATA, memoryview(data), 0])
            self._queued += 1
            mine = self._queued
        gw._pump(self)
        self._wait_sent(mine)

    def _wait_sent(self, mine):
        # until the item numbered mine is written (credit permitting)
        gw = self.gateway
        if getattr(_tl, "nb", False):
            return  # reader thread / callbacks never wait for credit: the item stays queued
        while True:
            with gw._lock:
                while self._sent < mine:
                    if self._rc or gw._dead:
                        raise IOError("cannot send to %r: closed by the peer" % (self,))
                    if self._credit > 0:
                        break
                    gw._wait(self._cv, None)
                else:
                    return
            gw._pump(self)

    def receive(self, timeout=None):
        """Next item; EOFError at end, RemoteError (once) if closed with an error."""
        gw = self.gateway
        if gw._drops:  # before a wait: a channel dropped just now is closed at once
            gw._reap()
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            w = None
            got = lead = False
            with gw._lock:
                if self._cb is not None:
                    raise IOError("cannot receive(), channel has receiver callback")
                if self._items:
                    v, n = self._items.popleft()
                    got = True
                    w = gw._w_taken(self, n)
                elif self._ended:
                    e, self._err = self._err, None
                    if e is not None:
                        raise self.RemoteError(e)
                    raise EOFError()
                elif self._owed >= gw._eager:
                    w = gw._w_early(self)  # return sizable credit before blocking
                elif (end is None and not gw._leader and not gw._bgread and gw._stop is None
                      and not getattr(_tl, "nb", False)):
                    gw._leader = lead = True  # nobody reads: read the stream ourselves
                    gw._mine = self
                else:
                    if getattr(_tl, "rd", False):
                        raise IOError(_FOREVER % ("receive()", self))
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        raise self.TimeoutError("no item after %r seconds" % timeout)
                    self._w += 1
                    try:
                        gw._wait(self._cv, left)
                    finally:
                        self._w -= 1
                        if self._fed:
                            self._fed -= 1
                            gw._fed -= 1
                        gw._woke()
                    continue
            if w:
                gw._send_frames([w])
            if got:
                return v
            if lead:
                v = gw._lead(self)
                if v is not _NOITEM:
                    return v  # fast path: our item, decoded by this thread, never queued

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.receive()
        except EOFError:
            raise StopIteration

    next = __next__

    def waitclose(self, timeout=None):
        """Wait until the channel ended; raises the pending RemoteError (once)."""
        gw = self.gateway
        if gw._drops:
            gw._reap()
        with gw._lock:
            if not self._ended and getattr(_tl, "rd", False):
                raise IOError(_FOREVER % ("waitclose()", self))
            if not gw._wait(self._cv, timeout, lambda: self._ended):
                raise self.TimeoutError("timeout after %r seconds" % timeout)
            e, self._err = self._err, None
        if e is not None:
            raise self.RemoteError(e)

    def close(self, error=None):
        """Close (optionally with an error text); not allowed on the exec's own channel."""
        if self._executing:
            raise IOError("cannot explicitly close channel within remote_exec")
        self.gateway._close(self, error)

    def setcallback(self, callback, endmarker=_NOENDMARKER):
        """Deliver items to callback(item) in the reader thread; endmarker at the end."""
        gw = self.gateway
        with gw._rlock:
            with gw._lock:
                if self._cb is not None:
                    raise IOError("%r has callback already registered" % (self,))
                items = list(self._items)
                self._items.clear()
                self._cb = (callback, endmarker)
            old = getattr(_tl, "nb", False)
            _tl.nb = True
            try:
                for v, n in items:
                    callback(v)
                    gw._consumed(self, n)
            finally:
                _tl.nb = old
            with gw._lock:
                fire = self._fire()
            if fire:
                fire()

    def _fire(self):
        # under lock, once the channel ended: the endmarker call to make, if any
        if self._ended and self._cb and not self._fired:
            self._fired = True
            cb, m = self._cb
            if m is not _NOENDMARKER:
                return lambda: cb(m)

    def makefile(self, mode="w", proxyclose=False):
        if mode == "w":
            return ChannelFileWrite(self, proxyclose)
        if mode == "r":
            return ChannelFileRead(self, proxyclose)
        raise ValueError("mode %r not available" % (mode,))


class _Handle(object):
    """What remote code holds of a channel it created or received: the Channel in
    Gateway._chans, seen through its bound methods (no call of ours in between), so that
    _chans does not keep this alive: when it goes, the channel is closed (_handle)."""

    __slots__ = ("gateway", "id", "send", "receive", "waitclose", "close", "setcallback",
                 "isclosed", "_c", "__weakref__")
    RemoteError = RemoteError
    TimeoutError = TimeoutError

    def __init__(self, c):
        self._c, self.gateway, self.id = c, c.gateway, c.id
        self.send, self.receive, self.waitclose = c.send, c.receive, c.waitclose
        self.close, self.setcallback, self.isclosed = c.close, c.setcallback, c.isclosed

    def __repr__(self):
        return repr(self._c)

    # isinstance(received, type(channel)) holds, as in execnet (isinstance falls back to
    # __class__); type() still tells the encoder it is a handle
    __class__ = property(lambda self: Channel)

    __iter__, __next__, next, makefile = (
        Channel.__iter__, Channel.__next__, Channel.__next__, Channel.makefile)


class ChannelFile(object):
    def __init__(self, channel, proxyclose=True):
        self.channel = channel
        self._proxyclose = proxyclose

    def isatty(self):
        return False

    def close(self):
        if self._proxyclose:
            self.channel.close()


class ChannelFileWrite(ChannelFile):
    def write(self, out):
        self.channel.send(out)

    def flush(self):
        pass


class ChannelFileRead(ChannelFile):
    _buffer = ""

    def read(self, n=-1):
        try:
            while n < 0 or len(self._buffer) < n:
                self._buffer += self.channel.receive()
        except EOFError:
            self.close()
        if n < 0:
            n = len(self._buffer)
        r, self._buffer = self._buffer[:n], self._buffer[n:]
        return r

    def readline(self):
        while True:
            i = self._buffer.find("\n")
            if i >= 0:
                return self.read(i + 1)
            try:
                self._buffer += self.channel.receive()
            except EOFError:
                return self.read(len(self._buffer))


_tl = _thread._local()
_ENC = {
    type(None): _e_none, bool: _e_bool, int: _e_int, float: _e_float, complex: _e_complex,
    str: _e_str, bytes: _e_bytes, bytearray: _e_bytes, memoryview: _e_view, list: _e_seq,
    tuple: _e_tuple, dict: _e_dict, set: _e_set, frozenset: _e_frozenset, Channel: _e_channel,
    _Handle: _e_channel,
}
_BASES = [(t, _ENC[t]) for t in (bool, int, float, complex, str, bytes, bytearray, memoryview,
                                 dict, list, tuple, set, frozenset, Channel)]


# ------------------------------------------------------------------ gateway
class _RInfo(object):
    pass


def _text(s):
    # CBOR text for error messages: never fails (lone surrogates are replaced)
    b = str(s).encode("utf-8", "replace")
    return _head(0x60, len(b)) + b

_errfd = 2  # the original stderr (dup'ed in _main): fatal messages and traces
_tfd = None  # trace destination, when EXECNET_DEBUG or the host's debug option is set


def _trace(*a):
    if _tfd is not None:
        line = "[execnet-worker %d %.6f] %s\n" % (os.getpid(), time.time(), " ".join(map(str, a)))
        try:
            os.write(_tfd, line.encode("utf-8", "replace"))
        except OSError:
            pass


def _tb(e, skip=0):
    try:
        import traceback

        tb = e.__traceback__
        for _ in range(skip):
            tb = tb.tb_next or tb
        return "".join(traceback.format_exception(type(e), e, tb))
    except Exception:
        return "%s: %s" % (type(e).__name__, e)


class Gateway(object):
    """The worker's side of a session: reader thread, writer, channels, executions."""

    def __init__(self, reader, outfd, hello, threaded=False):
        self._reader, self._outfd = reader, outfd
        self._threaded = threaded  # serve_thread: nothing process-wide (contract T)
        self._ex = None  # the execnet compatibility module, from the first exec on
        self._infd = self._quiet = None  # thread mode: our input fd; the writing shutdown
        self._rfin = False  # the reader thread has finished (_read_loop)
        self._spare = self._placed = None  # big items: Gateway._room, _sink
        if reader is not None:
            reader.sink = self._sink
        self._user = {}  # channel -> thread ident of executions in remote code (_run)
        self._lock = _thread.allocate_lock()  # all channel/session state
        self._wlock = _thread.allocate_lock()  # frame writes (taken before _lock, never after)
        self._rlock = _thread.RLock()  # item delivery to callbacks vs setcallback
        self._olock = _thread.allocate_lock()  # output forwarding
        self._execcv = _Cond(self._lock)
        self._donecv = _Cond(self._lock)
        self._chans, self._closed, self._owing, self._running = {}, set(), set(), {}
        self._execq = deque()
        self._next, self._nexec, self._ofds = 2, 0, {}
        self._dead = self._main_idle = self._main_busy = False
        # leader/follower: a thread waiting in receive() reads the stream itself when
        # nobody else does, saving the thread hand-off; the reader thread steps back
        # for HOT seconds after such a hand-off could have been avoided.
        self._bgcv = _Cond(self._lock)
        self._leader = self._bgread = self._need = False
        self._waiting, self._hot, self._stop = 0, 0.0, None
        # the host's stream ended without TERMINATE (the host died, or its pipe
        # broke): nobody will kill our process group after we exit
        self._orphaned = False
        # receivers among _waiting that were already handed an item but are not awake
        # yet: they need no reading, and counting them kept the reader thread reading
        # ahead of a ping-pong receiver (a thread hand-off per item instead of leading)
        self._fed = 0
        # the leader's channel, and its item handed straight back by _data (not queued)
        self._mine, self._handed = None, _NOITEM
        self._drops = deque()  # ids of channels whose handles were dropped (_handle)
        # wakes the reaper thread (_dropped); held while there is nothing to reap
        self._rsig, self._reaper = _thread.allocate_lock(), False
        self._rsig.acquire()
        self._codes = {}  # source -> code: the same snippet is often executed many times
        # executor threads waiting for a task ([task, lock] each); the wake-up chain;
        # EXECs waiting for a thread (an executor that finishes takes the next one
        # instead of idling while a new thread starts for it: a burst of short execs
        # then runs on a few threads, not on one new thread each)
        self._idle, self._wakeq, self._waking = [], deque(), False
        self._taskq = deque()
        self.id = "<worker>"
        if not isinstance(hello, dict) or hello.get("version") != 1:
            v = hello.get("version") if isinstance(hello, dict) else hello
            raise ProtocolError("version mismatch: ours 1, theirs %r" % (v,))
        self.window = hello.get("window", 4194304)
        self.max_frame = hello.get("max_frame", 1048576)
        self.max_item = hello.get("max_item", 1073741824)
        for k in ("window", "max_frame", "max_item"):
            v = getattr(self, k)
            if type(v) is not int or not 0 < v <= (0xFFFFFFFF if k != "max_item" else 1 << 63):
                raise ProtocolError("bad %s %r in host HELLO" % (k, v))
        self._half, self._eager = _w_thresholds(self.window)
        opts = hello.get("options") or {}
        self._model = opts.get("execmodel") or "thread"
        self.output = opts.get("output") or "inherit"
        # "host": the host reads our stderr pipe itself and forwards it (a local
        # process): fd 2 stays on it, so nothing written there is lost if we die;
        # stdout "host": so does our fd 1 (a fork server's child: _main's stdout)
        self._stderr_host = opts.get("stderr") == "host"
        self._stdout_host = opts.get("stdout") == "host"
        if self._model not in ("thread", "main_thread_only"):
            raise ProtocolError("unsupported execmodel %r" % (self._model,))
        if self.output not in ("forward", "inherit", "discard"):
            raise ProtocolError("unsupported output mode %r" % (self.output,))
        if opts.get("debug") and _tfd is None:
            globals()["_tfd"] = _errfd

    # -- public API seen by remote code (channel.gateway)
    def newchannel(self):
        """A new channel (even id); send it to the host inside any value."""
        with self._lock:
            if self._dead:
                raise IOError("gateway terminated")
            cid = self._next
            self._next += 2
            ch = self._chans[cid] = Channel(self, cid)
            return self._handle(ch)

    @property
    def execmodel(self):
        """execnet's ExecModel object of this gateway (backend, RLock(), Event(), start...)."""
        return _execnet().gateway_base.get_execmodel(self._model)

    def _rinfo(self):
        """Remote info like execnet's: executable, version_info, platform, cwd, pid, ..."""
        r = _RInfo()
        r.__dict__.update(self._info)
        return r

    # -- writing
    def _writev(self, parts):
        fd = self._outfd
        if fd is None or (self._quiet is not None and self._quiet != _thread.get_ident()):
            # after _stop_user only the shutdown writes: a KeyboardInterrupt raised
            # between the writes of a frame would leave half of it in the stream
            raise IOError("cannot send: the gateway has terminated")
        try:
            if len(parts) == 1:  # fast path: one buffer, usually written whole
                n = os.write(fd, parts[0])
                parts = [memoryview(parts[0])[n:]] if n < len(parts[0]) else None
            while parts:
                if _WRITEV:
                    n = _WRITEV(fd, parts[:512])
                else:  # PyPy has no os.writev
                    if len(parts) > 1:
                        parts = [b"".join(parts)]
                    n = os.write(fd, parts[0])
                i = 0
                while i < len(parts) and n >= len(parts[i]):
                    n -= len(parts[i])
                    i += 1
                parts = parts[i:]
                if n:
                    parts[0] = memoryview(parts[0])[n:]
        except (OSError, ValueError) as e:
            raise IOError("cannot send (connection lost?): %s" % (e,))

    def _send_frames(self, parts):
        with self._wlock:
            self._writev(parts)

    # -- window policy (protocol.md section 6.2): every rule of the worker's receive
    # window is in these methods (and _w_thresholds), the worker's half of
    # core/src/window.rs; test_channel_policy.py replays the cases of
    # core/tests/vectors/channel_policy.json on them. Per channel: _owed, credit
    # consumed and not yet returned; _held, DATA_MORE credit held for the item being
    # reassembled while items wait; "waiting items" are ch._items.
    def _winframe(self, ch):
        # under _lock: a WINDOW frame returning the credit owed on ch (or None)
        n, ch._owed = ch._owed, 0
        self._owing.discard(ch)
        if ch._sc or not n:
            return None
        ch._rwin += n
        return frame(WINDOW, ch.id, _head(0, n))

    def _w_taken(self, ch, n):
        # under _lock: an item holding n credit was consumed (taken off ch._items
        # first): the WINDOW frame due now, or None
        ch._owed += n
        if ch._held and not ch._items:
            ch._owed += ch._held  # the last waiting item is consumed: release the held
            ch._held = 0
        return self._winframe(ch) if ch._owed >= self._half else None

    def _w_chunk(self, ch, n):
        # under _lock: a DATA_MORE chunk of n bytes was buffered: the WINDOW frame due
        if ch._items:
            # an item waits unconsumed: hold this chunk's credit with its item, so
            # unconsumed items stay within the window
            ch._held += n
            return None
        ch._owed += n  # the application keeps up: a big item flows through
        w = self._winframe(ch) if ch._owed >= self._half else None
        if ch._owed:
            self._owing.add(ch)
        return w

    def _w_complete(self, ch, n):
        # under _lock: an item completed with a last chunk of n bytes: the credit it
        # holds until consumed (with what was held for it)
        if ch._held:
            n += ch._held
            ch._held = 0
        return n

    def _w_early(self, ch):
        # under _lock: where a thread is about to block, or sends on ch anyway, owed
        # credit from _eager up goes back now (a sender is never stuck on less than
        # _eager: it has window - owed >= _half left once its queue is empty, and a
        # WINDOW frame per small item would cost both sides)
        return self._winframe(ch) if ch._owed >= self._eager else None

    def _consumed(self, ch, n):
        with self._lock:
            w = self._w_taken(ch, n)
            if ch._owed:
                self._owing.add(ch)
        if w:
            self._send_frames([w])

    def _pump(self, ch):
        """Write the channel's queued frames as far as its credit allows."""
        with self._wlock:
            if self._quiet is not None and self._quiet != _thread.get_ident():
                raise IOError("cannot send: the gateway has terminated")  # see _writev
            parts = []
            with self._lock:
                w = self._w_early(ch)
                if w:
                    parts.append(w)
                out = ch._out
                while out:
                    e = out[0]
                    if e[0] == DATA:
                        data, pos = e[1], e[2]
                        rest = len(data) - pos
                        n = min(rest, self.max_frame, ch._credit)
                        if n <= 0:
                            break
                        ch._credit -= n
                        parts += (_hdr(DATA if n == rest else DATA_MORE, ch.id, n), data[pos : pos + n])
                        if n < rest:
                            e[2] = pos + n
                            continue
                        ch._sent += 1
                        ch._cv.notify_all()
                    else:
                        _life(ch, "close_transmitted" if e[0] == CLOSE else "last_transmitted")
                        parts.append(e[1])
                    out.popleft()
            if parts:
                self._writev(parts)

    # -- channel state changes
    def _end(self, ch):
        # under _lock: the receiver sees end of channel after queued items
        if not ch._ended:
            ch._ended = True
            ch._cv.notify_all()
        return ch._fire()

    def _forget(self, ch):
        self._chans.pop(ch.id, None)
        self._owing.discard(ch)
        if ch.id & 1:
            self._closed.add(ch.id)

    def _close(self, ch, error=None):
        with self._lock:
            if _life(ch, "close") is None:
                return  # closed already
            ch._out.append([CLOSE, frame(CLOSE, ch.id, b"" if error is None else _text(error))])
            fire = self._end(ch)
        try:
            self._pump(ch)
        finally:
            if fire:
                fire()

    def _handle(self, ch):
        # under _lock: the object remote code gets for ch, one at a time. When the last
        # reference to it goes, the channel is closed, as by execnet's Channel.__del__:
        # the weakref callback only queues the id (lock-free) for _reap, because it
        # runs on any thread at any point, even while that thread holds _lock/_wlock.
        h = ch._h and ch._h()
        if h is None:
            h = _Handle(ch)
            ch._h = _wref(h, lambda r, cid=ch.id, drop=self._drops.append, wake=self._dropped:
                          (drop(cid), wake()))
        return h

    def _dropped(self):
        # weakref callback (any thread, any point): no lock taken. The reaper thread
        # closes the channel at once: a handle dropped by a thread of remote code that
        # then ends or idles was closed only when this side next read input or sent, so
        # the peer's waitclose() waited for unrelated traffic
        if not self._reaper:
            self._reaper = True  # a racing second start is harmless: both serve _rsig
            try:
                _thread.start_new_thread(self._reap_loop, ())
            except Exception:
                self._reaper = False  # interpreter shutting down: the next reap does it
        try:
            self._rsig.release()
        except Exception:
            pass  # released already: the reaper has not woken yet and will see this id

    def _reap_loop(self):
        sig = self._rsig
        while True:
            sig.acquire()
            if self._dead:
                try:
                    sig.release()  # wake a second reaper too (_dropped)
                except Exception:
                    pass
                return
            self._safe(self._reap)

    def _reap(self):
        # close the channels whose handles were dropped (no lock held): CLOSE, or
        # LAST_MESSAGE while a callback still consumes (protocol §6.1); CLOSE too if
        # the peer sent LAST_MESSAGE already (no item can flow either way then)
        while self._drops:
            try:
                cid = self._drops.popleft()
            except IndexError:  # another thread reaped it meanwhile
                return
            with self._lock:
                ch = self._chans.get(cid)
                if ch is None or ch._sc or ch._sl or ch._h() is not None:
                    continue  # closed already, or handed out again
                last = ch._cb is not None and not ch._rl
                if last:
                    if _life(ch, "half_close") is None:
                        continue
                    ch._out.append([LAST_MESSAGE, frame(LAST_MESSAGE, cid)])
            _trace("channel %d dropped: sending %s" % (cid, "LAST_MESSAGE" if last else "CLOSE"))
            try:
                if last:
                    self._pump(ch)
                else:
                    self._close(ch)
            except IOError:
                return  # the connection is gone: the session is ending anyway

    def _chanref(self, cid):
        # decoding a channel reference (reader thread)
        with self._lock:
            ch = self._chans.get(cid)
            if ch is None:
                if cid == 0 or (not cid & 1 and cid >= self._next):
                    raise LoadError("reference to unknown channel %d" % cid)
                ch = Channel(self, cid)
                if cid in self._closed or not cid & 1 or self._dead:
                    ch._st, ch._sc, ch._rc, ch._ended = "close_sent/closed", True, True, True
                    return ch
                self._chans[cid] = ch
            elif ch._sl:
                # dropped and half-closed: a stand-in that cannot send (no DATA after
                # our LAST_MESSAGE) and has ended
                ch = Channel(self, cid)
                ch._st, ch._sc, ch._rc, ch._ended = "close_sent/closed", True, True, True
                return ch
            return self._handle(ch)

    def _get(self, cid, kind):
        # under _lock: the channel a frame names (None: discard the frame)
        ch = self._chans.get(cid)
        if ch is None:
            if cid in self._closed or (not cid & 1 and cid < self._next):
                if kind in (DATA, DATA_MORE, LAST_MESSAGE, WINDOW):
                    return None
                raise ProtocolError("frame kind %d for closed channel %d" % (kind, cid))
            if not cid & 1:
                raise ProtocolError("frame for unknown channel %d" % cid)
            ch = self._chans[cid] = Channel(self, cid)
        return ch

    # -- reading: the reader thread, or a leader (a thread waiting in receive)
    def _wait(self, cv, timeout, pred=None):
        # under _lock: wait on a channel condition, making sure someone reads
        self._waiting += 1
        if not (self._bgread or self._leader or self._need):
            self._need = True
            self._bgcv.notify()
        try:
            return cv.wait_for(pred, timeout) if pred else cv.wait(timeout)
        finally:
            self._waiting -= 1

    def _lead(self, ch):
        # ch.receive() found nothing and nobody reads: read the stream in this thread
        # until ch has news. Returns ch's next item when _data handed it back (fast
        # path, never queued), else _NOITEM and receive() looks at the channel again.
        nb, _tl.nb = getattr(_tl, "nb", False), True
        _tl.rd = True
        done = False
        try:
            while not done:
                stop = self._read_one()
                with self._lock:
                    if stop:
                        self._stop = stop
                    v, self._handed = self._handed, _NOITEM
                    done = v is not _NOITEM or stop or ch._items or ch._ended
                    if done:
                        self._end_lead()
        finally:
            _tl.nb, _tl.rd = nb, False
            if not done:
                with self._lock:
                    self._handed = _NOITEM
                    self._end_lead()
        return v

    def _wake(self, w):
        # under _lock: wake a blocked thread (w: see _kick) -- or queue the wake-up
        # while the thread woken last has not run yet: a burst (1000 execs handed
        # their items) then never has hundreds of threads contending for the GIL, each
        # polling it every 5 ms (a convoy of context switches costing more than the work)
        if self._waking:
            if type(w) is tuple:
                self._taskq.append(w)  # an EXEC: a finishing executor may take it
            else:
                self._wakeq.append(w)
        else:
            self._waking = self._kick(w)

    def _woke(self):
        # under _lock: a thread woken by _wake (or any receiver back from waiting) runs:
        # wake the next queued one
        q = self._wakeq
        while q:
            if self._kick(q.popleft()):
                return
        q = self._taskq
        while q:  # no executor took these yet: an idle one, or one more thread
            w = q.popleft()
            if self._idle:
                slot = self._idle.pop()
                slot[0] = w
                w = slot
            if self._kick(w):
                return
        self._waking = False

    def _kick(self, w):
        # under _lock: True if a thread was woken that will call _woke
        if type(w) is Channel:
            if not w._w:
                return False  # its receivers left meanwhile
            w._cv.notify_all()
        elif type(w) is tuple:
            # a bare thread: threading.Thread.start() would wait for it to run
            try:
                _thread.start_new_thread(self._pooled, (w,))
            except RuntimeError as e:  # can't start new thread: the main thread will run it
                _trace("cannot start an executor thread:", e)
                self._execq.append(w)
                self._execcv.notify()
                return False
        else:
            w[1].release()  # an idle executor's slot
        return True

    def _end_lead(self):
        # under _lock: the leader steps back; the reader thread takes over if needed
        self._leader, self._mine = False, None
        self._hot = time.monotonic()
        if self._waiting > self._fed or self._stop:
            self._need = True
            self._bgcv.notify()

    def _dispatch(self, kind, cid, p):
        if kind == DATA or kind == DATA_MORE:
            return self._data(kind, cid, p)
        if cid == 0:
            if kind == STATUS_REQUEST:
                rid = loads(p)
                if type(rid) is not int or rid < 0:
                    raise ProtocolError("bad STATUS_REQUEST id")
                with self._lock:
                    st = {"id": rid, "numchannels": len(self._chans), "numexecuting": self._nexec,
                          "execmodel": self._model}
                self._send_frames([frame(STATUS_REPLY, 0, dumps(st))])
                return
            if kind == TERMINATE:
                return True
            raise ProtocolError("unexpected frame kind %d on channel 0" % kind)
        if kind == WINDOW:
            n = loads(p)
            with self._lock:
                ch = self._get(cid, kind)
                if ch is None:
                    return
                if type(n) is not int or n < 0 or ch._credit + n > 0xFFFFFFFF:
                    raise ProtocolError("bad WINDOW %r on channel %d" % (n, cid))
                ch._credit += n
                ch._cv.notify_all()
                pending = ch._out and ch._out[0][0] == DATA
            if pending:
                self._pump(ch)
        elif kind == CLOSE:
            err = loads(p) if p else None
            if err is not None and type(err) is not str:
                raise ProtocolError("CLOSE payload is not a text string")
            with self._lock:
                ch = self._get(cid, kind)
                before = _life(ch, "recv_close")  # a second CLOSE is a violation
                ch._out = deque(e for e in ch._out if e[0] == CLOSE)
                if before[:5] != "close":  # our CLOSE answers the peer's
                    ch._out.append([CLOSE, frame(CLOSE, cid)])
                if ch._cb is None:
                    ch._err = err
                elif err is not None:
                    _trace("error on callback channel", cid, err)
                self._forget(ch)
                fire = self._end(ch)
                pending = bool(ch._out)  # usually empty: our CLOSE went out first
            if pending:
                self._pump(ch)
            if fire:
                fire()
        elif kind == LAST_MESSAGE:
            with self._lock:
                ch = self._get(cid, kind)
                if ch is None:
                    return
                _life(ch, "recv_last")  # after CLOSE or LAST_MESSAGE: a violation
                fire = self._end(ch)
                last = ch._sl  # both half-closed: nothing can flow any more
            if fire:
                fire()
            if last:
                self._close(ch)
        elif kind == EXEC:
            req = loads(p, self._chanref)  # call kwargs may carry channels
            src = req.get("source") if isinstance(req, dict) else None
            call = req.get("call") if isinstance(req, dict) else None
            if type(src) is not str or not (
                call is None or (type(call) is list and len(call) == 2 and type(call[0]) is str
                                 and type(call[1]) is dict)):
                raise ProtocolError("malformed EXEC payload")
            with self._lock:
                if not cid & 1 or cid in self._chans or cid in self._closed:
                    raise ProtocolError("EXEC on channel %d that is not a new host channel" % cid)
                ch = self._chans[cid] = Channel(self, cid)
                # its own handle: the exec holds it and closes it at the end (_run)
                ch._h = _wref(ch)
                if self._model == "main_thread_only" or self._main_idle:
                    self._main_idle = False
                    self._execq.append((ch, src, call))
                    self._execcv.notify()
                    return
                task = (ch, src, call)
                if self._idle:
                    slot = self._idle.pop()
                    slot[0] = task
                    self._wake(slot)
                else:
                    self._wake(task)  # a new executor thread
        else:
            raise ProtocolError("unexpected frame kind %d" % kind)

    def _data(self, kind, cid, p):
        n = len(p)
        ch = self._chans.get(cid)
        if kind == DATA and ch is not None and ch._more is None and not (ch._rc or ch._rl):
            # fast path, a whole item on an open channel: decoded first, then one lock
            # round trip (only the reading thread changes _more, _rc and _rl; a local
            # close meanwhile drops the item, as below)
            try:
                v = loads(p, self._chanref) if type(p) is bytes else self._load(p)
                err = None
            except Unrepresentable as e:
                v, err = None, str(e)
            with self._lock:
                ch._rwin -= n
                if ch._rwin < 0:
                    raise ProtocolError("channel %d: peer exceeded its credit" % cid)
                if ch._sc:
                    return  # closed locally: items are dropped
                if err is None:
                    cb, w = self._deliver(ch, v, n)
                else:
                    ch._err = err
        else:
            with self._lock:
                ch = ch or self._get(cid, kind)
                if ch is None:
                    return
                if ch._rc or ch._rl:
                    raise ProtocolError("data after CLOSE/LAST_MESSAGE on channel %d" % cid)
                ch._rwin -= n
                if ch._rwin < 0:
                    raise ProtocolError("channel %d: peer exceeded its credit" % cid)
                if kind == DATA_MORE:
                    if not n:
                        raise ProtocolError("empty DATA_MORE on channel %d" % cid)
                    m = (ch._more or 0) + n
                    if m > self.max_item:
                        raise ProtocolError("item exceeds max_item on channel %d" % cid)
                    if p is not self._placed:  # else Reader read it into place (_sink)
                        self._room(ch, m)[m - n : m] = p
                    ch._more = m
                    w = self._w_chunk(ch, n)
                else:
                    w = None
                    n = self._w_complete(ch, n)
                    if ch._more is not None:
                        m = ch._more + len(p)
                        if m > self.max_item:
                            raise ProtocolError("item exceeds max_item on channel %d" % cid)
                        if p is not self._placed:
                            self._room(ch, m)[m - len(p) : m] = p
                        p, ch._more = memoryview(ch._asm)[:m], None
                    if ch._sc:
                        self._free(ch)
                        return  # closed locally: items are dropped
            if w:
                self._send_frames([w])
            if kind == DATA_MORE:
                return
            try:
                v = loads(p, self._chanref) if type(p) is bytes else self._load(p)
                err = None
            except Unrepresentable as e:
                v, err = None, str(e)
            finally:
                self._free(ch)
            with self._lock:
                if err is None:
                    cb, w = self._deliver(ch, v, n)
                else:
                    ch._err = err
        if err is not None:
            return self._close(ch, err)
        if cb is None:
            if w:
                self._send_frames([w])
            return
        with self._rlock:  # in order with setcallback's delivery of queued items
            try:
                cb[0](v)
            except Exception as e:
                _trace("exception in callback:", e)
                return self._close(ch, _tb(e))
        self._consumed(ch, n)

    # -- large items (issue 16): read into place, one reused buffer per gateway, so
    # that a MiB received touches no fresh memory but the value's own
    def _load(self, p):
        # the value of a big item, p a view (Reader, _data): a byte or text string is
        # decoded straight from it (one copy); anything else from a bytes copy
        # (indexing a view costs a third more per value)
        return loads(p if 0x40 <= p[0] < 0x80 else bytes(p), self._chanref)

    def _sink(self, kind, cid, n):
        # Reader.sink, reading thread: where a big DATA/DATA_MORE payload goes -- into
        # the item being assembled on its channel -- or None (Reader's buffer; _data
        # then decides, raising for what the protocol forbids)
        ch = self._chans.get(cid)
        if ch is None or ch._rc or ch._rl or (kind == DATA and ch._more is None):
            return None
        m = (ch._more or 0) + n
        if m > self.max_item:
            return None
        self._placed = v = memoryview(self._room(ch, m))[m - n : m]
        return v

    def _room(self, ch, need):
        # reading thread: ch's assembly buffer, with room for need bytes: the spare
        # buffer of an earlier item, grown (x2) when too small
        a = ch._asm
        if a is None:
            a, self._spare = self._spare, None
            if a is None:
                a = bytearray(need * 2)
        if len(a) < need:
            b = bytearray(max(need, len(a) * 2))
            m = ch._more or 0
            b[:m] = memoryview(a)[:m]
            a = b
        ch._asm = a
        return a

    def _free(self, ch):
        # reading thread: ch's item is complete: its buffer becomes the spare (the
        # largest up to SPARE bytes; one per gateway)
        a, ch._asm, self._placed = ch._asm, None, None
        if a is not None and len(a) <= SPARE and (
                self._spare is None or len(self._spare) < len(a)):
            self._spare = a

    def _deliver(self, ch, v, n):
        # under _lock: hand over a decoded item; returns (callback to call, WINDOW frame)
        cb = ch._cb
        if cb is not None:
            return cb, None
        if ch is self._mine and not ch._items and self._handed is _NOITEM:
            # the leader reads for this channel: hand the item straight back to its
            # receive(), consumed (no queue, no second lock round trip)
            self._handed = v
            return None, self._w_taken(ch, n)
        ch._items.append((v, n))
        if ch._w:
            self._wake(ch)
            self._fed += ch._w - ch._fed
            ch._fed = ch._w
            if self._bgread:
                self._hot = time.monotonic()
        return None, None

    def _flush_owed(self):
        with self._lock:
            ws = [self._w_early(ch) for ch in list(self._owing)]
        ws = [w for w in ws if w]
        if ws:
            self._send_frames(ws)

    def _read_one(self):
        """Read and dispatch one frame, then the frames already buffered whole (the
        per-read bookkeeping of the reader and the leader is paid once per batch):
        None, or (reason,) when reading must end."""
        r = self._reader
        try:
            if self._owing and r.buffered() < 9:
                self._flush_owed()
            f = r.read(self.max_frame)
            if f is None:
                _trace("end of input stream: terminating")
                self._orphaned = True
                return (None,)
            data, dispatch, more, m = self._data, self._dispatch, r.buffered_frame, self.max_frame
            while f:
                if _tfd is not None:
                    _trace("recv kind=%d channel=%d len=%d" % (f[0], f[1], len(f[2])))
                if f[0] == DATA:
                    data(*f)
                elif dispatch(*f):
                    _trace("TERMINATE received")
                    return (None,)
                f = more(m)
            if self._drops:
                self._reap()
            return None
        except (ProtocolError, LoadError) as e:
            reason = "protocol violation: %s" % (e,)
        except IOError as e:
            _trace("write failed:", e)
            self._orphaned = True
            return (None,)
        except Exception as e:
            reason = "worker error: " + _tb(e)
        _trace(reason)
        try:
            os.write(_errfd, ("execnet-worker: %s\n" % reason).encode("utf-8", "replace"))
        except OSError:
            pass
        return (reason,)

    def _read_loop(self):
        try:
            _tl.nb = _tl.rd = True
            lock = self._lock
            while True:
                with lock:
                    # stand back while a leader reads, or for HOT after a hand-off to a
                    # receiver likely to lead next -- unless other threads wait for input
                    while self._stop is None and (self._leader or (
                            not self._need and self._waiting <= self._fed
                            and time.monotonic() - self._hot < HOT)):
                        self._bgcv.wait(0.01 if self._leader else HOT)
                    if self._stop is not None:
                        break
                    self._bgread, self._need = True, False
                stop = self._read_one()
                with lock:
                    self._bgread = False
                    if stop:
                        self._stop = stop
            self._shutdown(self._stop[0])
        finally:
            self._rfin = True
            self._rdone.release()  # serve() waits for it

    # -- execution
    def _pooled(self, task):
        # an executor thread: runs tasks until idle for IDLE seconds
        with self._lock:
            self._woke()
        while True:
            self._run(*task)
            task = slot = None  # the kwargs may hold handles: let them go, then reap
            if self._drops:
                self._reap()
            slot = [None, _thread.allocate_lock()]
            slot[1].acquire()
            with self._lock:
                if self._dead:
                    return
                if self._taskq:  # an EXEC waiting for a thread: this one
                    task = self._taskq.popleft()
                    continue
                self._idle.append(slot)
            if not slot[1].acquire(True, IDLE):
                with self._lock:
                    if slot[0] is None:
                        self._idle.remove(slot)
                        return
                slot[1].acquire()  # a task came meanwhile: wait for our turn to wake
            task = slot[0]
            if task is None:
                return  # released by _shutdown
            with self._lock:
                self._woke()

    def _builtins(self):
        # thread mode: an exec's builtins, whose __import__ answers "execnet" with the
        # compatibility module (a fresh copy: the process's sys.modules stays as it is)
        import builtins

        b = dict(builtins.__dict__)
        real, ex = b["__import__"], self._ex

        def __import__(name, globals=None, locals=None, fromlist=(), level=0):
            if level == 0 and name[:7] == "execnet" and name[7:8] in ("", "."):
                if name == "execnet":
                    return ex
                if name == "execnet.gateway_base":
                    return ex.gateway_base if fromlist else ex
                raise ModuleNotFoundError("No module named %r in the execnet-rs worker's "
                                          "execnet" % (name,))
            return real(name, globals, locals, fromlist, level)

        b["__import__"] = __import__
        return b

    def _run(self, ch, src, call):
        with self._lock:
            self._nexec += 1
            self._running[ch] = True
            self._user[ch] = _thread.get_ident()  # running remote code (thread mode: _stop_user)
        err = None
        ch._executing = True
        try:
            if _tfd is not None:
                _trace("exec on channel %d: %r" % (ch.id, src[:60]))
            g = {"channel": ch, "__name__": "__channelexec__"}
            if self._ex is None:
                self._ex = _execnet()
                if not self._threaded:  # before the first exec: "import execnet" is ours
                    sys.modules["execnet"] = self._ex
                    sys.modules["execnet.gateway_base"] = self._ex.gateway_base
            if self._threaded:
                g["__builtins__"] = self._builtins()
            code = self._codes.get(src)
            if code is None:
                code = compile(src + "\n", "<remote exec>", "exec")
                if len(self._codes) < 64:
                    self._codes[src] = code
            if _PYPY:
                # a PyPy code object keeps the globals of its last exec alive, and with
                # them the channels remote code dropped (_handle): each exec gets a copy
                code = code.replace() if hasattr(code, "replace") else compile(
                    src + "\n", "<remote exec>", "exec")
            exec(code, g)
            if call:
                g[call[0]](ch, **call[1])
        except BaseException as e:
            if not (self._dead and isinstance(e, EOFError)):
                err = _tb(e, 1)
        finally:
            ch._executing = False
            try:
                with self._lock:
                    hit = self._user.pop(ch, None) is None  # _stop_user interrupted it
                if hit:
                    _async_exc(_thread.get_ident(), None)  # none may fire in our code below
            except KeyboardInterrupt:
                pass  # thread mode: _stop_user's, meant for the remote code
            try:
                self._close(ch, err)
            except IOError:
                pass
            finally:
                with self._lock:
                    self._nexec -= 1
                    self._running.pop(ch, None)
                    self._donecv.notify_all()

    def serve(self):
        """The calling thread (a worker's main thread): the primary executor until the
        session ends. A worker process then ends; thread mode returns (contract T)."""
        # thread mode with execmodel "thread": no exec runs in the caller's thread, so
        # that it returns within the termination bound whatever remote code does
        primary = not self._threaded or self._model == "main_thread_only"
        self._main_idle = primary  # the first EXEC goes to the main thread
        # bare threads: threading.Thread.start() waits until the new thread runs
        self._rdone = _thread.allocate_lock()
        self._rdone.acquire()
        _thread.start_new_thread(self._read_loop, ())
        while primary and not self._dead:
            try:
                try:
                    with self._lock:
                        while not self._execq and not self._dead:
                            if self._taskq and self._model != "main_thread_only":
                                self._execq.append(self._taskq.popleft())
                                break
                            self._main_idle = True
                            self._execcv.wait()
                        if not self._execq:
                            continue
                        task = self._execq.popleft()
                        self._main_idle, self._main_busy = False, True
                    self._run(*task)
                    task = None  # the kwargs may hold handles: let them go, then reap
                    if self._drops:
                        self._reap()
                finally:
                    with self._lock:
                        self._main_busy = False
                        self._donecv.notify_all()  # _shutdown's grace
            except KeyboardInterrupt:
                pass  # sent by _shutdown to interrupt an execution
        while self._threaded and not self._rfin:  # the reader's _shutdown closes the fds
            try:
                if self._rdone.acquire(True, 1):
                    self._rdone.release()
            except KeyboardInterrupt:
                pass  # _stop_user's, meant for remote code that has just ended
        if self._threaded:
            return
        for _ in range(20):  # the reader ends the process (os._exit) after its shutdown
            try:
                if self._rdone.acquire(True, 1):
                    break
            except KeyboardInterrupt:
                pass
        os._exit(1)

    # -- termination
    def _shutdown(self, reason=None):
        with self._lock:
            self._dead = True
            try:
                self._rsig.release()  # the reaper thread ends
            except Exception:
                pass
            # execs not started yet: queued for the main thread or on the wake-up chain
            queued = list(self._execq) + [
                w if type(w) is tuple else w[0] for w in self._wakeq if type(w) is not Channel
            ] + list(self._taskq)
            self._execq.clear()
            self._wakeq.clear()
            self._taskq.clear()
            fires = [self._end(ch) for ch in list(self._chans.values())]
            self._execcv.notify_all()
            busy = self._main_busy
            for slot in self._idle:  # idle executors end now, not after IDLE
                slot[1].release()
        for ch, _, _ in queued:
            self._safe(self._close, ch, "worker terminated before this execution started")
        for f in fires:
            if f:
                self._safe(f)
        end = time.monotonic() + 1.0
        if busy and not self._threaded:
            # TERMINATE often comes just after an execution's last reply, or it waits
            # for its channel's end: given GRACE to end by itself, it is not interrupted
            # (nor formats the KeyboardInterrupt's traceback: ~5 ms of CPU to import)
            with self._lock:
                busy = not self._donecv.wait_for(lambda: not self._main_busy, GRACE)
        if busy and not self._threaded:
            _trace("interrupting the main thread")
            try:
                import _signal  # not "signal": that imports enum (~1.5 ms per start)

                _signal.pthread_kill(_MAIN[0], _signal.SIGINT)
            except Exception:
                _thread.interrupt_main()
        # thread mode: half of that for executions to end on their own (their channels
        # have ended), then the rest are interrupted
        for soft in ((end - 0.5, end) if self._threaded else (end,)):
            with self._lock:
                while self._nexec and soft > time.monotonic():
                    self._donecv.wait(soft - time.monotonic())
                left = self._nexec
            if left and soft < end:
                self._stop_user()
        with self._lock:
            running = list(self._running)
        for ch in running:
            self._safe(self._close, ch, "worker terminated while this execution was still running")
        if not self._threaded:
            for f in (sys.stdout, sys.stderr):
                self._safe(f.flush)
            self._drain_output()
        payload = _text(reason) if reason else b""
        _trace("sending TERMINATE and exiting")
        if not self._threaded:
            self._safe(self._send_frames, [frame(TERMINATE, 0, payload)])
            if self._orphaned:
                _end_group()
            os._exit(0)
        for ch in list(self._chans.values()):  # CLOSE frames _stop_user held back
            if ch._out:
                self._safe(self._pump, ch)
        self._safe(self._send_frames, [frame(TERMINATE, 0, payload)])
        self._close_fds()

    def _stop_user(self):
        # thread mode: remote code still running is asked to stop -- its channels have
        # ended (their calls raise), and where the interpreter allows (CPython) it gets a
        # KeyboardInterrupt, as a worker's main thread gets SIGINT. Under _wlock: no
        # frame is being written when it is raised, and none can start (_dead)
        with self._wlock:
            self._quiet = _thread.get_ident()
            with self._lock:
                for ch, ident in list(self._user.items()):
                    if ident is not None:
                        _trace("interrupting the execution on channel", ch.id)
                        self._user[ch] = None
                        _async_exc(ident, KeyboardInterrupt)

    def _close_fds(self):
        # thread mode: the session's end; a late write gets IOError, never another fd
        with self._wlock:
            fds, self._outfd = (self._outfd, self._infd), None
        for fd in fds:
            if fd is not None:
                self._safe(os.close, fd)

    @staticmethod
    def _safe(f, *a):
        try:
            f(*a)
        except Exception as e:
            _trace("ignored during shutdown:", e)

    # -- output forwarding
    def _setup_output(self, stdout_piped=False):
        """stdout_piped: fd 1 is a pipe the host reads (a fork server's child)."""
        mode = self.output
        if self._stdout_host and (not stdout_piped or mode != "forward"):
            raise ProtocolError("HELLO option stdout 'host' without a pipe the host reads")
        if stdout_piped and mode == "inherit":
            os.dup2(2, 1)  # as a popen worker's: what the host reads is fd 2
        if mode == "forward":
            for fd in (1, 2):
                if (self._stdout_host, self._stderr_host)[fd - 1]:
                    continue  # the host reads that pipe itself
                r, w = os.pipe()
                os.dup2(w, fd)
                os.close(w)
                self._ofds[r] = fd
            if self._ofds:
                _thread.start_new_thread(self._output_loop, ())  # no start-up hand-off
        elif mode == "discard":
            dn = os.open(os.devnull, os.O_WRONLY)
            os.dup2(dn, 1)
            os.dup2(dn, 2)
            os.close(dn)

    def _forward(self, r):
        b = os.read(r, 65536)
        if b:
            self._send_frames([frame(OUTPUT, 0, dumps([self._ofds[r], b]))])
        return b

    def _output_loop(self):
        import select

        fds = list(self._ofds)
        try:
            while fds:
                ready = select.select(fds, [], [])[0]
                with self._olock:
                    if self._outfd is None:
                        return
                    for r in ready:
                        if not self._forward(r):
                            fds.remove(r)
        except Exception as e:
            _trace("output forwarding ended:", e)

    def _drain_output(self):
        if not self._ofds:
            return  # output mode "inherit" or "discard": nothing forwarded
        import select

        with self._olock:
            for r in self._ofds:
                try:
                    while select.select([r], [], [], 0)[0] and self._forward(r):
                        pass
                except Exception:
                    pass


# ------------------------------------------------------------------ execnet compatibility
# Remote code written for execnet (pytest-xdist's remote.py) imports execnet and uses
# its remote-side API. It gets this module instead, whether or not the real execnet is
# installed: built at the first exec (nothing of it at start-up), put into sys.modules by
# a worker process, handed out by a per-exec __import__ in thread mode (contract M).
_COMPAT = []  # the module, once built
_BUILD = _thread.allocate_lock()


def _execnet():
    """The compatibility module `execnet` (and `execnet.gateway_base`), built once."""
    with _BUILD:
        if _COMPAT:
            return _COMPAT[0]

        class ExecModel(object):
            """execnet's ExecModel, for its two thread backends."""

            backend = None
            queue = property(lambda self: __import__("queue"))
            subprocess = property(lambda self: __import__("subprocess"))
            socket = property(lambda self: __import__("socket"))
            get_ident, sleep = staticmethod(_thread.get_ident), staticmethod(time.sleep)
            # execnet's Lock() is an RLock too; _thread's is threading.RLock's class
            Lock = RLock = lambda self: _thread.RLock()  # noqa: E731
            Event = lambda self: __import__("threading").Event()  # noqa: E731
            __repr__ = lambda self: "<ExecModel %r>" % self.backend  # noqa: E731

            def start(self, func, args=()):
                _thread.start_new_thread(func, tuple(args))

            def fdopen(self, fd, mode, bufsize=1, closefd=True):
                enc = None if "b" in mode else "utf-8"
                return os.fdopen(fd, mode, bufsize, encoding=enc, closefd=closefd)

        class ThreadExecModel(ExecModel):
            backend = "thread"

        class MainThreadOnlyExecModel(ThreadExecModel):
            backend = "main_thread_only"

        models = {"thread": ThreadExecModel(), "main_thread_only": MainThreadOnlyExecModel()}

        def get_execmodel(backend):
            if isinstance(backend, ExecModel):
                return backend
            if backend in models:
                return models[backend]
            raise ValueError("unknown execmodel %r" % (backend,))

        def cloads(b, py2str_as_py3str=False, py3str_as_py2str=False):
            try:
                return loads(b if type(b) in (bytes, bytearray) else bytes(b))
            except Unrepresentable as e:
                raise LoadError(str(e))

        def dump(f, obj):
            f.write(dumps(obj))

        def load(f, py2str_as_py3str=False, py3str_as_py2str=False):
            return cloads(f.read())  # the rest of the stream is the value

        api = {"Channel": Channel, "DataFormatError": DataFormatError, "DumpError": DumpError,
               "LoadError": LoadError, "RemoteError": RemoteError, "TimeoutError": TimeoutError,
               "dump": dump, "dumps": dumps, "load": load, "loads": cloads}
        gb, ex = mods = [type(sys)(n) for n in ("execnet.gateway_base", "execnet")]
        for m in mods:
            m.__dict__.update(api, __engine__="execnet-rs", __all__=sorted(api))
            if getattr(sys, "__spec__", None):  # a ModuleSpec, without importing importlib
                m.__spec__ = type(sys.__spec__)(m.__name__, None)
        gb.__dict__.update(
            ExecModel=ExecModel, ThreadExecModel=ThreadExecModel, get_execmodel=get_execmodel,
            MainThreadOnlyExecModel=MainThreadOnlyExecModel, BaseGateway=Gateway,
            WorkerGateway=Gateway)
        ex.gateway_base = gb
        _COMPAT.append(ex)
        return ex


# ------------------------------------------------------------------ the main thread
# The worker does not import threading (~2.5 ms of CPU per start). But the thread that
# first imports it becomes its main thread (3.13: only its native_id): remote code
# importing it first in an executor thread (or one it started with _thread) would get
# a wrong main_thread(), a _DummyThread as current_thread() in the real main thread
# (asyncio decides by that), and main_thread().is_alive() False once that thread ended.
# So a worker process puts _MainFinder first on sys.meta_path until threading is
# imported; imported outside the main thread, the module's _main_thread is made the
# real one's as soon as the module has run (other importers wait for its import lock).
_MAIN = [None, None, None]  # the worker process's main thread (_record, _main)


class _MainFinder(object):
    """sys.meta_path[0] in a worker process until threading is imported."""

    def find_spec(self, name, path=None, target=None):
        if name != "threading":
            return None
        for f in sys.meta_path:  # (a spec may be asked for without an import)
            find = getattr(f, "find_spec", None) if f is not self else None
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _MainFix(spec.loader, self)
                return spec
        return None


class _MainFix(object):
    """threading's loader while _MainFinder is on sys.meta_path."""

    loader = None  # (__getattr__ before __init__, e.g. copy.copy: AttributeError)

    def __init__(self, loader, finder):
        self.loader, self.finder = loader, finder

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the module shows its own
        self.loader.exec_module(module)
        if sys.modules.get("threading") is module:  # (not a copy made from the spec)
            try:
                sys.meta_path.remove(self.finder)
            except ValueError:
                pass
        if _thread.get_ident() != _MAIN[0]:
            _fix_main(module)


def _fix_main(th):
    # threading just imported outside the main thread: its _main_thread becomes what an
    # import in the main thread makes of it (_MainThread.__init__)
    ident, nid, lock = _MAIN
    mt = th._main_thread
    with th._active_limbo_lock:
        if mt._ident != ident:
            if th._active.get(mt._ident) is mt:
                del th._active[mt._ident]  # the importing thread: a _DummyThread from now on
            mt._ident = ident
            th._active[ident] = mt
        if nid is not None and getattr(mt, "_native_id", None) is not None:
            mt._native_id = nid
    if lock is None or getattr(mt, "_tstate_lock", None) is None:
        return  # 3.13+: a _ThreadHandle, made for the right ident
    # the importing thread's lock, released when that thread ends (is_alive() False,
    # threading._shutdown waits for it), makes way for the main thread's
    old, mt._tstate_lock = mt._tstate_lock, lock
    locks = getattr(th, "_shutdown_locks", None)
    if locks is not None:
        with th._shutdown_locks_lock:
            locks.discard(old)
            locks.add(lock)


def _guard_main():
    # process mode, in the main thread, before any other thread
    if "threading" in sys.modules:
        _MAIN[0] = _thread.get_ident()
        return
    _record()
    sys.meta_path.insert(0, _MainFinder())
    if hasattr(os, "register_at_fork"):  # 3.7+ (3.6: a child forked from another
        os.register_at_fork(after_in_child=_forked)  # thread keeps the parent's _MAIN)


def _record():
    # _MAIN: this thread's ident, native id, and (<= 3.12) the lock its thread state
    # releases when it goes, as threading's _set_tstate_lock makes it
    nid = getattr(_thread, "get_native_id", None)
    lock = None
    if hasattr(_thread, "_set_sentinel"):
        lock = _thread._set_sentinel()
        lock.acquire()
    _MAIN[:] = _thread.get_ident(), nid() if nid is not None else None, lock


def _forked():
    # os.fork() by remote code before threading was imported: the child's only thread,
    # the one that forked, is its main thread (as threading's _after_fork decides)
    if "threading" not in sys.modules:
        _record()


# ------------------------------------------------------------------ main
def _detach():
    """Move the protocol off fds 0/1; returns (infd, outfd, bytes already buffered)."""
    inp = sys.stdin.buffer
    infd, outfd = os.dup(0), os.dup(1)
    # The loader read the source through sys.stdin.buffer, which may hold
    # pipelined frames: take them without blocking, then read the dup'ed fd.
    os.set_blocking(infd, False)
    try:
        pre = inp.read1(1 << 20)
    except (OSError, IOError, ValueError, TypeError):
        pre = None
    finally:
        os.set_blocking(infd, True)
    dn = os.open(os.devnull, os.O_RDWR)
    os.dup2(dn, 0)
    os.dup2(2, 1)  # until the host's output option is known
    os.close(dn)
    if sys.platform.startswith("linux"):
        import fcntl
        import stat

        for fd in (infd, outfd):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):
                    fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
            except (OSError, IOError):
                pass
    return infd, outfd, pre or b""


def _group_members(pgids):
    """{pid: pgid} of the processes in the process groups pgids, from Linux's /proc
    (elsewhere: none). Shared with the fork server."""
    found = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                pgid = int(f.read().rsplit(b")", 1)[1].split()[2])
        except (OSError, IOError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
        if pgid in pgids:
            found[int(name)] = pgid
    return found


def _end_group():
    """Kill the other processes of our process group: the host is gone, so what remote
    code started would outlive it (after TERMINATE the host kills the group itself).
    Only when this worker leads its group (popen, fork and via start it so; a socket
    server's or a shell's group is not ours); /proc names the members, so this
    process ends with its own status."""
    try:
        me = os.getpid()
        if os.getpgrp() != me:
            return
        import _signal

        for pid in _group_members({me}):
            if pid != me:
                try:
                    os.kill(pid, _signal.SIGKILL)
                except OSError:
                    pass
    except Exception as e:
        _trace("cannot end the process group:", e)


def _fatal(msg, outfd=None):
    try:
        os.write(_errfd, ("execnet-worker: bootstrap failed: %s\n" % msg).encode("utf-8", "replace"))
        if outfd is not None:
            os.write(outfd, frame(TERMINATE, 0, _text(msg)))
    except Exception:
        pass
    os._exit(1)


def _main(forked=None, stdout_piped=False):
    """A worker process's start. forked: in a child of the fork server, which has
    done the process-wide part that children inherit (_prepare_fork), the fds of
    the protocol (input, output); fds 0-2 are set up already (0 /dev/null, 2 the
    stderr pipe the server reads, 1 a dup of it or, stdout_piped, a pipe of its own
    the server reads too, for the host HELLO's "stdout": "host")."""
    global _errfd, _tfd
    _errfd = os.dup(2)
    dbg = os.environ.get("EXECNET_DEBUG")
    if dbg:
        if dbg in ("1", "true", "yes", "stderr"):
            _tfd = _errfd
        else:
            _tfd = os.open(dbg, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    outfd = None
    try:
        import _signal

        _signal.signal(_signal.SIGINT, _signal.default_int_handler)  # main thread only
        if not forked:
            _guard_main()
        elif not hasattr(os, "register_at_fork"):
            _record()  # 3.6: no at-fork handler did it
        if forked:
            (infd, outfd), pre = forked, b""
        else:
            infd, outfd, pre = _detach()
        gw = _open(infd, outfd, pre)
        if gw is None:
            _fatal("input ended before the host HELLO")
        gw._setup_output(stdout_piped)  # after HELLO: OUTPUT frames may follow it, never precede it
    except Exception as e:
        _fatal(e, outfd)
    gw.serve()


def _prepare_fork():
    """In the fork server, once before its first fork: what every forked worker
    would do first and can inherit instead. The main-thread guard: its at-fork
    handler (_forked) records each child's own main thread as the fork returns."""
    _guard_main()


def _open(infd, outfd, pre=b"", threaded=False):
    """Read the host HELLO and answer it: the Gateway, or None if input ended first."""
    reader = Reader(infd, pre)  # small; grows with the stream (Reader.__init__)
    f = reader.read(1 << 20)
    if f is None:
        return None
    if f[0] != HELLO or f[1] != 0:
        raise ProtocolError("first frame is kind %d, not HELLO" % f[0])
    gw = Gateway(reader, outfd, loads(f[2]), threaded)
    gw._infd = infd
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = ""
    gw._info = info = {
        "version": 1, "implementation": sys.implementation.name,
        "version_info": list(sys.version_info[:5]), "executable": sys.executable or "",
        "platform": sys.platform, "pid": os.getpid(), "cwd": cwd, "execmodel": gw._model,
    }
    _trace("HELLO", info, "output", gw.output)
    gw._send_frames([frame(HELLO, 0, dumps(info))])
    return gw


def _async_exc(ident, exc):
    # raise exc (None: cancel a pending one) in thread ident at its next bytecode:
    # CPython's PyThreadState_SetAsyncExc, through ctypes imported only when needed
    # (thread mode, remote code still running at the end); PyPy has no such call
    try:
        import ctypes

        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(ident), exc and ctypes.py_object(exc))
    except Exception as e:
        _trace("cannot interrupt thread %r: %s" % (ident, e))


def serve_thread(read_fd, write_fd):
    """Serve one gateway in the calling thread (thread mode, contract T).

    The host writes its frames into read_fd's pipe and reads ours from write_fd's.
    Returns when the gateway has ended (TERMINATE, end of input, protocol violation),
    with both descriptors closed, and never raises for such an end. Nothing
    process-wide is touched: no fds 0/1/2, signal handlers or os._exit; remote code's
    "import execnet" is answered by the exec's own __import__, not sys.modules; the
    output option is ignored (print() writes to this process's stdout). Executions run
    in threads of their own, with execmodel "main_thread_only" all in this thread.
    After TERMINATE, code still running is told to stop (its channels end; on CPython
    it also gets a KeyboardInterrupt) and is left behind after ~1 s."""
    global _tfd
    if _tfd is None and os.environ.get("EXECNET_DEBUG") in ("1", "true", "yes", "stderr"):
        _tfd = _errfd
    try:
        gw = _open(read_fd, write_fd, threaded=True)
    except Exception as e:
        _trace("thread worker: no session:", e)
        try:
            os.write(write_fd, frame(TERMINATE, 0, _text(e)))
        except OSError:
            pass
        gw = None
    if gw is None:
        for fd in (read_fd, write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        return
    gw.serve()


if __name__ == "__main__":
    _main()
