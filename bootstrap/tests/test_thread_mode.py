"""Thread mode (contract T): the worker source executed in a namespace of this very
process, serve_thread(read_fd, write_fd) serving one gateway over two pipes in a
thread, driven by the test host (hostclient.Host) over the other pipe ends."""
import os
import signal
import sys
import threading
import time
import traceback  # noqa: F401 -- loaded up front: the worker imports it on errors
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostclient import WORKER, Host, W, ref  # noqa: E402

try:
    import ctypes  # noqa: F401 -- loaded up front: thread mode imports it to interrupt
except ImportError:
    ctypes = None

SOURCE = open(WORKER).read()
INTERRUPTS = sys.implementation.name == "cpython"  # PyThreadState_SetAsyncExc
# PyPy ignores an exec's own __builtins__, and with it the per-exec __import__ that
# answers "import execnet" in thread mode (the Python package's hosts are CPython)
OWN_IMPORT = sys.implementation.name == "cpython"
ECHO = "for x in channel:\n    channel.send(x)\n"
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGCHLD, signal.SIGHUP]
# remote code left running after TERMINATE: the tests wait until its threads are gone,
# so that none is left behind
LOOP = ("import _thread, time\nt = time.time()\nchannel.send(_thread.get_ident())\n"
        "while time.time() - t < 3:\n%s")
SPIN = "    pass\n"
DEAF = "    try:\n        time.sleep(0.01)\n    except KeyboardInterrupt:\n        pass\n"


def gone(idents, bound=10):
    """Whether the threads idents have all ended within bound seconds."""
    end = time.time() + bound
    while time.time() < end:
        if not set(idents) & set(sys._current_frames()):
            return True
        time.sleep(0.05)
    return False


def worker_namespace():
    ns = {"__name__": "execnet_thread_worker"}
    exec(compile(SOURCE, "<execnet worker>", "exec"), ns)
    return ns


def fd_state():
    return [(st.st_dev, st.st_ino, st.st_mode) for st in map(os.fstat, (0, 1, 2))]


def ident(fd):
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    except OSError:
        return None


class ThreadGateway(object):
    """serve_thread in a thread of this process, a Host on the other pipe ends."""

    def __init__(self, test, ns=None, **kw):
        self.ns = ns or worker_namespace()
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        self.worker_fds = (to_worker_r, from_worker_w)
        self.pipes = [ident(fd) for fd in self.worker_fds]
        self.result = []

        def run():
            try:
                self.result.append(self.ns["serve_thread"](to_worker_r, from_worker_w))
            except BaseException as e:  # the test fails on it: serve_thread never raises
                self.result.append(e)

        self.thread = threading.Thread(target=run)
        self.thread.daemon = True
        self.thread.start()
        self.host = Host(stream=(os.fdopen(from_worker_r, "rb"), os.fdopen(to_worker_w, "wb")),
                         **kw)
        test.addCleanup(self.cleanup)

    def cleanup(self):
        self.host.write(None)  # ends the host's writer thread
        self.host.wt.join(5)
        for f in (self.host.wfile, self.host.rfile):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        self.thread.join(10)

    def terminate(self, bound=5):
        """TERMINATE; serve_thread must return within bound seconds."""
        self.host.send_frame(W.TERMINATE, 0)
        return self.ended(bound)

    def ended(self, bound=5):
        self.host.wait_for(lambda: self.host.eof, bound)
        self.thread.join(bound)
        if self.thread.is_alive():
            raise AssertionError("serve_thread did not return within %s s" % bound)
        if self.result != [None]:
            raise AssertionError("serve_thread returned/raised %r" % (self.result,))
        # whether each fd still is our pipe (another thread may have reused the number)
        return [ident(fd) == p for fd, p in zip(self.worker_fds, self.pipes)]


class DefinesOnly(unittest.TestCase):
    def test_exec_of_the_source_only_defines(self):
        threads, fds = threading.active_count(), fd_state()
        ns = worker_namespace()
        self.assertTrue(callable(ns["serve_thread"]))
        self.assertEqual(threading.active_count(), threads)
        self.assertEqual(fd_state(), fds)
        self.assertNotIn("execnet", sys.modules)


