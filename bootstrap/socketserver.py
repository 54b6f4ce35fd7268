"""execnet socket server: serves execnet gateways over TCP (stdlib only).

    python socketserver.py [--bind 127.0.0.1:8888] [--token-file FILE]
                           [--max-startups 64] [--handshake-timeout 10]

Binds loopback by default (port 0 picks a free port) and prints
"listening on HOST:PORT" on stdout once bound. The token is the content of
FILE (surrounding whitespace stripped), else $EXECNET_SOCKET_TOKEN, else a
random one printed as "token TOKEN" on stdout. After authentication a
connection runs a worker in a child process whose stdin and stdout are the
connection (a worker owns process-wide state -- fds 0/1/2, signal handlers,
the main thread, os._exit at termination -- so it cannot share a process with
the server or with other workers).

Under load (a flood of connections that never authenticate) the server stays
small and keeps serving those who know the token:
  - one thread runs every handshake (non-blocking sockets and a selector), so
    the thread count does not grow with connections;
  - at most --max-startups handshakes are pending at once (like OpenSSH's
    MaxStartups); when a new connection arrives at the cap, the *oldest*
    pending one is dropped, so idle connections cannot lock a client out: a
    client that answers within one round trip always gets through;
  - a handshake not finished within --handshake-timeout seconds is dropped;
  - log lines are rate-limited (10 per 10 s, then one line counting the rest).

Handshake, before anything is executed (all on the connection, in order):

  server -> client  MAGIC = b"EXECNET-SOCKET/1\\n" (17 bytes), then Ns (32 random bytes)
  client -> server  Nc (32 random bytes), then
                    HMAC-SHA256(key=token, msg=b"execnet-client" + Ns + Nc) (32 bytes)
  server            checks the MAC (constant time); on mismatch, or if the 64 bytes
                    do not arrive within 10 s (or the handshake is dropped under
                    load, see above), it closes the connection, sending nothing
  server -> client  HMAC-SHA256(key=token, msg=b"execnet-server" + Nc + Ns) (32 bytes);
                    the client checks it (the server knows the token too)
  client -> server  N as 4 bytes (unsigned, big-endian), then N bytes: the
                    zlib-compressed worker source, then protocol frames at once
                    (docs/protocol.md, starting with the host HELLO)

The server runs `PYTHON -u -c LOADER` with
  LOADER = "import sys,zlib,struct;b=sys.stdin.buffer;"
           "exec(zlib.decompress(b.read(struct.unpack('>I',b.read(4))[0])))"
No secret crosses the wire. The token authenticates, it does not encrypt:
use an SSH tunnel for untrusted networks.

Through a gateway (execnet's "installvia"): remote_exec this source with
call ["installvia", {"bind": "127.0.0.1:0", "token": TOKEN}]; the channel
receives "HOST:PORT" and the server keeps serving in a thread of that worker.
"""
import collections
import errno
import hashlib
import hmac
import os
import selectors
import socket
import subprocess
import sys
import threading
import time

MAGIC = b"EXECNET-SOCKET/1\n"
LOADER = ("import sys,zlib,struct;b=sys.stdin.buffer;"
          "exec(zlib.decompress(b.read(struct.unpack('>I',b.read(4))[0])))")
HANDSHAKE_TIMEOUT = 10.0
# Pending (unauthenticated) handshakes at once; each holds one descriptor.
MAX_STARTUPS = 64
# The kernel queues this many finished TCP handshakes for accept(): large, so
# that a client's SYN is not dropped (costing a 1 s retransmit) while a flood
# fills the queue faster than one loop turn drains it.
BACKLOG = 1024
# The selector wakes at least this often to reap finished workers.
REAP_INTERVAL = 1.0


def mac(token, label, a, b):
    return hmac.new(token, label + a + b, hashlib.sha256).digest()


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed during the handshake")
        data += chunk
    return data


def client_handshake(sock, token):
    """The client half of the handshake (for hosts and tests written in Python)."""
    head = recv_exact(sock, len(MAGIC) + 32)
    if head[: len(MAGIC)] != MAGIC:
        raise ValueError("not an execnet socket server")
    ns, nc = head[len(MAGIC):], os.urandom(32)
    sock.sendall(nc + mac(token, b"execnet-client", ns, nc))
    if not hmac.compare_digest(recv_exact(sock, 32), mac(token, b"execnet-server", nc, ns)):
        raise ValueError("the server does not know the token")


