# execnet fork server (popen//fork; docs/architecture.md, "Fork workers").
#
# Stdlib only; runs unchanged on CPython 3.6-3.13 and PyPy3, like the worker. One
# interpreter start serves many gateways: this process loads the worker once and
# forks a ready worker per request, so each further gateway costs a fork, not an
# interpreter start and a compile.
#
# Start: the host runs  python [-B] -u -c BOOT_LOADER  (execnet_bootstrap::
# boot_loader, as a popen start does) with stdin a unix stream socket (the control
# connection), stdout a pipe and stderr its own. It writes a line "K S VERSION_HEX",
# K bytes of this file compiled and marshalled by this interpreter version (K may
# be 0), S bytes of this file zlib-compressed: the loader runs the compiled code if
# it is this version's, else compiles the source and writes its code to stdout in
# a code record (b"EXNCODE1", 4-byte length and sys.version, 4-byte length and
# marshal data) for the host's cache. Without a cache entry to key on, the loader
# is the plain one, "import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read(S)))",
# and only the S bytes come. main() closes stdout first (its end tells the host
# that no record is coming). Then the host writes the worker the same way (a line
# "K S VERSION_HEX", K bytes of compiled worker, S bytes of its compressed source)
# and sends nothing more until READY; without usable compiled code the server
# compiles the worker and hands its code back in a code record on the control
# connection, ahead of READY.
#
# Requests (host -> server), 16 bytes each:  b"F", flags, 6 zero bytes, token (8,
# big-endian), with two descriptors attached (SCM_RIGHTS): the worker's stdin (read
# end of a pipe) and stdout (write end). Flags bit 0: relay the worker's stderr to
# the host as it comes (output mode "inherit"). Bit 1 (output mode "forward"): the
# worker's fd 1 gets a pipe of its own too, read here, and both its fds are relayed
# as they come, so that what it writes just before it dies is not lost with it (its
# own output thread could die first). The token names the gateway in every report
# about it.
#
# Reports (server -> host):  kind (1 byte), token (8), payload length (4), payload.
#   R  ready (token 0)
#   S  started: the worker's pid (4 bytes)
#   E  not started: why (UTF-8)
#   O  output of the worker (relay requested): the fd (1 byte: 1 or 2), its bytes
#   X  ended: b"C" exit code or b"S" signal, the number (4 bytes, signed), then the
#      last bytes of the worker's stderr
#
# A worker is a child of this server: its own session and process group (setsid),
# the host's pipes as they came (its input and output, not inheritable: the worker's
# main reads and writes them as they are), fd 0 /dev/null, fd 2 a fresh pipe read
# here, fd 1 a dup of it or (bit 1) a pipe of its own read here too, every other
# descriptor closed (nothing of another gateway or of the server is left in it);
# then the worker's process-mode main runs as in a fresh interpreter, less what the
# server did once for all of them (the worker's _prepare_fork). The server
# reaps its children and reports how each ended, with the tail of its stderr. At the
# end of the control connection (the host closed it or died) it kills every worker's
# process group it still has, reaps them and exits.
import os
import sys
import zlib
import _signal  # not "signal": that imports enum
import _socket
import _struct as struct
import select
from _collections import deque  # the C module: "collections" costs ~1 ms to import

# the boot loader sets _execnet_boot in __main__ (our globals) when it loaded our
# compiled code; load_worker sets it again for the worker: this keeps ours (tests)
_execnet_server_boot = globals().get("_execnet_boot") is True
TAIL = 8192  # stderr bytes kept per worker for its exit report
REQUEST = 16
BATCH = 64  # requests read before the forks start
MSG_DONTWAIT = getattr(_socket, "MSG_DONTWAIT", 0)  # 0: one request per wake-up
HDR = struct.Struct(">cQI")
DEBUG = os.environ.get("EXECNET_DEBUG")


def _trace(*a):
    if DEBUG:
        try:
            os.write(2, ("[forkserver %d] %s\n" % (os.getpid(), " ".join(map(str, a)))).encode())
        except OSError:
            pass