class ThreadMode(unittest.TestCase):
    def gateway(self, **kw):
        g = ThreadGateway(self, **kw)
        info = g.host.hello()
        self.assertIsNotNone(info, "no HELLO")
        return g

    def test_hello_exec_channels_both_ways_and_terminate(self):
        g = self.gateway()
        h = g.host
        self.assertEqual(h.info["pid"], os.getpid())
        self.assertEqual(h.info["execmodel"], "thread")
        self.assertEqual(h.info["implementation"], sys.implementation.name)
        c = h.exec_(ECHO)
        for v in [1, "two", (3, None), {"k": [b"v"]}, 10 ** 30, {1, 2}, b"x" * 300000]:
            h.send(c, v)
            self.assertEqual(h.item(c), v)
        c2 = h.exec_("got = channel.receive()\ngot['chan'].send('via host channel')\n"
                     "mine = channel.gateway.newchannel()\nchannel.send(mine)\n"
                     "channel.send(mine.receive())\n")
        hc = h.newchannel()
        h.send(c2, {"chan": ref(hc)})
        self.assertEqual(h.item(hc), "via host channel")
        mine = h.item(c2).id
        h.send(mine, "to a worker channel")
        self.assertEqual(h.item(c2), "to a worker channel")
        self.assertEqual(h.receive(c2)[:2], ("close", None))
        self.assertEqual(h.request_status(3)["execmodel"], "thread")
        self.assertEqual(g.terminate(), [False, False])  # both fds closed
        self.assertEqual(h.terminated, "")

    def test_execs_run_in_threads_of_their_own_with_execmodel_thread(self):
        g = self.gateway()
        h = g.host
        chans = [h.exec_("import _thread\nchannel.send(_thread.get_ident())\n"
                         "channel.receive()\n") for _ in range(3)]
        idents = [h.item(c) for c in chans]
        self.assertEqual(len(set(idents)), 3)
        self.assertNotIn(g.thread.ident, idents)
        for c in chans:
            h.send(c, None)
        g.terminate()

    def test_main_thread_only_runs_every_exec_in_the_calling_thread(self):
        g = self.gateway(options={"execmodel": "main_thread_only"})
        h = g.host
        self.assertEqual(h.info["execmodel"], "main_thread_only")
        # (the callback runs on the reader thread while the exec waits on an Event; a
        # receive() may read the stream itself, as in a worker process)
        src = ("import _thread, threading\n"
               "channel.send((channel.receive(), _thread.get_ident()))\n"
               "ch = channel.gateway.newchannel()\nev = threading.Event()\n"
               "def cb(x):\n    channel.send(('cb', _thread.get_ident()))\n    ev.set()\n"
               "ch.setcallback(cb)\nchannel.send(ch)\nev.wait(10)\nchannel.receive()\n")
        chans = [h.exec_(src) for _ in range(3)]
        for i, c in enumerate(chans):
            h.send(c, i)
            got = h.item(c)
            self.assertEqual(got, (i, g.thread.ident))  # queued, one after another
            sub = h.item(c).id
            h.send(sub, "x")
            kind, reader = h.item(c)
            self.assertEqual(kind, "cb")
            self.assertNotEqual(reader, g.thread.ident)  # reading is another thread's job
            h.send(c, "next")
            self.assertEqual(h.receive(c)[:2], ("close", None))
        g.terminate()

    def test_process_wide_state_is_left_alone(self):
        fds, handlers = fd_state(), [signal.getsignal(s) for s in SIGNALS]
        ns = worker_namespace()
        modules = set(sys.modules)
        g = self.gateway(ns=ns, options={"output": "forward", "execmodel": "thread"})
        h = g.host
        c = h.exec_("import os, sys\nm = channel.gateway.execmodel\n"
                    "channel.send((m.backend, m.RLock() is not None, os.getpid()))\n")
        self.assertEqual(h.item(c), ("thread", True, os.getpid()))
        if OWN_IMPORT:
            c = h.exec_(
                "import sys\nimport execnet, execnet.gateway_base\n"
                "from execnet.gateway_base import ExecModel\n"
                "channel.send((execnet.__engine__, 'execnet' in sys.modules,\n"
                "              isinstance(channel.gateway.execmodel, ExecModel),\n"
                "              execnet.dumps([1]) == b'\\x81\\x01'))\n"
                "def later():\n    import execnet\n    return execnet.__engine__\n"
                "channel.send(later())\n")
            self.assertEqual(h.item(c), ("execnet-rs", False, True, True))
            self.assertEqual(h.item(c), "execnet-rs")  # functions of the exec see it too
        else:
            print("SKIPPED: import execnet in thread mode: PyPy ignores an exec's own "
                  "__builtins__", file=sys.stderr)
        self.assertNotIn("execnet", sys.modules)
        self.assertEqual(g.terminate(), [False, False])
        self.assertEqual(h.output, [])  # "forward" is accepted and ignored
        self.assertEqual(fd_state(), fds)
        self.assertEqual([signal.getsignal(s) for s in SIGNALS], handlers)
        self.assertEqual(set(sys.modules) - modules, set())
        self.assertNotIn("execnet", sys.modules)

    def test_terminate_returns_while_remote_code_still_loops(self):
        # execmodel thread: serve_thread's own thread runs no exec and returns; the
        # busy executions are told to stop (a KeyboardInterrupt where the interpreter
        # can raise one in another thread, CPython) and their channels are closed
        g = self.gateway()
        h = g.host
        c1 = h.exec_(LOOP % SPIN)
        c2 = h.exec_(LOOP % DEAF)
        c3 = h.exec_("channel.receive()")
        idents = [h.item(c1), h.item(c2)]
        self.assertEqual(g.terminate(bound=4), [False, False])
        kind, err, _ = h.queues[c1][0]
        self.assertEqual(kind, "close")
        if INTERRUPTS:
            self.assertIn("KeyboardInterrupt", err)
        else:
            print("SKIPPED: %s cannot interrupt a thread: the loop runs on, detached"
                  % sys.implementation.name, file=sys.stderr)
            self.assertIn("terminated while this execution was still running", err)
        kind, err, _ = h.queues[c2][0]
        self.assertEqual(kind, "close")
        self.assertIn("terminated while this execution was still running", err)
        self.assertEqual(h.queues[c3][0][:2], ("close", None))
        self.assertTrue(gone(idents))

    @unittest.skipUnless(INTERRUPTS, "SKIPPED: only CPython can interrupt the calling thread")
    def test_terminate_interrupts_main_thread_only_execution(self):
        g = self.gateway(options={"execmodel": "main_thread_only"})
        h = g.host
        c = h.exec_(LOOP % SPIN)
        self.assertEqual(h.item(c), g.thread.ident)
        self.assertEqual(g.terminate(bound=4), [False, False])
        kind, err, _ = h.queues[c][0]
        self.assertEqual(kind, "close")
        self.assertIn("KeyboardInterrupt", err)

    def test_end_of_input_ends_the_session(self):
        g = self.gateway()
        g.host.exec_("channel.receive()")
        g.host.wfile.close()
        self.assertEqual(g.ended(), [False, False])

    def test_protocol_violation_ends_the_session(self):
        g = self.gateway()
        g.host.send_frame(0x42, 0)
        self.assertEqual(g.ended(), [False, False])
        self.assertIn("protocol violation", g.host.terminated)

    def test_bad_hello_is_answered_with_terminate(self):
        g = ThreadGateway(self, version=2)
        self.assertEqual(g.ended(), [False, False])
        self.assertIsNone(g.host.info)
        self.assertIn("version mismatch: ours 1, theirs 2", g.host.terminated)

    def test_two_gateways_from_one_namespace(self):
        ns = worker_namespace()
        a, b = self.gateway(ns=ns), self.gateway(ns=ns)
        ca = a.host.exec_("channel.send(channel.receive() + 1)")
        cb = b.host.exec_("channel.send(channel.receive() * 2)")
        b.host.send(cb, 21)
        a.host.send(ca, 41)
        self.assertEqual(a.host.item(ca), 42)
        self.assertEqual(b.host.item(cb), 42)
        a.terminate()
        c = b.host.exec_(ECHO)  # b serves on
        b.host.send(c, "still here")
        self.assertEqual(b.host.item(c), "still here")
        b.terminate()


if __name__ == "__main__":
    unittest.main()
