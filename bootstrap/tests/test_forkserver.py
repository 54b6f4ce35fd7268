"""The fork server (bootstrap/forkserver.py) through its real start and control
protocol: forked workers speak the worker protocol over the host's pipes, each in
its own process group with nothing else open; the server reports how each ended
with its stderr tail, relays stderr on request, refuses a bad request, and when
the control connection ends kills what is left and exits."""
import os
import select
import socket
import struct
import subprocess
import sys
import time
import unittest
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostclient import HERE, SOURCE, Host, W, loader  # noqa: E402

FORKSERVER = os.path.join(HERE, "..", "forkserver.py")
FS_SOURCE = zlib.compress(open(FORKSERVER, "rb").read(), 9)
HDR = struct.Struct(">cQI")


def alive(pid):
    """Whether pid is a process that has not ended (a zombie has)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (IOError, OSError):
        return False


def wait_gone(pid, timeout=10):
    end = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.01)
    return not alive(pid)


class Server(object):
    """A fork server started as the host starts it."""

    def __init__(self, code=None, pass_fds=()):
        """code: (sys.version, marshal data) to send instead of compiling; pass_fds:
        descriptors the server inherits."""
        self.ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", loader(len(FS_SOURCE))],
            stdin=theirs.fileno(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, pass_fds=pass_fds)
        theirs.close()
        if code is None:
            head, compiled = ("0 %d -\n" % len(SOURCE)).encode(), b""
        else:
            version, compiled = code
            head = ("%d %d %s\n" % (len(compiled), len(SOURCE), version.encode().hex())).encode()
        self.ctl.sendall(FS_SOURCE + head + compiled + SOURCE)
        self.buf = b""
        self.pending = []
        # without (usable) compiled code the server hands its own back first
        # (a READY report is as long as a record's start: need(HDR.size) is safe)
        self.code = self.code_record()
        kind, token, _ = self.report()
        assert (kind, token) == (b"R", 0), (kind, token)
        self.token = 0

    def code_record(self, timeout=10):
        """The code record ahead of READY: (sys.version, marshal data)."""
        def need(n):
            end = time.monotonic() + timeout
            while len(self.buf) < n:
                if not select.select([self.ctl], [], [], max(0, end - time.monotonic()))[0]:
                    raise AssertionError("no code record within %s s" % timeout)
                b = self.ctl.recv(1 << 20)
                if not b:
                    raise EOFError("the fork server closed the control connection")
                self.buf += b
        need(HDR.size)  # a READY report is as long
        if self.buf[:8] != b"EXNCODE1":
            return None
        v = struct.unpack(">I", self.buf[8:12])[0]
        need(12 + v + 4)
        c = struct.unpack(">I", self.buf[12 + v:16 + v])[0]
        need(16 + v + c)
        version, code = self.buf[12:12 + v], self.buf[16 + v:16 + v + c]
        self.buf = self.buf[16 + v + c:]
        return version.decode(), code

    def report(self, timeout=10):
        """The next report: (kind, token, payload)."""
        end = time.monotonic() + timeout
        while True:
            if len(self.buf) >= HDR.size:
                kind, token, n = HDR.unpack(self.buf[:HDR.size])
                if len(self.buf) >= HDR.size + n:
                    payload = self.buf[HDR.size:HDR.size + n]
                    self.buf = self.buf[HDR.size + n:]
                    return kind, token, payload
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.ctl], [], [], left)[0]:
                raise AssertionError("no report within %s s" % timeout)
            b = self.ctl.recv(65536)
            if not b:
                raise EOFError("the fork server closed the control connection")
            self.buf += b

    def expect(self, kind, token, timeout=10):
        """The next report of `kind` for `token` (others are kept for later)."""
        for i, r in enumerate(self.pending):
            if r[0] == kind and r[1] == token:
                return self.pending.pop(i)[2]
        end = time.monotonic() + timeout
        while True:
            r = self.report(max(0.01, end - time.monotonic()))
            if r[0] == kind and r[1] == token:
                return r[2]
            self.pending.append(r)

    def fork(self, relay=False, flags=None, options=None):
        """(token, pid, Host) for a new forked worker. flags: the request's (default:
        bit 0 if relay); options: the Host HELLO's."""
        self.token += 1
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        if flags is None:
            flags = 1 if relay else 0
        req = b"F" + bytes([flags]) + b"\0" * 6 + struct.pack(">Q", self.token)
        self.ctl.sendmsg([req], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  struct.pack("2i", in_r, out_w))])
        os.close(in_r)
        os.close(out_w)
        pid = struct.unpack(">I", self.expect(b"S", self.token))[0]
        host = Host(stream=(os.fdopen(out_r, "rb", 0), os.fdopen(in_w, "wb", 0)),
                    options=options)
        return self.token, pid, host

    def close(self):
        self.ctl.close()
        try:
            rc = self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stderr.close()
        return rc


