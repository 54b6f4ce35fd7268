"""The worker starts without importing threading or collections (issue 16: ~2.5 ms of
CPU per start), yet remote code that imports threading first in any thread sees the
worker's real main thread (worker.py: _MainFinder), and the worker's own Condition
(_Cond) behaves as threading.Condition."""
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostclient import Host, W  # noqa: E402

# What a worker process may import beyond the bare interpreter running its loader: C
# modules only, and the execnet compatibility module (built at the first exec).
ALLOWED = {"_collections", "_struct", "_weakref", "_thread", "_signal", "time", "fcntl",
           "marshal", "select", "execnet", "execnet.gateway_base"}

# The modules of a bare interpreter running the loader's first statement
BARE = eval(subprocess.check_output([sys.executable, "-u", "-c",
                                     "import sys,zlib;sys.stdout.write(repr(sorted(sys.modules)))"]))
BARE_THREADING = "threading" in BARE

# Exec on the main thread: reports its ident, then (after "go") imports threading,
# whoever imported it first, and reports what threading and asyncio make of it.
MAIN = r"""
import _thread, sys
if PROBE:  # a spec asked for, no import: threading's import is still to come
    import importlib.util
    importlib.util.find_spec("threading")
channel.send((_thread.get_ident(), "threading" in sys.modules))
channel.receive()
import threading
mt = threading.main_thread()
nid = getattr(_thread, "get_native_id", None)
r = {"ident": mt.ident == _thread.get_ident(), "current": threading.current_thread() is mt,
     "alive": mt.is_alive(), "name": mt.name,
     "native": nid is None or mt.native_id == nid()}
import asyncio, signal
async def f():
    await asyncio.sleep(0)
    # 3.11+: asyncio.run installs its SIGINT handler only in threading's main thread
    return signal.getsignal(signal.SIGINT) is not signal.default_int_handler
if hasattr(asyncio, "run"):
    handler = asyncio.run(f())
    r["asyncio"] = handler or sys.version_info < (3, 11)
else:  # 3.6: get_event_loop() makes a loop only in threading's main thread
    loop = asyncio.get_event_loop()
    loop.run_until_complete(f())
    loop.close()
    r["asyncio"] = True
channel.send(r)
channel.receive()  # stays busy: later execs go to executor threads
"""

# Exec on an executor thread (the main thread is busy): threading at work, and what it
# says about the main thread. IMPORT imports threading in this thread, or (ENDED) in a
# thread started with _thread that has ended before the checks.
OTHER = r"""
import _thread, sys, time
was = "threading" in sys.modules
if ENDED:
    n = _thread._count()
    _thread.start_new_thread(__import__, ("threading",))
    end = time.monotonic() + 10
    while _thread._count() >= n + 1 and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.3)  # its thread state goes just after the count drops
import threading
mt = threading.main_thread()
me = threading.current_thread()
r = {"was": was, "main": mt.ident, "alive": mt.is_alive(), "me_main": me is mt,
     "me_dummy": isinstance(me, threading._DummyThread),
     "finder": any(type(f).__name__ == "_MainFinder" for f in sys.meta_path),
     "loader": type(threading.__loader__).__name__ == type(threading.__spec__.loader).__name__
               != "_MainFix"}
ev, out = threading.Event(), []
t = threading.Thread(target=lambda: (out.append(threading.current_thread().name), ev.set()))
t.start()
t.join(5)
r["thread"] = ev.wait(5) and not t.is_alive() and out == [t.name]
c, box = threading.Condition(), []
def produce():
    with c:
        box.append(1)
        c.notify_all()
with c:
    threading.Thread(target=produce).start()
    r["cond"] = bool(c.wait_for(lambda: box, 5))
channel.send(r)
"""


