"""The standalone socket server: token handshake, many connections, installvia."""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

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


if __name__ == "__main__":
    unittest.main()
