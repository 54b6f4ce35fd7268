"""execnet socket server: serves execnet gateways over TCP (stdlib only).

    python socketserver.py [--bind 127.0.0.1:8888] [--token-file FILE]

Binds loopback by default (port 0 picks a free port) and prints
"listening on HOST:PORT" on stdout once bound. The token is the content of
FILE (surrounding whitespace stripped), else $EXECNET_SOCKET_TOKEN, else a
random one printed as "token TOKEN" on stdout. Each connection gets a thread;
after authentication it runs a worker in a child process whose stdin and stdout
are the connection (a worker owns process-wide state -- fds 0/1/2, signal
handlers, the main thread, os._exit at termination -- so it cannot share a
process with the server or with other workers).

Handshake, before anything is executed (all on the connection, in order):

  server -> client  MAGIC = b"EXECNET-SOCKET/1\\n" (17 bytes), then Ns (32 random bytes)
  client -> server  Nc (32 random bytes), then
                    HMAC-SHA256(key=token, msg=b"execnet-client" + Ns + Nc) (32 bytes)
  server            checks the MAC (constant time); on mismatch, or if the 64 bytes
                    do not arrive within 10 s, it closes the connection, sending nothing
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
import hashlib
import hmac
import os
import socket
import subprocess
import sys
import threading

MAGIC = b"EXECNET-SOCKET/1\n"
LOADER = ("import sys,zlib,struct;b=sys.stdin.buffer;"
          "exec(zlib.decompress(b.read(struct.unpack('>I',b.read(4))[0])))")
HANDSHAKE_TIMEOUT = 10.0


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


class Server(object):
    def __init__(self, bind="127.0.0.1:8888", token=None, python=None):
        if isinstance(token, str):
            token = token.encode("utf-8")
        if not token:
            raise ValueError("a non-empty token is required")
        self.token, self.python = token, python or sys.executable
        host, port = parse_bind(bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.address = self.sock.getsockname()[:2]

    def serve_forever(self):
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return  # closed
            t = threading.Thread(target=self.handle, args=(conn, peer))
            t.daemon = True
            t.start()

    def handle(self, conn, peer):
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(HANDSHAKE_TIMEOUT)
            ns = os.urandom(32)
            conn.sendall(MAGIC + ns)
            answer = recv_exact(conn, 64)
            nc = answer[:32]
            if not hmac.compare_digest(answer[32:], mac(self.token, b"execnet-client", ns, nc)):
                log("refused %s: bad token" % (peer,))
                return
            conn.sendall(mac(self.token, b"execnet-server", nc, ns))
            conn.settimeout(None)  # the worker needs a blocking descriptor
            fd = conn.fileno()
            proc = subprocess.Popen([self.python, "-u", "-c", LOADER], stdin=fd, stdout=fd)
            conn.close()
            proc.wait()
        except Exception as e:
            log("connection from %s failed: %s" % (peer, e))
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def log(msg):
    try:
        sys.stderr.write("execnet-socketserver: %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


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
    server = Server(args.bind, token)
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
