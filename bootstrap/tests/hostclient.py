"""A small test-only host for the worker: spawns it through the real loader and
speaks docs/protocol.md from Python, using the worker's own codec."""
import importlib.util
import os
import subprocess
import sys
import threading
import time
import zlib
from collections import deque

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "..", "worker.py")
SOCKETSERVER = os.path.join(HERE, "..", "socketserver.py")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


W = _load("execnet_worker_under_test", WORKER)
HDR = W._HDR
SOURCE = zlib.compress(open(WORKER, "rb").read(), 9)


def loader(n):
    return "import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read(%d)))" % n


def ref(cid):
    """A channel reference value (host side)."""
    return W.Channel(None, cid)


class Host(object):
    def __init__(self, python=None, options=None, window=4194304, max_frame=1048576,
                 max_item=1 << 30, env=None, autocredit=True, stream=None, extra=b"",
                 version=1, stderr=subprocess.PIPE, flags=("-u",)):
        self.window, self.max_frame, self.max_item = window, max_frame, max_item
        self.autocredit = autocredit
        self.cv = threading.Condition()
        self.queues, self.credit, self.more = {}, {}, {}
        self.closed_by_worker, self.closed_by_us = set(), set()
        self.status, self.output, self.terminated = {}, [], None
        self.info, self.eof, self.frames_seen = None, False, []
        self.next_id = 1
        self.wq, self.wcv = deque(), threading.Condition()
        hello = {"version": version, "window": window, "max_frame": max_frame, "max_item": max_item}
        if options is not None:
            hello["options"] = options
        first = W.frame(W.HELLO, 0, W.dumps(hello)) + extra
        if stream is None:
            self.proc = subprocess.Popen(
                [python or sys.executable] + list(flags) + ["-c", loader(len(SOURCE))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env)
            self.wfile, self.rfile = self.proc.stdin, self.proc.stdout
            self.wfile.write(SOURCE + first)
            self.wfile.flush()
        else:
            self.proc = None
            self.rfile, self.wfile = stream
            self._raw_write(first)
        self.rt = threading.Thread(target=self._reader)
        self.rt.daemon = True
        self.rt.start()
        self.wt = threading.Thread(target=self._writer)
        self.wt.daemon = True
        self.wt.start()

    # -- writing (a writer thread: our reader never writes)
    def _raw_write(self, data):
        self.wfile.write(data)
        self.wfile.flush()

    def write(self, data):
        with self.wcv:
            self.wq.append(data)
            self.wcv.notify()

    def _writer(self):
        while True:
            with self.wcv:
                while not self.wq:
                    self.wcv.wait()
                data = self.wq.popleft()
            if data is None:
                return
            try:
                self._raw_write(data)
            except (OSError, ValueError):
                return

    def send_frame(self, kind, cid, payload=b""):
        self.write(W.frame(kind, cid, payload))

    # -- reading
    def _readn(self, n):
        b = b""
        while len(b) < n:
            c = self.rfile.read(n - len(b))
            if not c:
                return None
            b += c
        return b

    def _reader(self):
        try:
            while True:
                h = self._readn(9)
                if h is None:
                    break
                kind, cid, n = HDR.unpack(h)
                p = self._readn(n) if n else b""
                self.frames_seen.append((kind, cid, n))
                self._handle(kind, cid, p)
        except (OSError, ValueError):
            pass  # closed under our feet by kill()
        finally:
            with self.cv:
                self.eof = True
                self.cv.notify_all()

    def _q(self, cid):
        return self.queues.setdefault(cid, deque())

    def _handle(self, kind, cid, p):
        with self.cv:
            if kind == W.HELLO:
                self.info = W.loads(p)
            elif kind == W.DATA_MORE:
                self.more.setdefault(cid, bytearray()).extend(p)
                if True:  # DATA_MORE credit is returned on arrival (protocol.md 6.2)
                    self.send_frame(W.WINDOW, cid, W.dumps(len(p)))
            elif kind == W.DATA:
                data = bytes(self.more.pop(cid, b"")) + p
                self._q(cid).append(("item", W.loads(data, ref), len(p)))
                if self.autocredit:
                    self.send_frame(W.WINDOW, cid, W.dumps(len(p)))
            elif kind == W.CLOSE:
                self.closed_by_worker.add(cid)
                self._q(cid).append(("close", W.loads(p) if p else None, 0))
                if cid not in self.closed_by_us:
                    self.closed_by_us.add(cid)
                    self.send_frame(W.CLOSE, cid)
            elif kind == W.LAST_MESSAGE:
                self._q(cid).append(("last", None, 0))
            elif kind == W.WINDOW:
                self.credit[cid] = self.credit.get(cid, self.window) + W.loads(p)
            elif kind == W.TERMINATE:
                self.terminated = W.loads(p) if p else ""
            elif kind == W.STATUS_REPLY:
                st = W.loads(p)
                self.status[st["id"]] = st
            elif kind == W.OUTPUT:
                fd, b = W.loads(p)
                self.output.append((fd, b))
            else:
                raise AssertionError("unexpected frame kind %d" % kind)
            self.cv.notify_all()

    def wait_for(self, pred, timeout=10):
        with self.cv:
            if not self.cv.wait_for(pred, timeout):
                raise AssertionError("timed out waiting; frames seen: %r" % (self.frames_seen[-10:],))

    # -- high level
    def hello(self, timeout=10):
        self.wait_for(lambda: self.info is not None or self.eof, timeout)
        return self.info

    def exec_(self, source, call=None):
        cid = self.next_id
        self.next_id += 2
        self.send_frame(W.EXEC, cid, W.dumps({"source": source, "call": call}))
        return cid

    def newchannel(self):
        cid = self.next_id
        self.next_id += 2
        return cid

    def send(self, cid, value):
        """Send one item respecting the worker's credit (chunks like the core)."""
        data = W.dumps(value)
        pos = 0
        while pos < len(data):
            with self.cv:
                self.cv.wait_for(lambda: self.credit.get(cid, self.window) > 0 or self.eof, 30)
                c = self.credit.get(cid, self.window)
                if c <= 0:
                    raise AssertionError("no credit on channel %d" % cid)
                n = min(len(data) - pos, self.max_frame, c)
                self.credit[cid] = c - n
            kind = W.DATA if pos + n == len(data) else W.DATA_MORE
            self.send_frame(kind, cid, data[pos:pos + n])
            pos += n

    def receive(self, cid, timeout=10):
        """('item', value, n) | ('close', error_or_None, 0) | ('last', None, 0)."""
        q = self._q(cid)
        self.wait_for(lambda: q or self.eof, timeout)
        with self.cv:
            if not q:
                raise EOFError("connection ended")
            return q.popleft()

    def item(self, cid, timeout=10):
        kind, v, _ = self.receive(cid, timeout)
        if kind != "item":
            raise AssertionError("expected an item on %d, got %r %r" % (cid, kind, v))
        return v

    def close(self, cid, error=None):
        with self.cv:
            self.closed_by_us.add(cid)
        self.send_frame(W.CLOSE, cid, b"" if error is None else W.dumps(error))

    def request_status(self, rid=1):
        self.send_frame(W.STATUS_REQUEST, 0, W.dumps(rid))
        self.wait_for(lambda: rid in self.status)
        return self.status.pop(rid)

    def terminate(self, timeout=5):
        self.send_frame(W.TERMINATE, 0)
        self.wait_for(lambda: self.eof, timeout)
        return self.finish(timeout)

    def finish(self, timeout=5):
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("worker did not exit within %s s" % timeout)
        self.write(None)
        self.wt.join(5)  # closing a file another thread writes to crashed CPython 3.6
        self._stderr = self.proc.stderr.read() if self.proc.stderr else b""
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if f:
                    f.close()
            except Exception:
                pass
        return rc

    def stderr_text(self):
        return self._stderr.decode("utf-8", "replace")

    def kill(self):
        if self.proc:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.write(None)
            self.wt.join(5)
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    if f:
                        f.close()
                except Exception:
                    pass
