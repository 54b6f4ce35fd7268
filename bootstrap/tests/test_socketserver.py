"""The standalone socket server: token handshake, many connections, installvia;
under load: the handshake cap, the deadline, bounded threads, rate-limited logs."""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostclient import SOCKETSERVER, SOURCE, Host, _load  # noqa: E402

S = _load("execnet_socketserver_under_test", SOCKETSERVER)
TOKEN = b"s3cret-token"


def connect(address, token, timeout=10):
    host, port = S.parse_bind(address)
    sock = socket.create_connection((host, port), timeout=timeout)
    S.client_handshake(sock, token)
    sock.settimeout(None)
    sock.sendall(struct.pack(">I", len(SOURCE)) + SOURCE)
    return sock


def host_over(sock, **kw):
    return Host(stream=(sock.makefile("rb"), sock.makefile("wb")), **kw)


class SocketServer(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        fd, cls.tokenfile = tempfile.mkstemp()
        os.write(fd, TOKEN + b"\n")
        os.close(fd)
        cls.proc = subprocess.Popen(
            [sys.executable, SOCKETSERVER, "--bind", "127.0.0.1:0", "--token-file", cls.tokenfile],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = cls.proc.stdout.readline().decode()
        assert line.startswith("listening on 127.0.0.1:"), line
        cls.address = line.split()[-1]

    @classmethod
    def tearDownClass(cls):
        cls.proc.kill()
        cls.proc.wait()
        for f in (cls.proc.stdout, cls.proc.stderr):
            f.close()
        os.unlink(cls.tokenfile)

    def gateway(self):
        sock = connect(self.address, TOKEN)
        self.addCleanup(sock.close)
        h = host_over(sock)
        self.assertIsNotNone(h.hello())
        return h

    def test_accepts_the_token_and_serves_many_at_once(self):
        hosts = [self.gateway() for _ in range(3)]
        chans = [h.exec_("import os\nchannel.send(os.getpid())\nchannel.send(channel.receive())")
                 for h in hosts]
        pids = [h.item(c) for h, c in zip(hosts, chans)]
        self.assertEqual(len(set(pids)), 3)
        self.assertEqual([h.info["pid"] for h in hosts], pids)
        for i, (h, c) in enumerate(zip(hosts, chans)):
            h.send(c, i)
            self.assertEqual(h.item(c), i)
        for h in hosts:
            h.send_frame(8, 0)
            h.wait_for(lambda: h.eof)
            self.assertEqual(h.terminated, "")

    def test_refuses_a_wrong_token_before_executing_anything(self):
        host, port = S.parse_bind(self.address)
        sock = socket.create_connection((host, port), timeout=10)
        self.addCleanup(sock.close)
        with self.assertRaises((EOFError, ValueError, OSError)):
            S.client_handshake(sock, b"wrong")
        self.assertEqual(sock.recv(100), b"")  # closed, nothing more was sent
        # garbage instead of a handshake
        sock2 = socket.create_connection((host, port), timeout=10)
        self.addCleanup(sock2.close)
        head = S.recv_exact(sock2, len(S.MAGIC) + 32)
        self.assertEqual(head[:len(S.MAGIC)], S.MAGIC)
        sock2.sendall(b"x" * 64)
        self.assertEqual(sock2.recv(100), b"")
        self.gateway()  # the server still works

    def test_client_detects_a_server_without_the_token(self):
        srv = S.Server("127.0.0.1:0", b"other token")
        self.addCleanup(srv.close)
        import threading

        t = threading.Thread(target=srv.serve_forever)
        t.daemon = True
        t.start()
        sock = socket.create_connection(srv.address, timeout=10)
        self.addCleanup(sock.close)
        with self.assertRaises((EOFError, ValueError)):
            S.client_handshake(sock, TOKEN)

    def test_installvia(self):
        h = Host()
        self.addCleanup(h.kill)
        h.hello()
        with open(SOCKETSERVER) as f:
            src = f.read()
        c = h.exec_(src, ["installvia", {"bind": "127.0.0.1:0", "token": "via-token"}])
        address = h.item(c)
        self.assertTrue(address.startswith("127.0.0.1:"))
        self.assertEqual(h.receive(c)[:2], ("close", None))
        sock = connect(address, b"via-token")
        self.addCleanup(sock.close)
        g = host_over(sock)
        self.assertIsNotNone(g.hello())
        c = g.exec_("import os\nchannel.send(os.getppid())")
        self.assertEqual(g.item(c), h.info["pid"])
        g.send_frame(8, 0)
        g.wait_for(lambda: g.eof)
        self.assertEqual(h.terminate(), 0)

    def test_generated_token_is_printed(self):
        env = dict(os.environ)
        env.pop("EXECNET_SOCKET_TOKEN", None)
        p = subprocess.Popen([sys.executable, SOCKETSERVER, "--bind", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        try:
            addr = p.stdout.readline().decode().split()[-1]
            token = p.stdout.readline().decode().split()[-1].encode()
            self.assertEqual(len(token), 32)
            sock = connect(addr, token)
            sock.close()
        finally:
            p.kill()
            p.wait()
            p.stdout.close()


def wait_for(cond, limit=10.0):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def closed_by_server(sock, limit=10.0):
    """Reads (the server's greeting) until EOF; True if EOF came within
    `limit` seconds."""
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:  # reset: closed too
        return True


class UnderLoad(unittest.TestCase):
    """An in-process server (its stats and threads are visible here)."""

    def serve(self, **kw):
        lines = []
        kw.setdefault("log", S.RateLimitedLog(burst=5, window=3600, write=lines.append))
        srv = S.Server("127.0.0.1:0", TOKEN, **kw)
        t = threading.Thread(target=srv.serve_forever)
        t.daemon = True
        t.start()
        self.addCleanup(t.join, 10)
        self.addCleanup(srv.close)
        return srv, lines

    def idle(self, srv, n):
        socks = []
        for _ in range(n):
            s = socket.create_connection(srv.address, timeout=10)
            self.addCleanup(s.close)
            socks.append(s)
        return socks

    def authenticate(self, srv):
        sock = socket.create_connection(srv.address, timeout=10)
        self.addCleanup(sock.close)
        S.client_handshake(sock, TOKEN)
        # A program for the worker, so it exits quietly.
        code = zlib.compress(b"pass")
        sock.sendall(struct.pack(">I", len(code)) + code)
        return sock

    def test_the_cap_drops_the_oldest_pending_handshake(self):
        srv, lines = self.serve(max_startups=4)
        socks = self.idle(srv, 10)
        # The six oldest are closed, the four newest are still waiting.
        for s in socks[:6]:
            self.assertTrue(closed_by_server(s), "an old idle connection was kept")
        self.assertTrue(wait_for(lambda: srv.stats["accepted"] == 10))
        self.assertEqual(srv.pending(), 4)
        self.assertEqual(srv.stats["evicted"], 6)
        for s in socks[6:]:
            s.settimeout(0.2)
            self.assertEqual(len(S.recv_exact(s, len(S.MAGIC) + 32)), 49)
            with self.assertRaises(socket.timeout):
                s.recv(1)  # greeted, not closed
        # A client with the token gets through with the cap full of idlers.
        sock = self.authenticate(srv)
        sock.close()
        self.assertTrue(wait_for(lambda: srv.stats["authenticated"] == 1))
        self.assertTrue(closed_by_server(socks[6]), "the oldest idler was not dropped")
        # One line per eviction up to the burst, the rest counted.
        self.assertEqual(len(lines), 5, lines)
        self.assertIn("dropped the oldest", lines[0])

    def test_unfinished_handshakes_are_dropped_at_the_deadline(self):
        srv, lines = self.serve(handshake_timeout=0.3)
        idle, half = self.idle(srv, 2)
        S.recv_exact(half, len(S.MAGIC) + 32)
        half.sendall(b"y" * 40)  # part of an answer, never finished
        for s in (idle, half):
            self.assertTrue(closed_by_server(s, 10.0))
        self.assertEqual(srv.stats["timed_out"], 2)
        self.assertEqual(srv.pending(), 0)
        self.assertIn("not done within 0.3 s", lines[0])

    def test_threads_do_not_grow_with_connections(self):
        before = threading.active_count()
        srv, _ = self.serve(max_startups=64)
        socks = self.idle(srv, 300)
        self.assertTrue(wait_for(lambda: srv.stats["accepted"] == 300))
        self.authenticate(srv)
        self.assertTrue(wait_for(lambda: srv.stats["authenticated"] == 1))
        # The serving thread is the only one added, for 301 connections.
        self.assertLessEqual(threading.active_count(), before + 1)
        self.assertEqual(srv.pending(), 63)
        self.assertEqual(srv.stats["evicted"], 301 - 64)
        del socks

    def test_close_ends_pending_handshakes_and_the_listener(self):
        srv, _ = self.serve()
        (s,) = self.idle(srv, 1)
        self.assertTrue(wait_for(lambda: srv.pending() == 1))
        srv.close()
        self.assertTrue(closed_by_server(s))
        with self.assertRaises(OSError):
            socket.create_connection(srv.address, timeout=2).close()

    def test_a_bad_token_is_logged_and_counted(self):
        srv, lines = self.serve()
        sock = socket.create_connection(srv.address, timeout=10)
        self.addCleanup(sock.close)
        with self.assertRaises((EOFError, ValueError, OSError)):
            S.client_handshake(sock, b"wrong")
        self.assertTrue(wait_for(lambda: srv.stats["refused"] == 1))
        self.assertTrue(any("bad token" in line for line in lines), lines)


class RateLimitedLogTest(unittest.TestCase):
    def test_burst_then_one_summary_per_window(self):
        now, out = [0.0], []
        log = S.RateLimitedLog(burst=3, window=10.0, write=out.append, clock=lambda: now[0])
        for i in range(100):
            log("line %d" % i)
        self.assertEqual(out, ["line 0", "line 1", "line 2"])
        now[0] = 5.0
        log.flush()
        self.assertEqual(len(out), 3)  # the window is not over yet
        now[0] = 10.0
        log("line 100")
        self.assertEqual(out[3:], ["97 more log lines suppressed in the last 10 s", "line 100"])
        now[0] = 30.0
        log.flush()
        self.assertEqual(len(out), 5)  # nothing suppressed: no summary

    def test_arguments_are_checked(self):
        with self.assertRaises(ValueError):
            S.Server("127.0.0.1:0", TOKEN, max_startups=0)
        with self.assertRaises(ValueError):
            S.Server("127.0.0.1:0", TOKEN, handshake_timeout=0)


if __name__ == "__main__":
    unittest.main()