def _readn(f, n):
    b = f.read(n)
    if b is None or len(b) != n:
        raise EOFError("control input ended during the start (%d of %d bytes)" % (len(b or b""), n))
    return b


def load_worker(inp, ctl):
    """Read the worker (compiled code or source) from the control input and define
    it (only: thread-mode contract) in a namespace of its own; a worker compiled
    here is handed back to the host in a code record."""
    import marshal

    head = inp.readline().split()
    if len(head) != 3:
        raise EOFError("control input ended during the start (no header)")
    k, n = int(head[0]), int(head[1])
    compiled = _readn(inp, k) if k else b""
    source = _readn(inp, n)
    global _execnet_boot  # in __main__ (the loader's exec): which part ran, as popen's
    _execnet_boot = bool(compiled) and sys.version.encode().hex() == head[2].decode()
    if _execnet_boot:
        code = marshal.loads(compiled)  # only this version's marshal data is loaded
    else:
        code = compile(zlib.decompress(source), "<string>", "exec")
        m, v = marshal.dumps(code), sys.version.encode()
        ctl.sendall(b"EXNCODE1" + struct.pack(">I", len(v)) + v + struct.pack(">I", len(m)) + m)
    del compiled, source
    ns = {"__name__": "execnet_fork_worker", "__builtins__": __builtins__}
    exec(code, ns)
    # the first compile() of a process sets up the compiler's AST types (~0.4 ms and
    # their pages); done here, every child's first remote_exec starts warm
    compile("pass", "<warm-up>", "exec")
    # the execnet compatibility module, which each worker builds at its first exec
    # (~0.13 ms of CPU and ~30 copy-on-write page faults in a forked child)
    compat = ns.get("_execnet")
    if compat is not None:
        compat()
    ns["_prepare_fork"]()
    return ns


def _status(st):
    if os.WIFSIGNALED(st):
        return b"S" + struct.pack(">i", os.WTERMSIG(st))
    if os.WIFEXITED(st):
        return b"C" + struct.pack(">i", os.WEXITSTATUS(st))
    return b"C" + struct.pack(">i", -1)


