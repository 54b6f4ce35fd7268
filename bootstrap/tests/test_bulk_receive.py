"""Big items host -> worker (issue 16): payloads read into place, one reused assembly
buffer per gateway, every shape of value intact, and no fresh memory per MiB."""
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostclient import W  # noqa: E402
from test_worker import ECHO, WorkerTestCase  # noqa: E402


BIG = 1 << 16  # worker.py BIG: payloads from this size on are read into place


def minflt(pid):
    """Minor page faults of a process so far (/proc/PID/stat field 10)."""
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


SHAPES = [
    b"b" * (1 << 20) + b"xyz",  # chunked (DATA_MORE x4 + DATA)
    b"e" * BIG,  # a whole frame of exactly BIG payload bytes (minus the head)
    b"f" * (BIG - 3),  # just below
    b"g" * 100000,  # one DATA frame read as a view
    "\u20ac\U0001f600 text " * 30000,  # multi-byte UTF-8 split across chunks
    list(range(60000)),  # structured: decoded from a bytes copy
    (b"t" * 300000, "abc", [1, 2]),
    {"k": b"v" * 200000, 1: "w" * 70000},
    b"",
    "small",
]


class BulkReceive(WorkerTestCase):
    def test_big_items_of_every_shape_arrive_intact(self):
        for max_frame in (256 * 1024, 64 * 1024, 1 << 20):
            h = self.host(window=1 << 20, max_frame=max_frame)
            c = h.exec_(ECHO)
            for v in SHAPES:
                h.send(c, v)
                self.assertEqual(h.item(c, 30), v, "max_frame %d" % max_frame)
            self.assertEqual(h.terminate(), 0)

    def test_interleaved_chunked_items_on_two_channels(self):
        # chunks of two items alternate: each channel assembles its own
        h = self.host(max_frame=1 << 20)
        a = h.exec_(ECHO)
        b = h.exec_(ECHO)
        va, vb = b"A" * 700000, "B\u00e9" * 300000
        da, db = W.dumps(va), W.dumps(vb)
        cut = [0, 200000, 450000]
        frames = []
        for i in range(len(cut)):
            last = i == len(cut) - 1
            for cid, d in ((a, da), (b, db)):
                end = len(d) if last else cut[i + 1]
                frames.append(W.frame(W.DATA if last else W.DATA_MORE, cid, d[cut[i]:end]))
        h.write(b"".join(frames))
        self.assertEqual(h.item(a, 30), va)
        self.assertEqual(h.item(b, 30), vb)
        h.send(a, b"again" * 50000)  # the spare buffer serves the next item
        self.assertEqual(h.item(a, 30), b"again" * 50000)

    def test_items_dropped_after_a_local_close_mid_item(self):
        h = self.host()
        c = h.exec_("sub = channel.gateway.newchannel()\nchannel.send(sub)\n"
                    "channel.receive()\nsub.close()\nchannel.send('closed')\n"
                    "channel.send(channel.receive())\n")
        sub = h.item(c).id
        d = W.dumps(b"z" * 300000)
        h.write(W.frame(W.DATA_MORE, sub, d[:200000]))
        h.send(c, "go")
        self.assertEqual(h.item(c), "closed")
        h.write(W.frame(W.DATA, sub, d[200000:]))  # completes an item nobody gets
        h.send(c, b"y" * 300000)
        self.assertEqual(h.item(c, 30), b"y" * 300000)

    def receive_faults(self, src, mib):
        # page faults of the worker while it receives mib 1 MiB items, after 8 MiB of
        # warm-up (buffers sized, allocator settled)
        h = self.host()
        c = h.exec_(src)
        item = b"x" * (1 << 20)
        for _ in range(8):
            h.send(c, item)
        h.send(c, "sync")
        self.assertEqual(h.item(c, 30), 8 << 20)
        before = minflt(h.proc.pid)
        for _ in range(mib):
            h.send(c, item)
        h.send(c, "sync")
        self.assertEqual(h.item(c, 30), mib << 20)
        after = minflt(h.proc.pid)
        h.send(c, None)
        return (after - before) / float(mib)

    def test_receiving_bulk_touches_no_fresh_memory(self):
        # before the fix: ~380 faults per MiB (1.5 MiB of fresh pages) with Debian's
        # python3; each 1 MiB item now costs its own value at most (256 faults)
        main = ("n = 0\nwhile 1:\n    x = channel.receive()\n    if x is None:\n        break\n"
                "    if x == 'sync':\n        channel.send(n)\n        n = 0\n"
                "    else:\n        n += len(x)\n")
        cb = ("import threading\nev = threading.Event()\nn = [0]\n"
              "def cb(x):\n    if x is None:\n        ev.set()\n"
              "    elif x == 'sync':\n        channel.send(n[0])\n        n[0] = 0\n"
              "    else:\n        n[0] += len(x)\n"
              "channel.setcallback(cb)\nev.wait()\n")
        for name, src in (("exec thread", main), ("callback", cb)):
            per_mib = self.receive_faults(src, 64)
            sys.stderr.write("[%s: %.1f page faults per MiB received] " % (name, per_mib))
            if sys.implementation.name == "pypy":
                # PyPy's GC, not the receive path, decides here (28-98 measured; the
                # old worker 141): reported, not asserted
                sys.stderr.write("[SKIPPED on PyPy: the bound] ")
                continue
            self.assertLess(per_mib, 64, name)


class InProcessSpare(unittest.TestCase):
    def test_one_assembly_buffer_serves_every_item(self):
        r, w = os.pipe()
        out = os.open(os.devnull, os.O_WRONLY)
        for fd in (r, w, out):
            self.addCleanup(os.close, fd)
        gw = W.Gateway(W.Reader(r), out, {"version": 1, "max_frame": 1 << 19})
        ch = gw._chanref(1)
        seen = []
        for i in range(4):
            d = W.dumps(bytes([65 + i]) * 600000)
            t = threading.Thread(target=os.write, args=(w, W.frame(W.DATA_MORE, 1, d[:1 << 18])
                                                      + W.frame(W.DATA_MORE, 1, d[1 << 18:])
                                                      + W.frame(W.DATA, 1, b"")))
            t.start()  # more than a pipe holds
            while not ch._c._items:
                self.assertIsNone(gw._read_one())
            t.join()
            self.assertEqual(ch.receive(), bytes([65 + i]) * 600000)
            seen.append(id(gw._spare))
        self.assertEqual(len(set(seen)), 1, seen)


if __name__ == "__main__":
    unittest.main()