class WorkerStart(unittest.TestCase):
    def host(self, **kw):
        h = Host(**kw)
        self.addCleanup(h.kill)
        if h.hello() is None:
            self.fail("no HELLO; stderr: %r" % (h.proc.stderr.read(),))
        return h

    def test_start_imports_nothing_but_c_modules(self):
        h = self.host()
        c = h.exec_("import sys\nchannel.send(sorted(sys.modules))")
        mods = set(h.item(c))
        self.assertEqual(h.terminate(), 0)
        extra = mods - set(BARE)
        self.assertEqual(extra - ALLOWED, set(), "imported at a worker's start")
        if not BARE_THREADING:  # pyenv's 3.11.7 imports it at its start (site)
            self.assertNotIn("threading", mods)
            self.assertNotIn("collections", mods)

    def check(self, import_in, ended=False, h=None, probe=False):
        """import_in "main": the main-thread exec imports threading first; "other":
        the executor thread's exec does (in a thread of its own that ended if ended).
        h: a started Host (default: a worker process of its own)."""
        forked = h is not None
        h = h or self.host()
        m = h.exec_("PROBE = %r\n" % probe + MAIN)  # the first exec: on the main thread
        main_ident, had = h.item(m)
        if import_in == "main":
            h.send(m, "go")
            r_main = h.item(m)
        o = h.exec_("ENDED = %r\n" % ended + OTHER)  # main busy: an executor thread
        r = h.item(o)
        if import_in == "other":
            h.send(m, "go")
            r_main = h.item(m)
        if not had:
            self.assertEqual(r["was"], import_in == "main")
        self.assertEqual(r["main"], main_ident)  # threading.main_thread().ident
        self.assertTrue(r["alive"], "main_thread().is_alive()")
        self.assertFalse(r["me_main"])
        self.assertTrue(r["me_dummy"])
        self.assertFalse(r["finder"], "_MainFinder left on sys.meta_path")
        self.assertTrue(r["loader"])
        self.assertTrue(r["thread"], "threading.Thread")
        self.assertTrue(r["cond"], "threading.Condition")
        if forked and BARE_THREADING:
            # the fork server imported threading (pyenv 3.11's site does), and
            # threading's _after_fork keeps the parent's native_id (3.6-3.13): not ours
            r_main["native"] = True
        self.assertEqual(r_main, {"ident": True, "current": True, "alive": True,
                                  "name": "MainThread", "native": True, "asyncio": True})
        h.send(m, "end")
        self.assertEqual(h.receive(m)[:2], ("close", None))
        if not forked:
            self.assertEqual(h.terminate(), 0)
            self.assertEqual(h.stderr_text(), "")

    def test_threading_first_imported_in_an_executor_thread(self):
        self.check("other")

    def test_threading_spec_probed_in_the_main_thread_then_imported_in_another(self):
        self.check("other", probe=True)

    def test_threading_first_imported_in_a_thread_that_ended(self):
        self.check("other", ended=True)

    def test_threading_first_imported_in_the_main_thread(self):
        self.check("main")

    def test_fork_server_worker(self):
        # popen//fork: the worker's main thread is the fork server's, forked
        from test_forkserver import Server, ended as status

        server = Server()
        self.addCleanup(server.close)
        token, pid, h = server.fork()
        self.addCleanup(h.kill)
        self.assertEqual(h.hello()["pid"], pid)
        self.check("other", h=h)
        h.send_frame(W.TERMINATE, 0)
        self.assertEqual(status(server.expect(b"X", token))[:2], ("C", 0))

    def test_threading_first_imported_in_a_forked_child(self):
        if not hasattr(os, "register_at_fork"):
            print("SKIPPED: a fork before threading's import: Python 3.6 has no "
                  "os.register_at_fork", file=sys.stderr)
            return
        # forked from an executor thread: in the child that thread is the main thread
        h = self.host()
        m = h.exec_("channel.receive()")  # keeps the main thread busy
        src = ("import os, sys, _thread, warnings\n"
               "r, w = os.pipe()\n"
               "with warnings.catch_warnings():\n"
               "    warnings.simplefilter('ignore')  # 3.12: fork() of a threaded process\n"
               "    pid = os.fork()\n"
               "if pid == 0:\n"
               "    try:\n"
               "        import threading\n"
               "        mt = threading.main_thread()\n"
               "        ok = (mt.ident == _thread.get_ident() and mt.is_alive()\n"
               "              and threading.current_thread() is mt)\n"
               "        os.write(w, b'1' if ok else b'0')\n"
               "    finally:\n"
               "        os._exit(0)\n"
               "os.close(w)\n"
               "got = os.read(r, 1)\n"
               "os.waitpid(pid, 0)\n"
               "channel.send((got, 'threading' in sys.modules))\n")
        o = h.exec_(src)
        self.assertEqual(h.item(o, timeout=20), (b"1", BARE_THREADING))
        h.send(m, "done")
        self.assertEqual(h.terminate(), 0)

    def test_execnet_execmodel_locks_and_event(self):
        h = self.host()
        c = h.exec_(
            "import sys\nimport execnet\nem = channel.gateway.execmodel\n"
            "was = 'threading' in sys.modules\n"
            "l, r = em.Lock(), em.RLock()\n"
            "with l:\n    with l:\n        pass\n"  # execnet's Lock() is an RLock
            "r.acquire()\nr.acquire()\nr.release()\nr.release()\n"
            "ev = em.Event()\nem.start(ev.set)\n"
            "import threading\n"
            "channel.send((was, ev.wait(5), type(r) is type(threading.RLock()),\n"
            "              threading.current_thread() is threading.main_thread()))\n")
        was, fired, same, main = h.item(c)
        self.assertTrue(fired)
        self.assertTrue(same)
        self.assertTrue(main)
        self.assertEqual(h.terminate(), 0)


class TerminateGrace(unittest.TestCase):
    """TERMINATE while the main thread's execution is about to end by itself: it is not
    interrupted (test_worker's Termination: one that does not end is)."""

    def test_an_execution_waiting_for_its_channels_end_ends_cleanly(self):
        h = Host()
        self.addCleanup(h.kill)
        self.assertIsNotNone(h.hello())
        c = h.exec_("channel.send('ready')\ntry:\n    channel.receive()\n"
                    "except EOFError:\n    pass\n")  # on the main thread
        self.assertEqual(h.item(c), "ready")
        self.assertEqual(h.terminate(), 0)
        self.assertEqual(h.queues[c][0][:2], ("close", None))  # no KeyboardInterrupt
        self.assertEqual(h.terminated, "")