def parse_bind(bind):
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def write_stderr(msg):
    try:
        sys.stderr.write("execnet-socketserver: %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


class RateLimitedLog(object):
    """Writes at most `burst` lines per `window` seconds; the lines beyond
    are counted and reported as one line when the window is over, so a flood
    cannot fill a disk or drown the one line that matters."""

    def __init__(self, burst=10, window=10.0, write=write_stderr, clock=time.monotonic):
        self.burst, self.window, self.write, self.clock = burst, window, write, clock
        self.start, self.written, self.suppressed = clock(), 0, 0

    def __call__(self, msg):
        self.flush()
        if self.written < self.burst:
            self.written += 1
            self.write(msg)
        else:
            self.suppressed += 1

    def flush(self):
        """Ends the window if it is over (reporting what it suppressed)."""
        now = self.clock()
        if now - self.start < self.window:
            return
        if self.suppressed:
            self.write("%d more log lines suppressed in the last %.0f s"
                       % (self.suppressed, now - self.start))
        self.start, self.written, self.suppressed = now, 0, 0


class _Pending(object):
    """One connection in its handshake: what is left to send, what arrived."""
    __slots__ = ("sock", "peer", "deadline", "ns", "out", "inp", "authenticated")

    def __init__(self, sock, peer, deadline):
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.ns = os.urandom(32)
        self.out, self.inp, self.authenticated = MAGIC + self.ns, b"", False


class Server(object):
    """Serves gateways on `bind` to clients that know `token`.

    `max_startups` caps pending handshakes (the oldest is dropped for a new
    one), `handshake_timeout` bounds each; `log` receives one string per
    event worth a line (rate-limited by default). `stats` counts what
    happened: accepted, authenticated, refused (bad token), evicted (dropped
    at the cap), timed_out, gone (closed by the peer mid-handshake)."""

    def __init__(self, bind="127.0.0.1:8888", token=None, python=None,
                 max_startups=MAX_STARTUPS, handshake_timeout=HANDSHAKE_TIMEOUT, log=None):
        if isinstance(token, str):
            token = token.encode("utf-8")
        if not token:
            raise ValueError("a non-empty token is required")
        if max_startups < 1 or handshake_timeout <= 0:
            raise ValueError("max_startups must be >= 1 and handshake_timeout > 0")
        self.token, self.python = token, python or sys.executable
        self.max_startups, self.handshake_timeout = max_startups, handshake_timeout
        self.log = log or RateLimitedLog()
        host, port = parse_bind(bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(BACKLOG)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self.stats = dict.fromkeys(
            ("accepted", "authenticated", "refused", "evicted", "timed_out", "gone"), 0)
        # Oldest first: deadlines are accept time + a constant, so the front
        # is both the next to expire and the one dropped at the cap.
        self._pending = collections.OrderedDict()
        self._workers = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._lock = threading.Lock()
        self._closed = self._running = False
        self._stopped = threading.Event()

    def pending(self):
        """How many handshakes are in progress."""
        return len(self._pending)

    def serve_forever(self):
        """Serves until close(); returns at once if already closed."""
        with self._lock:
            if self._closed or self._running:
                return
            self._running = True
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed:
                timeout = REAP_INTERVAL
                if self._pending:
                    first = next(iter(self._pending.values()))
                    timeout = max(0.0, min(timeout, first.deadline - time.monotonic()))
                for key, events in sel.select(timeout):
                    if key.fileobj is self.sock:
                        self._accept_all(sel)
                    elif key.fileobj is self._wake_r:
                        self._drain_wakeups()
                    elif self._pending.get(key.fd) is key.data:
                        # (not dropped earlier in this batch, e.g. at the cap)
                        self._step(sel, key.data, events)
                self._expire(sel)
                self._reap()
                self.log.flush()
        finally:
            for p in list(self._pending.values()):
                self._drop(sel, p)
            sel.close()
            self._shutdown()
            self._stopped.set()
            if self._workers:
                # Nobody polls any more: one thread reaps what is left.
                t = threading.Thread(target=lambda ws=list(self._workers): [w.wait() for w in ws])
                t.daemon = True
                t.start()

    def close(self, timeout=5.0):
        """Stops serving: the listening socket and every pending handshake
        are closed (workers already started keep running). Waits up to
        `timeout` seconds for serve_forever to return (not when called from
        it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = self._running
        if not running:
            self._shutdown()
            return
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait(timeout)

    def _shutdown(self):
        for s in (self.sock, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass

    def _drain_wakeups(self):
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass

    def _accept_all(self, sel):
        # Everything queued, not one per turn: the backlog must not fill.
        while True:
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: free one held by a stranger, or
                    # leave the rest queued in the kernel for the next turn.
                    self.log("accept failed: %s" % e)
                    if self._pending:
                        self.stats["evicted"] += 1
                        self._drop(sel, next(iter(self._pending.values())))
                        continue
                    time.sleep(0.05)
                    return
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            if len(self._pending) >= self.max_startups:
                oldest = next(iter(self._pending.values()))
                self.stats["evicted"] += 1
                self.log("%d handshakes pending (--max-startups): dropped the oldest, from %s"
                         % (len(self._pending), _peer(oldest.peer)))
                self._drop(sel, oldest)
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                conn.close()
                continue
            p = _Pending(conn, peer, time.monotonic() + self.handshake_timeout)
            self._pending[conn.fileno()] = p
            # Counted once it is pending: a reader of stats (tests, logs)
            # that sees it accepted also sees it in pending().
            self.stats["accepted"] += 1
            sel.register(conn, selectors.EVENT_WRITE, p)
            self._step(sel, p, selectors.EVENT_WRITE)

    def _step(self, sel, p, events):
        """Moves one handshake on as far as its socket allows."""
        try:
            if events & selectors.EVENT_WRITE and p.out:
                p.out = p.out[p.sock.send(p.out):]
                if p.out:
                    return
                if p.authenticated:
                    return self._start_worker(sel, p)
                sel.modify(p.sock, selectors.EVENT_READ, p)
                return
            if events & selectors.EVENT_READ:
                # Never more than the 64 bytes of the handshake: what follows
                # belongs to the worker.
                data = p.sock.recv(64 - len(p.inp))
                if not data:
                    self.stats["gone"] += 1
                    return self._drop(sel, p)
                p.inp += data
                if len(p.inp) < 64:
                    return
                nc = p.inp[:32]
                if not hmac.compare_digest(p.inp[32:], mac(self.token, b"execnet-client", p.ns, nc)):
                    self.stats["refused"] += 1
                    self.log("refused %s: bad token" % _peer(p.peer))
                    return self._drop(sel, p)
                p.authenticated = True
                p.out = mac(self.token, b"execnet-server", nc, p.ns)
                sel.modify(p.sock, selectors.EVENT_WRITE, p)
                self._step(sel, p, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            self.stats["gone"] += 1
            self.log("connection from %s failed: %s" % (_peer(p.peer), e))
            self._drop(sel, p)

    def _start_worker(self, sel, p):
        sel.unregister(p.sock)
        del self._pending[p.sock.fileno()]
        self.stats["authenticated"] += 1
        try:
            p.sock.setblocking(True)  # the worker needs a blocking descriptor
            fd = p.sock.fileno()
            self._workers.append(
                subprocess.Popen([self.python, "-u", "-c", LOADER], stdin=fd, stdout=fd))
        except Exception as e:
            self.log("cannot start a worker for %s: %s" % (_peer(p.peer), e))
        finally:
            p.sock.close()

    def _drop(self, sel, p):
        self._pending.pop(p.sock.fileno(), None)
        try:
            sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        p.sock.close()

    def _expire(self, sel):
        now = time.monotonic()
        while self._pending:
            p = next(iter(self._pending.values()))
            if p.deadline > now:
                return
            self.stats["timed_out"] += 1
            self.log("handshake from %s not done within %g s: dropped"
                     % (_peer(p.peer), self.handshake_timeout))
            self._drop(sel, p)

    def _reap(self):
        if self._workers:
            self._workers = [w for w in self._workers if w.poll() is None]


def _peer(peer):
    try:
        return "%s:%d" % peer[:2]
    except (TypeError, ValueError):
        return str(peer)


def installvia(channel, bind="127.0.0.1:0", token=None, python=None):
    """remote_exec entry point: serve in a thread of this worker, send back HOST:PORT."""
    server = Server(bind, token, python)
    t = threading.Thread(target=server.serve_forever)
    t.daemon = True
    t.start()
    channel.send("%s:%d" % server.address)


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(description="execnet socket server")
    ap.add_argument("--bind", default="127.0.0.1:8888", help="HOST:PORT (port 0: any free port)")
    ap.add_argument("--token-file", help="file holding the shared token")
    ap.add_argument("--max-startups", type=int, default=MAX_STARTUPS,
                    help="handshakes pending at once; the oldest is dropped for a new one")
    ap.add_argument("--handshake-timeout", type=float, default=HANDSHAKE_TIMEOUT,
                    help="seconds a connection has to authenticate")
    args = ap.parse_args(argv)
    token = None
    if args.token_file:
        with open(args.token_file, "rb") as f:
            token = f.read().strip()
    else:
        token = os.environ.get("EXECNET_SOCKET_TOKEN", "").encode("utf-8")
    generated = not token
    if generated:
        token = os.urandom(16).hex().encode("ascii")
    server = Server(args.bind, token, max_startups=args.max_startups,
                    handshake_timeout=args.handshake_timeout)
    print("listening on %s:%d" % server.address)
    if generated:
        print("token %s" % token.decode("ascii"))
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