def run(host, source, timeout=10):
    cid = host.exec_(source)
    return host.item(cid, timeout)


def ended(status):
    kind, n = status[:1], struct.unpack(">i", status[1:5])[0]
    return kind.decode(), n, status[5:].decode("utf-8", "replace")


class ForkServer(unittest.TestCase):
    def setUp(self):
        self.server = Server()

    def tearDown(self):
        if self.server.proc.poll() is None:
            self.server.close()

    def test_forked_workers_are_full_workers_in_their_own_groups(self):
        s = self.server
        hosts = [s.fork() for _ in range(4)]
        seen = set()
        for token, pid, host in hosts:
            info = host.hello()
            self.assertEqual(info["pid"], pid)
            got = run(host, "import os; channel.send((os.getpid(), os.getppid(), "
                            "os.getpgid(0), os.getsid(0), sorted(os.listdir('/proc/self/fd'))))")
            mypid, ppid, pgid, sid, fds = got
            self.assertEqual((mypid, ppid, pgid, sid), (pid, s.proc.pid, pid, pid))
            # 0/1/2 and the worker's own: the protocol's two dups, its stderr dup, the
            # forwarding or nothing else (listdir's own descriptor comes and goes)
            links = [os.readlink("/proc/%d/fd/%s" % (pid, fd)) for fd in fds
                     if os.path.exists("/proc/%d/fd/%s" % (pid, fd))]
            self.assertFalse([x for x in links if x.startswith("socket:")], links)
            pipes = set(x for x in links if x.startswith("pipe:"))
            self.assertFalse(pipes & seen, "a pipe of another worker is open here")
            seen |= pipes
            seen.add(pid)
        self.assertEqual(len(set(p for _, p, _ in hosts)), 4)
        for token, pid, host in hosts:
            host.terminate()
            self.assertEqual(ended(s.expect(b"X", token))[:2], ("C", 0))

    def test_descriptors_the_server_inherited_are_not_in_its_workers(self):
        # a host with inheritable descriptors (high and low numbers) passes them to
        # the server; no worker may have them, nor another worker's pipes
        r, w = os.pipe()
        r2, w2 = os.pipe()
        high = 200
        os.dup2(w2, high)
        try:
            s = Server(pass_fds=(r, high))
        finally:
            for fd in (r, w, r2, w2, high):
                os.close(fd)
        try:
            theirs = set(os.readlink("/proc/%d/fd/%d" % (s.proc.pid, fd)) for fd in (r, high))
            self.assertEqual(len(theirs), 2)
            hosts = [s.fork() for _ in range(3)]
            for token, pid, host in hosts:
                fds = run(host, "import os; channel.send(sorted(os.listdir('/proc/self/fd')))")
                links = set()
                for fd in fds:
                    try:
                        links.add(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
                    except OSError:
                        pass  # listdir's own descriptor
                self.assertFalse(links & theirs, (fds, links))
                self.assertNotIn(str(high), fds)
            for token, pid, host in hosts:
                host.terminate()
                self.assertEqual(ended(s.expect(b"X", token))[:2], ("C", 0))
        finally:
            s.close()

    def test_a_killed_worker_is_reported_with_its_stderr_tail(self):
        s = self.server
        token, pid, host = s.fork()
        host.hello()
        cid = host.exec_("import os, sys\nsys.stderr.write('last words\\n')\nsys.stderr.flush()\n"
                         "os.kill(os.getpid(), 9)")
        kind, n, tail = ended(s.expect(b"X", token))
        self.assertEqual((kind, n), ("S", 9))
        self.assertIn("last words", tail)
        self.assertTrue(wait_gone(pid))
        del cid

    def test_stderr_is_relayed_on_request(self):
        s = self.server
        token, pid, host = s.fork(relay=True)
        host.hello()
        run(host, "import sys; sys.stderr.write('relayed text\\n'); sys.stderr.flush(); "
                  "channel.send(1)")
        out = s.expect(b"O", token)
        self.assertEqual(out[:1], b"\x02")  # the worker's fd, then its bytes
        self.assertIn(b"relayed text", out[1:])
        host.terminate()
        s.expect(b"X", token)

    def test_forward_relays_stdout_and_stderr_to_the_last_byte(self):
        # flag bit 1 (output "forward"): a stdout pipe of its own too; with the
        # HELLO's "stdout"/"stderr": "host" the worker forwards nothing itself (no
        # OUTPUT frames, no output thread) and what it writes just before os._exit
        # is relayed, each on its fd, before the exit report
        s = self.server
        opts = {"output": "forward", "stdout": "host", "stderr": "host"}
        token, pid, host = s.fork(flags=2, options=opts)
        host.hello()
        cid = host.exec_("import os, sys, _thread\n"
                         "channel.send(sys.modules['_thread']._count())\n"
                         "print('printed')\nsys.stderr.write('written\\n')\n"
                         "os.write(1, b'x' * 200000)\nos._exit(5)")
        self.assertEqual(host.item(cid), 1)  # the reader thread only
        got = {1: b"", 2: b""}
        while True:
            kind, t, payload = s.report()
            self.assertEqual(t, token)
            if kind == b"X":
                break
            self.assertEqual(kind, b"O")
            got[payload[0]] += payload[1:]
        self.assertEqual(ended(payload)[:2], ("C", 5))
        self.assertEqual(got[1], b"printed\n" + b"x" * 200000)
        self.assertEqual(got[2], b"written\n")
        self.assertEqual(host.output, [])

    def test_what_a_worker_executes_inherits_only_fds_0_to_2(self):
        # the protocol's pipes stay where they came in a forked worker: not
        # inheritable, or a process it starts would hold the host's pipes open
        # after the worker is gone (a popen worker's are dups, not inheritable)
        s = self.server
        for flags in (0, 1, 2):
            token, pid, host = s.fork(flags=flags, options={"output": "forward"})
            host.hello()
            fds = run(host, "import os\nchannel.send(sorted(\n"
                            "    int(f) for f in os.listdir('/proc/self/fd')\n"
                            "    if os.path.exists('/proc/self/fd/' + f) and os.get_inheritable(int(f))))")
            self.assertEqual(fds, [0, 1, 2], "flags %d" % flags)
            host.terminate()
            s.expect(b"X", token)

    def test_stdout_host_without_a_pipe_is_refused(self):
        # "stdout": "host" names a pipe only a forward request gives the worker
        s = self.server
        token, pid, host = s.fork(options={"output": "forward", "stdout": "host"})
        host.hello()
        host.wait_for(lambda: host.eof)
        self.assertIn("without a pipe", host.terminated or "")
        self.assertEqual(ended(s.expect(b"X", token))[:2], ("C", 1))

    def test_requests_sent_together_are_all_served(self):
        # several requests waiting at once (the server reads them all, then forks),
        # a bad one among them, the last one's bytes split over two sends
        s = self.server
        ends = []
        for i, token in enumerate((101, 102, 103, 104)):
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            req = b"F\0" + b"\0" * 6 + struct.pack(">Q", token)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", in_r, out_w))]
            if i == 3:
                s.ctl.sendmsg([req[:5]], rights)
                time.sleep(0.05)
                s.ctl.sendall(req[5:])
            else:
                s.ctl.sendmsg([req], rights)
            os.close(in_r)
            os.close(out_w)
            ends.append((token, out_r, in_w))
            if i == 1:
                s.ctl.sendall(b"F\0" + b"\0" * 6 + struct.pack(">Q", 77))  # no descriptors
        self.assertIn(b"descriptors", s.expect(b"E", 77))
        hosts = []
        for token, out_r, in_w in ends:
            pid = struct.unpack(">I", s.expect(b"S", token))[0]
            host = Host(stream=(os.fdopen(out_r, "rb", 0), os.fdopen(in_w, "wb", 0)))
            self.assertEqual(host.hello()["pid"], pid)
            self.assertEqual(run(host, "channel.send(21 * 2)"), 42)
            hosts.append((token, pid, host))
        self.assertEqual(len(set(pid for _, pid, _ in hosts)), 4)
        # each has its own pipes only, though the others' were open in the server
        # when it was forked
        seen = set()
        for token, pid, host in hosts:
            fds = run(host, "import os; channel.send(sorted(os.listdir('/proc/self/fd')))")
            pipes = set()
            for fd in fds:
                try:
                    link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue  # listdir's own descriptor
                if link.startswith("pipe:"):
                    pipes.add(link)
            self.assertFalse(pipes & seen, "a pipe of another worker is open here")
            seen |= pipes
        for token, pid, host in hosts:
            host.terminate()
            self.assertEqual(ended(s.expect(b"X", token))[:2], ("C", 0))

    def test_a_request_without_descriptors_is_refused(self):
        s = self.server
        s.ctl.sendall(b"F\0" + b"\0" * 6 + struct.pack(">Q", 77))
        self.assertIn(b"descriptors", s.expect(b"E", 77))
        token, pid, host = s.fork()  # the server still serves
        self.assertEqual(host.hello()["pid"], pid)
        host.terminate()

    def test_the_end_of_the_control_connection_ends_server_and_workers(self):
        s = self.server
        token, pid, host = s.fork()
        host.hello()
        grand = run(host, "import subprocess; p = subprocess.Popen(['sleep', '60']); "
                          "channel.send(p.pid)")
        self.assertEqual(s.close(), 0)
        self.assertTrue(wait_gone(pid), "the worker outlived its server")
        self.assertTrue(wait_gone(grand), "the worker's child outlived the server")

    def test_compiled_code_handed_back_is_loaded_by_the_next_server(self):
        version, code = self.server.code
        self.assertEqual(version, sys.version)
        again = Server(code=(version, code))
        try:
            self.assertIsNone(again.code)  # it loaded ours: no record came back
            token, pid, host = again.fork()
            self.assertEqual(run(host, "channel.send(6 * 7)"), 42)
            host.terminate()
        finally:
            again.close()
        # another version's code is never loaded: the server compiles instead
        foreign = Server(code=("0.0 not this interpreter", b"\xff" * 64))
        try:
            self.assertEqual(foreign.code[0], sys.version)
            token, pid, host = foreign.fork()
            self.assertEqual(run(host, "channel.send(6 * 7)"), 42)
            host.terminate()
        finally:
            foreign.close()

    def test_a_worker_that_forks_keeps_working(self):
        s = self.server
        token, pid, host = s.fork()
        host.hello()
        got = run(host, "import os\nr, w = os.pipe()\npid = os.fork()\n"
                        "if pid == 0:\n    os.write(w, b'child'); os._exit(0)\n"
                        "os.close(w); data = os.read(r, 10); os.waitpid(pid, 0)\n"
                        "channel.send(data)")
        self.assertEqual(got, b"child")
        self.assertEqual(run(host, "channel.send(6 * 7)"), 42)
        host.terminate()
        self.assertEqual(ended(s.expect(b"X", token))[:2], ("C", 0))


if __name__ == "__main__":
    unittest.main()