class ThreadModeLeavesImportsAlone(unittest.TestCase):
    def test_no_finder_in_thread_mode(self):
        from test_thread_mode import ThreadGateway, worker_namespace

        meta = list(sys.meta_path)
        g = ThreadGateway(self, ns=worker_namespace())
        c = g.host.exec_("import threading\nchannel.send(1)")
        self.assertEqual(g.host.item(c), 1)
        g.terminate()
        self.assertEqual(sys.meta_path, meta)


class Cond(unittest.TestCase):
    """worker._Cond against threading.Condition's behaviour."""

    def setUp(self):
        import _thread

        self.lock = _thread.allocate_lock()
        self.cv = W._Cond(self.lock)

    def start(self, f):
        t = threading.Thread(target=f)
        t.daemon = True
        t.start()
        self.addCleanup(t.join, 5)
        return t

    def test_wait_timeout_and_notify(self):
        cv = self.cv
        with self.lock:
            t = time.monotonic()
            self.assertFalse(cv.wait(0.05))
            self.assertGreaterEqual(time.monotonic() - t, 0.04)
            self.assertFalse(cv.wait(0))
            self.assertFalse(cv.wait(-1))
            self.assertEqual(len(cv._waiters), 0)  # the timed-out waiters are gone

        def notifier():
            time.sleep(0.05)
            with self.lock:
                cv.notify()
        self.start(notifier)
        with self.lock:
            self.assertTrue(cv.wait(10))
            self.assertTrue(self.lock.locked())

    def test_notify_wakes_n_and_notify_all_the_rest(self):
        cv, woke = self.cv, []

        def waiter(i):
            with self.lock:
                if cv.wait(10):
                    woke.append(i)
        for i in range(3):
            self.start(lambda i=i: waiter(i))
        deadline = time.monotonic() + 10
        while len(cv._waiters) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            cv.notify()
        deadline = time.monotonic() + 10
        while len(woke) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        self.assertEqual(len(woke), 1)
        with self.lock:
            cv.notify_all()
            self.assertEqual(len(cv._waiters), 0)
        deadline = time.monotonic() + 10
        while len(woke) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(sorted(woke), [0, 1, 2])

    def test_wait_for(self):
        cv, box = self.cv, []
        with self.lock:
            t = time.monotonic()
            self.assertEqual(cv.wait_for(lambda: box, 0.05), [])
            self.assertGreaterEqual(time.monotonic() - t, 0.04)
            self.assertEqual(cv.wait_for(lambda: 5), 5)

        def produce():
            for i in range(3):
                time.sleep(0.02)
                with self.lock:
                    box.append(i)
                    cv.notify_all()
        self.start(produce)
        with self.lock:
            self.assertEqual(cv.wait_for(lambda: len(box) == 3, 10), True)

    def test_unowned_lock_is_an_error(self):
        cv = self.cv
        for f in (cv.wait, cv.notify, cv.notify_all, lambda: cv.wait_for(lambda: False, 0)):
            with self.assertRaises(RuntimeError):
                f()

    def test_interrupted_wait_takes_the_lock_back_and_leaves_no_waiter(self):
        # as threading.Condition: an exception (KeyboardInterrupt...) in wait() still
        # re-acquires the lock and removes the waiter
        if threading.current_thread() is not threading.main_thread():
            self.skipTest("signals go to the main thread")

        class Boom(Exception):
            pass

        def boom(signum, frame):
            raise Boom()
        old = signal.signal(signal.SIGUSR1, boom)
        self.addCleanup(signal.signal, signal.SIGUSR1, old)
        main = threading.get_ident()
        self.start(lambda: (time.sleep(0.1), signal.pthread_kill(main, signal.SIGUSR1)))
        with self.lock:
            with self.assertRaises(Boom):
                self.cv.wait(20)
            self.assertTrue(self.lock.locked())
            self.assertEqual(len(self.cv._waiters), 0)
            self.cv.notify_all()  # nothing left to wake

    def test_notify_skips_a_waiter_released_already(self):
        # gh-92530: a notify interrupted between release and removal leaves a released
        # waiter at the front; the next notify must not count it
        import _thread

        dead = _thread.allocate_lock()  # released: what the interrupted notify left
        with self.lock:
            self.cv._waiters.append(dead)
        woke = []

        def waiter():
            with self.lock:
                woke.append(self.cv.wait(10))
        self.start(waiter)
        deadline = time.monotonic() + 10
        while len(self.cv._waiters) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            self.cv.notify()
            self.assertEqual(len(self.cv._waiters), 0)
        deadline = time.monotonic() + 10
        while not woke and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(woke, [True])


if __name__ == "__main__":
    unittest.main()