def _highest_fd():
    """The highest open descriptor (the server's start: what it inherited), or None
    without /proc."""
    try:
        return max(int(x) for x in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return None


class Child(object):
    __slots__ = ("token", "pid", "fds", "tail", "relay", "alive")

    def __init__(self, token, pid, fds, relay):
        self.token, self.pid, self.relay = token, pid, relay
        self.fds = fds  # {read end: the worker's fd (2: stderr, 1: stdout)}, until their ends
        self.tail = bytearray()
        self.alive = True


class Server(object):
    def __init__(self, ctl, worker):
        self.ctl = ctl  # _socket.socket: the control connection
        self.worker = worker  # the worker's namespace
        self.children = {}  # pid -> Child, until reaped
        # reaped workers: their process groups (what they started) may outlive them
        self.reaped = deque(maxlen=4096)
        self.pipes = {}  # output pipe read end -> Child, until its end of file
        self.buf, self.fds = b"", []
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # no descriptor of ours is above top (what we inherited, then every one we
        # make or receive): a child closes 3..top (one close_range() call on 3.10+,
        # a few dozen close() before), not a /proc listing of its fds
        self.top = _highest_fd()
        self.poll = select.poll()
        self.poll.register(ctl.fileno(), select.POLLIN)
        self.poll.register(self.wake_r, select.POLLIN)

    # -- reports
    def report(self, kind, token, payload=b""):
        try:
            self.ctl.sendall(HDR.pack(kind, token, len(payload)) + payload)
            return True
        except OSError as e:
            _trace("report failed:", e)
            return False

    # -- the loop
    def serve(self):
        # SIGCHLD wakes the loop (the C handler writes to wake_w); the Python-level
        # handler does nothing, the loop reaps
        _signal.set_wakeup_fd(self.wake_w)
        _signal.signal(_signal.SIGCHLD, lambda s, f: None)
        self.report(b"R", 0)
        try:
            import gc

            gc.freeze()  # 3.7+: objects of the server stay out of the children's collections
        except (ImportError, AttributeError):
            pass
        while True:
            try:
                ready = self.poll.poll(1000)
            except InterruptedError:
                ready = []
            for fd, ev in ready:
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except OSError:
                        pass
                elif fd in self.pipes:
                    self.read_output(fd)
            self.reap()
            for fd, ev in ready:
                if fd == self.ctl.fileno() and not self.control():
                    self.shutdown()
                    return

    def control(self):
        """Read the requests that have come and serve the whole ones (a part is kept
        for later); False at the end of the control connection."""
        batch, alive, flags = [], True, 0
        while len(batch) < BATCH:
            try:
                data, anc, _, _ = self.ctl.recvmsg(
                    REQUEST - len(self.buf), _socket.CMSG_SPACE(8 * 4), flags)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                _trace("control connection failed:", e)
                data, anc = b"", ()
            for level, kind, payload in anc:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    n = len(payload) // 4
                    self.fds.extend(struct.unpack("%di" % n, payload[:4 * n]))
                    self.seen(self.fds)
            if not data:
                self.discard_fds()
                alive = False
                break
            self.buf += data
            if len(self.buf) == REQUEST:
                batch.append((self.buf, self.fds))
                self.buf, self.fds = b"", []
            if not MSG_DONTWAIT:
                break
            # more only if it has come already (each request is a message of its own,
            # with its descriptors)
            flags = MSG_DONTWAIT
        self.requests(batch)
        return alive

    def seen(self, fds):
        if self.top is not None and fds:
            self.top = max(self.top, max(fds))

    def discard_fds(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def requests(self, batch):
        """Fork a worker per request: everything a fork needs is made first, the
        forks run back to back, the bookkeeping and reports come after them. After
        each fork every page this process writes is copied (copy on write) once
        more, so what runs between two forks costs once per fork, the rest once."""
        jobs = [j for j in (self.prepare(req, fds) for req, fds in batch) if j]
        fork, pids = os.fork, []
        for job in jobs:
            try:
                pid = fork()
            except OSError as e:
                pid = e
            if pid == 0:
                self.child(job[2], job[3], job[4])  # never returns
            pids.append(pid)
        reports = []
        for (token, relay, inr, outw, ends), pid in zip(jobs, pids):
            os.close(inr)
            os.close(outw)
            for r, w, _ in ends:
                os.close(w)
            if not isinstance(pid, int):
                for r, w, _ in ends:
                    os.close(r)
                self.report(b"E", token, ("fork failed: %s" % pid).encode())
                continue
            c = Child(token, pid, dict((r, wfd) for r, w, wfd in ends), relay)
            self.children[pid] = c
            for r in c.fds:
                os.set_blocking(r, False)
                self.pipes[r] = c
                self.poll.register(r, select.POLLIN)
            _trace("forked", pid, "for token", token)
            reports.append(HDR.pack(b"S", token, 4) + struct.pack(">I", pid))
        if reports:
            try:
                self.ctl.sendall(b"".join(reports))
            except OSError as e:
                _trace("report failed:", e)

    def prepare(self, req, fds):
        """(token, relay, stdin, stdout, [(read end, write end, the worker's fd)] of
        its output pipes) for a request, or None (refused: reported). relay: the
        worker fds whose output is relayed, as bits (fd 1: 1, fd 2: 2): 0 none, 2
        stderr (inherit), 3 both (forward)."""
        token = struct.unpack(">Q", req[8:16])[0]
        if req[:1] != b"F" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            self.report(b"E", token, ("bad request %r with %d descriptors"
                                      % (req[:2], len(fds))).encode())
            return None
        inr, outw = fds
        relay = 3 if req[1] & 2 else 2 * (req[1] & 1)
        ends = []
        try:
            for wfd in (2, 1) if relay == 3 else (2,):
                r, w = os.pipe()
                ends.append((r, w, wfd))
                self.seen((r, w))
        except OSError as e:
            for r, w, _ in ends:
                os.close(r)
                os.close(w)
            os.close(inr)
            os.close(outw)
            self.report(b"E", token, ("no output pipe: %s" % e).encode())
            return None
        return token, relay, inr, outw, ends

    def child(self, inr, outw, ends):
        """In the forked child: become a worker process, never return."""
        try:
            _signal.set_wakeup_fd(-1)
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            os.setsid()  # own session and process group: the host kills the group
            # fd 0 is /dev/null as ours; the output pipes go to 2 and 1 (fd 1 a
            # dup of stderr's unless it has its own); the protocol's pipes stay
            # where they are (the worker reads and writes them as they are: no
            # moving off fds 0/1 as in a popen worker), not inherited by what the
            # worker executes, as its own dups there are not
            for r, w, wfd in ends:
                os.dup2(w, wfd)
            if len(ends) == 1:
                os.dup2(2, 1)
            os.set_inheritable(inr, False)
            os.set_inheritable(outw, False)
            # the control socket object must not close a reused descriptor later
            self.ctl.detach()
            lo = 3
            for fd in sorted((inr, outw)):  # every other descriptor goes
                os.closerange(lo, fd)
                lo = fd + 1
            os.closerange(lo, 65536 if self.top is None else self.top + 1)
            self.worker["_main"]((inr, outw), len(ends) > 1)
        except BaseException as e:
            try:
                os.write(2, ("execnet-worker: bootstrap failed: fork server child: %r\n"
                             % (e,)).encode("utf-8", "replace"))
            except BaseException:
                pass
        finally:
            os._exit(1)

    def read_output(self, fd):
        """Read what has come on one of a worker's output pipes: True if something
        had, None if nothing had, False at its end (then it is closed)."""
        c = self.pipes[fd]
        try:
            b = os.read(fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            b = b""
        if not b:
            self.poll.unregister(fd)
            os.close(fd)
            del self.pipes[fd]
            del c.fds[fd]
            return False
        self.keep(c, c.fds[fd], b)
        return True

    def keep(self, c, wfd, b):
        if wfd == 2 and c.alive:
            c.tail += b
            if len(c.tail) > TAIL:
                del c.tail[:-TAIL]
        if c.relay & wfd:
            self.report(b"O", c.token, bytes((wfd,)) + b)

    def reap(self):
        while self.children:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            c = self.children.pop(pid, None)
            if c is None:
                continue
            # what the worker wrote before it ended is in its pipes now (unless
            # what it started holds them open: then up to 1 MiB each, not to block)
            for fd in list(c.fds):
                for _ in range(16):
                    if not self.read_output(fd):
                        break
            c.alive = False
            self.reaped.append(pid)
            _trace("reaped", pid, st)
            self.report(b"X", c.token, _status(st) + bytes(c.tail))

    def shutdown(self):
        """The host has gone: no worker of ours outlives it."""
        import time

        for pid in list(self.children):
            try:
                os.killpg(pid, _signal.SIGKILL)
            except OSError:
                try:
                    os.kill(pid, _signal.SIGKILL)  # forked, not yet in its own group
                except OSError:
                    pass
        # a worker that ended first (its own stdin ended with the host) may have
        # left processes in its group: those groups that still have members go too
        # (a group id stays reserved while it has members, so none is a stranger's)
        for pgid in set(self.worker["_group_members"](set(self.reaped)).values()):
            try:
                os.killpg(pgid, _signal.SIGKILL)
            except OSError:
                pass
        end = time.monotonic() + 2.0
        while self.children and time.monotonic() < end:
            self.reap()
            if self.children:
                time.sleep(0.005)
        _trace("exiting")


def main():
    # stdout was the loader's (our code record, if it compiled): its end tells the
    # host that nothing more comes there
    dn = os.open(os.devnull, os.O_RDWR)
    os.dup2(dn, 1)
    ctl = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, os.dup(0))
    worker = load_worker(sys.stdin.buffer, ctl)
    # the control connection moves off fd 0 (fd 0 becomes /dev/null); everything
    # the loader read through sys.stdin.buffer was the start's, nothing is buffered
    os.dup2(dn, 0)
    os.close(dn)
    Server(ctl, worker).serve()
    os._exit(0)


if __name__ == "__main__":
    main()
