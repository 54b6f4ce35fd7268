"""End to end: the worker as a real subprocess, started through the real loader,
with a Python host (hostclient.Host) playing the Rust host's part."""
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostclient import Host, W, ref  # noqa: E402

def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


ECHO = "for x in channel:\n    channel.send(x)\n"



def _after_gc(h, cid, tries=20):
    """The next frame on channel `cid`, running gc.collect() in the worker until
    it comes: on CPython the drop is seen at once; PyPy frees a dropped handle
    only at a collection that no longer finds the previous exec's globals
    alive, which one collection right after that exec sometimes still does."""
    for _ in range(tries):
        try:
            return h.receive(cid, timeout=0.5)
        except AssertionError:  # hostclient's wait timed out: collect again
            h.exec_("import gc\ngc.collect()\n")
    return h.receive(cid)

class WorkerTestCase(unittest.TestCase):
    options = None

    def host(self, **kw):
        kw.setdefault("options", self.options)
        h = Host(**kw)
        self.addCleanup(h.kill)
        info = h.hello()
        if info is None:
            h.proc.kill()
            self.fail("no HELLO; stderr: %r" % (h.proc.stderr.read(),))
        return h


class InProcessGateway(unittest.TestCase):
    """A Gateway driven in this process: for paths a subprocess cannot pin down."""

    def detach_at_cleanup(self, gw):
        # runs before the fds close (cleanups are LIFO): channels dropped when the test
        # ends are closed by the reaper thread, which must not write into a closed fd
        # that a later test's pipe may have reused
        def detach():
            with gw._wlock:
                gw._outfd = None
        self.addCleanup(detach)

    def test_short_write_sends_the_rest_once(self):
        # the fast path's single os.write may write part of a frame (a socket, a
        # signal): the rest follows, nothing twice
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        gw = W.Gateway(None, w, {"version": 1})
        self.detach_at_cleanup(gw)
        ch = gw.newchannel()
        real, calls = os.write, []

        def short_write(fd, b):
            calls.append(len(b))
            return real(fd, bytes(b[:3]) if len(calls) == 1 else b)

        W.os.write = short_write
        try:
            ch.send((1, "ab"))
            ch.send(7)
        finally:
            W.os.write = real
        want = W.frame(W.DATA, ch.id, W.dumps((1, "ab"))) + W.frame(W.DATA, ch.id, W.dumps(7))
        self.assertEqual(os.read(r, 1000), want)
        self.assertEqual(len(calls), 2 + 1)  # the first send took two writes


    def test_callback_on_a_leading_receiver_raises_instead_of_hanging(self):
        # a receive() that reads the input itself runs the callbacks of the frames
        # it reads: their waits for input would never end either
        r, w = os.pipe()
        out = os.open(os.devnull, os.O_WRONLY)
        for fd in (r, w, out):
            self.addCleanup(os.close, fd)
        gw = W.Gateway(W.Reader(r), out, {"version": 1})
        self.detach_at_cleanup(gw)
        cbch, mine, other = gw._chanref(1), gw._chanref(3), gw.newchannel()
        seen = []

        def cb(x):
            try:
                other.receive(2)
            except IOError as e:
                seen.append(str(e)[:18])

        cbch.setcallback(cb)
        os.write(w, W.frame(W.DATA, 1, W.dumps("x")) + W.frame(W.DATA, 3, W.dumps("y")))
        self.assertEqual(mine.receive(), "y")  # nobody else reads: this thread does
        self.assertEqual(seen, ["would wait forever"])


class ReaderBuffer(unittest.TestCase):
    def test_the_small_first_buffer_grows_with_the_stream(self):
        # a worker starts with a small read buffer (each page of a zeroed 64 KiB one
        # was a page fault in every start); frames keep arriving whole as the stream
        # outgrows it, and a busy stream gets the 64 KiB buffer
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        rd = W.Reader(r)
        self.assertLess(len(rd.buf), 1 << 16)
        frames = [(W.DATA, 2 * i + 1, ("item %d " % i).encode() * (i % 7 + 1)) for i in range(500)]
        frames.append((W.DATA, 3, b"z" * 10000))  # larger than the first buffer
        frames.append((W.CLOSE, 5, b""))
        os.write(w, b"".join(W.frame(k, c, p) for k, c, p in frames))
        for want in frames:
            self.assertEqual(rd.read(1 << 20), want)
        self.assertGreaterEqual(len(rd.buf), 1 << 16)


class Handshake(WorkerTestCase):
    def test_hello_info(self):
        h = self.host()
        i = h.info
        self.assertEqual(i["version"], 1)
        self.assertEqual(i["implementation"], sys.implementation.name)
        self.assertEqual(i["version_info"][:3], list(sys.version_info[:3]))
        self.assertEqual(i["pid"], h.proc.pid)
        self.assertEqual(i["execmodel"], "thread")
        self.assertEqual(i["platform"], sys.platform)
        self.assertEqual(i["cwd"], os.getcwd())
        self.assertTrue(i["executable"])
        self.assertEqual(h.terminate(), 0)
        self.assertEqual(h.terminated, "")

    def test_pipelined_exec_right_behind_hello(self):
        extra = W.frame(W.EXEC, 1, W.dumps({"source": "channel.send(__name__)", "call": None}))
        h = self.host(extra=extra)
        self.assertEqual(h.item(1), "__channelexec__")
        self.assertEqual(h.receive(1)[:2], ("close", None))

    def test_loader_with_dash_S_and_rinfo(self):
        h = self.host(flags=("-u", "-S"))
        c = h.exec_("r = channel.gateway._rinfo()\nchannel.send((r.pid, r.version_info, r.cwd))")
        self.assertEqual(h.item(c), (h.info["pid"], h.info["version_info"], h.info["cwd"]))

    def test_version_mismatch(self):
        h = Host(version=2)
        self.addCleanup(h.kill)
        h.wait_for(lambda: h.eof)
        self.assertEqual(h.finish(), 1)
        self.assertIsNone(h.info)
        self.assertIn("version mismatch: ours 1, theirs 2", h.terminated)
        self.assertIn("execnet-worker: bootstrap failed: version mismatch", h.stderr_text())

    def test_bad_option(self):
        h = Host(options={"execmodel": "eventlet"})
        self.addCleanup(h.kill)
        h.wait_for(lambda: h.eof)
        self.assertEqual(h.finish(), 1)
        self.assertIn("unsupported execmodel", h.stderr_text())

    def test_stdin_eof_before_hello(self):
        p = subprocess.Popen([sys.executable, "-u", "-c", "import sys,zlib;exec(zlib.decompress("
                              "sys.stdin.buffer.read(%d)))" % len(W_SOURCE)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(W_SOURCE, timeout=10)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(out, b"")
        self.assertIn(b"input ended before the host HELLO", err)


from hostclient import SOURCE as W_SOURCE  # noqa: E402


class Exec(WorkerTestCase):
    def test_echo_and_close(self):
        h = self.host()
        c = h.exec_(ECHO)
        for v in [1, "two", (3, None), {"k": [b"v"]}, 10 ** 30, 1.5, {1, 2}]:
            h.send(c, v)
            self.assertEqual(h.item(c), v)
        h.close(c)
        self.assertEqual(h.receive(c)[:2], ("close", None))

    def test_call_with_kwargs(self):
        h = self.host()
        c = h.exec_("def f(channel, x, y=0):\n    channel.send(x + y)\n", ["f", {"x": 40, "y": 2}])
        self.assertEqual(h.item(c), 42)
        self.assertEqual(h.receive(c)[:2], ("close", None))

    def test_fresh_globals(self):
        h = self.host()
        c = h.exec_("x = 1\nchannel.send(sorted(k for k in globals() if k != '__builtins__'))")
        self.assertEqual(h.item(c), ["__name__", "channel", "x"])
        c = h.exec_("channel.send('x' in globals())")
        self.assertEqual(h.item(c), False)

    def test_traceback_and_worker_keeps_serving(self):
        h = self.host()
        c = h.exec_("def g():\n    raise ValueError('boom')\ng()\n")
        kind, err, _ = h.receive(c)
        self.assertEqual(kind, "close")
        self.assertIn("Traceback (most recent call last)", err)
        self.assertIn("ValueError: boom", err)
        self.assertIn('File "<remote exec>", line 2, in g', err)
        self.assertNotIn("_run", err)
        c = h.exec_("import sys\nsys.exit(3)")
        kind, err, _ = h.receive(c)
        self.assertIn("SystemExit: 3", err)
        c = h.exec_("channel.send(1)")
        self.assertEqual(h.item(c), 1)
        c = h.exec_("syntax error here")
        self.assertIn("SyntaxError", h.receive(c)[1])

    def test_close_own_channel_is_an_error(self):
        h = self.host()
        c = h.exec_("channel.close()")
        kind, err, _ = h.receive(c)
        self.assertIn("cannot explicitly close channel within remote_exec", err)

    def test_unsupported_type_raises_and_sends_nothing(self):
        h = self.host()
        c = h.exec_(
            "class Foo(object): pass\n"
            "try:\n    channel.send([1, Foo()])\nexcept TypeError as e:\n    channel.send(str(e))\n"
            "channel.send('still usable')\n")
        msg = h.item(c)
        self.assertIn("can't serialize <class '__channelexec__.Foo'>", msg)
        self.assertEqual(h.item(c), "still usable")

    def test_item_larger_than_max_item_is_refused_locally(self):
        h = self.host(max_item=1000)
        c = h.exec_("try:\n    channel.send(b'x' * 2000)\nexcept ValueError as e:\n"
                    "    channel.send(str(e))\n")
        self.assertIn("exceeds max_item 1000", h.item(c))

    def test_unrepresentable_item_closes_channel_with_error(self):
        h = self.host()
        c = h.exec_("try:\n    channel.receive()\nexcept Exception as e:\n    "
                    "channel.gateway.newchannel()\n    raise\n")
        h.send_frame(W.DATA, c, b"\xa1\x81\x01\x01")  # {[1]: 1}
        kind, err, _ = h.receive(c)
        self.assertEqual(kind, "close")
        self.assertIn("dict key of type 'list'", err)
        c = h.exec_("channel.send(2)")
        self.assertEqual(h.item(c), 2)


class ChannelSemantics(WorkerTestCase):
    def test_items_before_close_then_eof(self):
        h = self.host()
        c = h.exec_("import time\ntime.sleep(0.2)\nr = []\n"
                    "try:\n    while 1: r.append(channel.receive())\n"
                    "except EOFError:\n    pass\nchannel.send(r)\n"
                    "try:\n    channel.receive()\nexcept EOFError:\n    channel.send('eof again')\n")
        n = h.newchannel()
        for i in range(5):
            h.send(c, i)
        h.send_frame(W.LAST_MESSAGE, c)
        self.assertEqual(h.item(c), [0, 1, 2, 3, 4])
        self.assertEqual(h.item(c), "eof again")
        self.assertEqual(h.receive(c)[:2], ("close", None))
        del n

    def test_remote_error_once_then_eof(self):
        h = self.host()
        c = h.exec_("ch = channel.gateway.newchannel()\nchannel.send(ch)\nr = []\n"
                    "for i in range(3):\n"
                    "    try:\n        r.append(ch.receive())\n"
                    "    except channel.RemoteError as e:\n        r.append('RemoteError: ' + str(e))\n"
                    "    except EOFError:\n        r.append('EOF')\n"
                    "channel.send(r)\n")
        ch = h.item(c).id
        self.assertEqual(ch % 2, 0)
        h.send(ch, "item")
        h.close(ch, "it broke")
        self.assertEqual(h.item(c), ["item", "RemoteError: it broke", "EOF"])

    def test_waitclose_and_isclosed(self):
        h = self.host()
        c = h.exec_("ch = channel.gateway.newchannel()\nchannel.send(ch)\n"
                    "try:\n    ch.waitclose(0.05)\nexcept channel.TimeoutError:\n    channel.send('timeout')\n"
                    "channel.send(ch.isclosed())\n"
                    "try:\n    ch.waitclose(5)\nexcept channel.RemoteError as e:\n    channel.send(str(e))\n"
                    "channel.send(ch.isclosed())\nch.waitclose()\n"
                    "try:\n    ch.receive(0.01)\nexcept EOFError:\n    channel.send('eof')\n")
        ch = h.item(c).id
        self.assertEqual(h.item(c), "timeout")
        self.assertEqual(h.item(c), False)
        h.close(ch, "bad")
        self.assertEqual(h.item(c), "bad")
        self.assertEqual(h.item(c), True)
        self.assertEqual(h.item(c), "eof")

    def test_close_newchannel_with_error_text(self):
        h = self.host()
        c = h.exec_("ch = channel.gateway.newchannel()\nchannel.send(ch)\nch.send(1)\n"
                    "ch.close('bad \\udcff thing')\nch.close()\n"
                    "try:\n    ch.send(2)\nexcept IOError:\n    channel.send('closed')\n")
        ch = h.item(c).id
        self.assertEqual(h.item(ch), 1)
        self.assertEqual(h.receive(ch)[:2], ("close", "bad ? thing"))
        self.assertEqual(h.item(c), "closed")

    def test_receive_timeout(self):
        h = self.host()
        c = h.exec_("try:\n    channel.receive(0.05)\nexcept channel.TimeoutError as e:\n"
                    "    channel.send(isinstance(e, IOError))\nchannel.send(channel.receive(5))\n")
        self.assertEqual(h.item(c), True)
        h.send(c, "late")
        self.assertEqual(h.item(c), "late")

    def test_callback_and_endmarker(self):
        h = self.host()
        c = h.exec_("ch = channel.gateway.newchannel()\nchannel.send(ch)\nseen = []\n"
                    "import threading\nev = threading.Event()\n"
                    "def cb(x):\n    seen.append(x)\n    if x == 'END':\n        ev.set()\n"
                    "channel.receive()\n"  # items queued before setcallback are delivered too
                    "ch.setcallback(cb, endmarker='END')\n"
                    "try:\n    ch.receive()\nexcept IOError:\n    seen.append('no receive')\n"
                    "channel.send('ready')\nev.wait(5)\nchannel.send(seen)\n")
        ch = h.item(c).id
        h.send(ch, 1)
        h.send(ch, 2)
        h.send(c, "go")
        self.assertEqual(h.item(c), "ready")
        h.send(ch, 3)
        h.close(ch)
        self.assertEqual(h.item(c), [1, 2, "no receive", 3, "END"])

    def test_callback_waiting_for_input_raises_instead_of_hanging(self):
        # a callback runs on the thread that reads the input: a wait there for more
        # input would never end; waits already satisfied still succeed
        h = self.host()
        c = h.exec_("import threading, time\ngw = channel.gateway\n"
                    "ch, q, other = gw.newchannel(), gw.newchannel(), gw.newchannel()\n"
                    "channel.send((ch, q, other))\nres = []\nev = threading.Event()\n"
                    "def cb(x):\n"
                    "    res.append(q.receive())\n"  # queued before: satisfied
                    "    for f in (other.receive, lambda: other.receive(5), other.waitclose):\n"
                    "        t = time.monotonic()\n"
                    "        try:\n            f()\n"
                    "        except IOError as e:\n"
                    "            res.append((str(e)[:18], time.monotonic() - t < 1))\n"
                    "    q.waitclose()\n"  # q was closed before: satisfied
                    "    ev.set()\n"
                    "channel.receive()\nch.setcallback(cb)\nchannel.send('ready')\n"
                    "ev.wait(30)\nchannel.send(res)\n")
        ch, q, other = [r.id for r in h.item(c)]
        h.send(q, "queued")
        h.close(q)
        h.send(c, "go")
        self.assertEqual(h.item(c), "ready")
        h.send(ch, 1)
        self.assertEqual(h.item(c, timeout=20), ["queued"] + [("would wait forever", True)] * 3)

    def test_callback_exception_closes_channel(self):
        h = self.host()
        c = h.exec_("ch = channel.gateway.newchannel()\n"
                    "def cb(x):\n    raise KeyError(x)\n"
                    "ch.setcallback(cb)\nchannel.send(ch)\n")
        ch = h.item(c).id
        h.send(ch, "k")
        kind, err, _ = h.receive(ch)
        self.assertEqual(kind, "close")
        self.assertIn("KeyError: 'k'", err)

    def test_iteration_and_makefile(self):
        h = self.host()
        c = h.exec_("f = channel.makefile('w')\nf.write('hello ')\nf.write(b'bytes')\nf.flush()\n"
                    "r = channel.makefile('r')\nchannel.send(r.readline())\nchannel.send(r.read(3))\n"
                    "channel.send(r.read())\n")
        self.assertEqual(h.item(c), "hello ")
        self.assertEqual(h.item(c), b"bytes")
        h.send(c, "line one\nline")
        h.send(c, " two\nrest")
        self.assertEqual(h.item(c), "line one\n")
        self.assertEqual(h.item(c), "lin")
        h.send_frame(W.LAST_MESSAGE, c)
        self.assertEqual(h.item(c), "e two\nrest")

    def test_channels_inside_values_both_ways(self):
        h = self.host()
        c = h.exec_("got = channel.receive()\nch = got['chan']\nch.send('via host channel')\n"
                    "mine = channel.gateway.newchannel()\nchannel.send([mine, (mine,)])\n"
                    "channel.send(mine.receive())\nmine.close()\n")
        hc = h.newchannel()
        h.send(c, {"chan": ref(hc)})
        self.assertEqual(h.item(hc), "via host channel")
        a, (b,) = h.item(c)
        self.assertEqual(a.id, b.id)
        h.send(a.id, "to worker channel")
        self.assertEqual(h.item(c), "to worker channel")
        self.assertEqual(h.receive(a.id)[:2], ("close", None))

    def test_dropped_channel_is_closed(self):
        # execnet closes a channel when its last reference goes (Channel.__del__):
        # the host sees the items, then the end -- not a wait until the gateway ends.
        # PyPy frees it at the next GC, which the second exec runs.
        h = self.host()
        c = h.exec_("sub = channel.gateway.newchannel()\nchannel.send(sub)\n"
                    "for i in range(3):\n    sub.send(i)\n")
        sub = h.item(c).id
        self.assertEqual(h.receive(c)[:2], ("close", None))
        self.assertEqual([h.item(sub) for _ in range(3)], [0, 1, 2])
        self.assertEqual(_after_gc(h, sub)[:2], ("close", None))

    def test_channel_dropped_by_another_thread_closes_without_more_input(self):
        # a thread of remote code drops the last handle after the exec has ended and
        # the host sends nothing more: the close still comes (it came only with the
        # next input; execnet's test_channel_callback_remote_freed waited for it)
        h = self.host()
        c = h.exec_("import _thread, gc, time\n"
                    "def producer(box):\n"
                    "    sub = box.pop()\n"
                    "    sub.send(1)\n"
                    "    while not channel.isclosed():\n"
                    "        time.sleep(0.01)\n"
                    "    time.sleep(0.3)  # the exec's thread has done its own reaping\n"
                    "    del sub\n"
                    "    gc.collect()  # PyPy frees it at a GC\n"
                    "sub = channel.gateway.newchannel()\n"
                    "channel.send(sub)\n"
                    "_thread.start_new_thread(producer, ([sub],))\n"
                    "del sub\n")
        sub = h.item(c).id
        self.assertEqual(h.receive(c)[:2], ("close", None))
        self.assertEqual(h.item(sub), 1)
        self.assertEqual(h.receive(sub)[:2], ("close", None))

    def test_dropped_channel_with_callback_sends_last_message(self):
        # protocol §6.1: a handle dropped while its callback still consumes half-closes;
        # the callback keeps getting items, and the host's CLOSE ends it
        h = self.host()
        c = h.exec_("import gc\nseen = []\nsub = channel.gateway.newchannel()\n"
                    "sub.setcallback(seen.append, endmarker='END')\nchannel.send(sub)\n"
                    "del sub\ngc.collect()\nchannel.send(channel.receive())\n"
                    "channel.receive()\nchannel.send(seen)\n")
        sub = h.item(c).id
        self.assertEqual(h.receive(sub)[:2], ("last", None))
        h.send(sub, 1)
        h.send(c, "sync")
        self.assertEqual(h.item(c), "sync")
        h.close(sub)
        self.assertEqual(h.receive(sub)[:2], ("close", None))
        h.send(c, "go")
        self.assertEqual(h.item(c), [1, "END"])

    def test_dropped_callback_channel_closes_on_peer_last_message(self):
        # both sides half-closed: nothing can flow any more, so the worker closes
        h = self.host()
        c = h.exec_("import gc\nsub = channel.gateway.newchannel()\n"
                    "sub.setcallback([].append)\nchannel.send(sub)\n")
        sub = h.item(c).id
        self.assertEqual(_after_gc(h, sub)[:2], ("last", None))  # PyPy frees sub at a GC
        h.send_frame(W.LAST_MESSAGE, sub)
        self.assertEqual(h.receive(sub)[:2], ("close", None))

    def test_handle_iteration_and_makefile(self):
        # a channel remote code created or received is a handle (_Handle): the whole
        # Channel API, and it stays open while a file or an iterator made from it lives
        h = self.host()
        c = h.exec_("sub = channel.gateway.newchannel()\nchannel.send((sub, repr(sub)))\n"
                    "assert isinstance(sub, type(channel)) and sub.__class__ is type(channel)\n"
                    "f = sub.makefile('w')\nit = iter(sub)\ndel sub\n"
                    "f.write('via file')\nchannel.send(next(it))\nchannel.send(list(it))\n")
        sub, text = h.item(c)
        self.assertEqual(text, "<Channel id=%d open>" % sub.id)
        self.assertEqual(h.item(sub.id), "via file")
        h.send(sub.id, 1)
        self.assertEqual(h.item(c), 1)
        h.send(sub.id, 2)
        h.send_frame(W.LAST_MESSAGE, sub.id)
        self.assertEqual(h.item(c), [2])
        self.assertEqual(h.receive(c)[:2], ("close", None))
        h.exec_("import gc\ngc.collect()\n")
        self.assertEqual(h.receive(sub.id)[:2], ("close", None))

    def test_received_channel_dropped_while_referenced_elsewhere_stays_open(self):
        # one handle per channel: a second reference to the same channel is the same
        # object, and the channel closes only when both are gone
        h = self.host()
        hc = h.newchannel()
        c = h.exec_("import gc\na = channel.receive()\nb = channel.receive()\n"
                    "channel.send(a is b)\ndel a\ngc.collect()\nb.send('open')\n"
                    "channel.receive()\n")
        h.send(c, ref(hc))
        h.send(c, ref(hc))
        self.assertEqual(h.item(c), True)
        self.assertEqual(h.item(hc), "open")
        h.send(c, "done")
        self.assertEqual(h.receive(c)[:2], ("close", None))
        self.assertEqual(_after_gc(h, hc)[:2], ("close", None))

    def test_channel_in_call_kwargs(self):
        h = self.host()
        hc = h.newchannel()
        c = h.exec_("def f(channel, out, n):\n    out.send(n * 2)\n    channel.send('ok')\n",
                    call=["f", {"out": ref(hc), "n": 21}])
        self.assertEqual(h.item(hc), 42)
        self.assertEqual(h.item(c), "ok")


class Execution(WorkerTestCase):
    def test_concurrent_execs(self):
        h = self.host()
        chans = [h.exec_("import threading\nchannel.send(threading.current_thread() is "
                         "threading.main_thread())\nchannel.send(channel.receive() * 2)") for _ in range(4)]
        flags = [h.item(c) for c in chans]
        self.assertEqual(flags.count(True), 1, flags)
        st = h.request_status(5)
        self.assertEqual(st["numexecuting"], 4)
        self.assertGreaterEqual(st["numchannels"], 4)
        self.assertEqual(st["execmodel"], "thread")
        for i, c in enumerate(reversed(chans)):
            h.send(c, i)
        for i, c in enumerate(reversed(chans)):
            self.assertEqual(h.item(c), 2 * i)
        h.wait_for(lambda: all(c in h.closed_by_worker for c in chans))
        # An exec's channel closes just before its thread lowers the count:
        # the count reaches 0 soon after the last close, not with it.
        for k in range(100):
            n = h.request_status(6 + k)["numexecuting"]
            if n == 0:
                break
            time.sleep(0.01)
        self.assertEqual(n, 0)

    def test_concurrent_ping_pong_stress(self):
        # several execs receiving at once: leader/follower hand-offs must lose nothing
        h = self.host()
        chans = [h.exec_(ECHO) for _ in range(3)]
        for i in range(150):
            for c in chans:
                h.send(c, (c, i))
            for c in reversed(chans):
                self.assertEqual(h.item(c), (c, i))
        for c in chans:
            h.close(c)
        for i in range(200):
            if h.request_status(10 + i)["numexecuting"] == 0:
                break
            time.sleep(0.01)
        self.assertEqual(h.request_status(9)["numexecuting"], 0)

    def test_burst_of_receiving_execs_twice(self):
        # 200 execs blocked in receive() at once are woken one after another (the wake-up
        # chain) and their threads serve the next burst; nothing may stall or get lost
        h = self.host()
        src = "import _thread\nchannel.send((channel.receive(), _thread.get_ident()))\n"
        idents, parked, gone = [], [], []
        for burst in range(2):
            chans = [h.exec_(src) for _ in range(200)]
            for i, c in enumerate(chans):
                h.send(c, i)
            got = [h.item(c) for c in chans]
            self.assertEqual([g[0] for g in got], list(range(200)))
            idents.append(set(g[1] for g in got))
            h.wait_for(lambda: all(c in h.closed_by_worker for c in chans))
            h.wait_for(lambda: h.request_status(burst)["numexecuting"] == 0)
            # the executors park after closing their channels: wait until all have
            done = time.monotonic()
            deadline, seen_gone = done + 20, None
            while True:
                c = h.exec_("import _thread, sys\n"
                            "channel.send((_thread.get_ident(), len(channel.gateway._idle),\n"
                            "              list(sys._current_frames())))\n")
                probe, n, live = h.item(c)
                ended = idents[-1] - set(live)
                if ended and seen_gone is None:  # when some were first seen ended
                    seen_gone = time.monotonic() - done
                if n >= len(idents[-1] - {probe}) or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            parked.append((probe, n))
            # executors ended (none should before IDLE seconds without work)
            gone.append((ended, seen_gone))
        executors = idents[0] - {parked[0][0]}
        ended, after = gone[0]
        if ended and after > W.IDLE and parked[0][1] + len(ended) >= len(executors):
            # a parked executor ends after IDLE seconds without work: on a machine
            # that stalled that long, some ended before they could be counted (the
            # others were parked); one alive and not parked, or one ended sooner,
            # fails below
            self.skipTest("the machine stalled for more than IDLE (%s s): %d parked "
                          "executors ended before they were counted" % (W.IDLE, len(ended)))
        self.assertEqual(parked[0][1], len(executors), "all parked")
        # How many threads a burst needs depends on how fast the items come (an
        # executor done in time takes a waiting EXEC), but a parked executor is always
        # taken before a thread is started: a new thread means every parked one served
        new, reused = idents[1] - idents[0], idents[1] & idents[0]
        if new:
            self.assertGreaterEqual(len(reused - {parked[0][0]}), parked[0][1],
                                    "%d new threads while executors were parked" % len(new))

    def test_callback_runs_while_exec_reads(self):
        h = self.host()
        c = h.exec_("ch = channel.gateway.newchannel()\n"
                    "ch.setcallback(lambda x: channel.send(x * 2))\n"
                    "channel.send(ch)\nchannel.send(('got', channel.receive()))\n")
        ch = h.item(c).id
        for i in range(5):
            h.send(ch, i)
            self.assertEqual(h.item(c), 2 * i)
        h.send(c, "bye")
        self.assertEqual(h.item(c), ("got", "bye"))

    def test_main_thread_only_order(self):
        h = self.host(options={"execmodel": "main_thread_only"})
        self.assertEqual(h.info["execmodel"], "main_thread_only")
        src = ("import threading, time\nchannel.send((channel.receive(), threading.current_thread() is "
               "threading.main_thread(), time.time()))")
        chans = [h.exec_(src) for _ in range(3)]
        for i in range(100):  # answered by the reader although execs are queued
            st = h.request_status(i)
            if st["numexecuting"]:
                break
            time.sleep(0.01)
        self.assertEqual(st["execmodel"], "main_thread_only")
        self.assertEqual(st["numexecuting"], 1)
        for i, c in enumerate(chans):
            h.send(c, i)
        results = [h.item(c) for c in chans]
        self.assertEqual([r[0] for r in results], [0, 1, 2])
        self.assertTrue(all(r[1] for r in results))
        self.assertEqual(sorted(r[2] for r in results), [r[2] for r in results])


class FlowControl(WorkerTestCase):
    def test_64mib_item_both_ways_through_small_window(self):
        h = self.host(window=256 * 1024, max_frame=64 * 1024)
        c = h.exec_("x = channel.receive()\nchannel.send(len(x))\nchannel.send(x)\n")
        big = os.urandom(1 << 16) * 1024
        h.send(c, big)
        self.assertEqual(h.item(c, 60), len(big))
        self.assertEqual(h.item(c, 60), big)
        more = [n for k, ch, n in h.frames_seen if k == W.DATA_MORE]
        self.assertTrue(more and max(more) <= 64 * 1024)

    def test_slow_consumer_bounds_memory(self):
        # 300 items of 100 KB (30 MB) against a 64 KiB window and a consumer
        # that returns no DATA credit: the sending exec blocks, nothing piles up.
        h = self.host(window=64 * 1024, max_frame=16 * 1024, autocredit=False)
        c = h.exec_("chunk = b'x' * 100000\nfor i in range(300):\n    channel.send(chunk)\n"
                    "channel.send('done')\n")
        time.sleep(0.3)
        rss1 = rss(h.proc.pid)
        time.sleep(0.5)
        with h.cv:
            held = sum(n for kind, v, n in h.queues.get(c, ()))
            count = len(h.queues.get(c, ()))
        self.assertLessEqual(held, 64 * 1024)  # unconsumed DATA bytes bounded by the window
        self.assertLess(count, 60)
        self.assertLess(rss(h.proc.pid) - rss1, 8 * 1024)  # KiB: the worker does not buffer
        st = h.request_status(2)
        self.assertEqual(st["numexecuting"], 1)  # the sender is blocked
        for i in range(300):
            kind, v, n = h.receive(c)
            self.assertEqual(v, b"x" * 100000)
            h.send_frame(W.WINDOW, c, W.dumps(n))
        self.assertEqual(h.item(c), "done")

    def test_unconsumed_chunked_items_stay_within_window(self):
        # protocol.md 6.2: while an item waits unconsumed, the credit of
        # DATA_MORE chunks is held, so chunked items cannot pile up beyond the
        # window (crediting chunks on arrival let ~38 of these through).
        h = self.host(window=64 * 1024, max_frame=16 * 1024)
        c = h.exec_("import time\ntime.sleep(1.0)\nn = 0\nfor x in channel:\n    n += len(x)\n"
                    "channel.send(n)\n")
        sent = [0]

        def producer():
            for i in range(40):
                h.send(c, b"z" * 100000)
                sent[0] += 1
            h.send_frame(W.LAST_MESSAGE, c)
        t = threading.Thread(target=producer)
        t.daemon = True
        t.start()
        time.sleep(0.7)
        # the window plus the one item reassembled while the receiver kept up
        self.assertLessEqual(sent[0], 2)
        self.assertEqual(h.item(c, 30), 40 * 100000)
        t.join(10)

    def test_worker_returns_credit(self):
        h = self.host(window=32 * 1024, max_frame=8 * 1024)
        c = h.exec_("n = 0\nfor x in channel:\n    n += len(x)\nchannel.send(n)\n")
        for i in range(100):
            h.send(c, b"y" * 5000)
        h.send_frame(W.LAST_MESSAGE, c)
        self.assertEqual(h.item(c), 500000)
        wins = [n for k, ch, n in h.frames_seen if k == W.WINDOW]
        self.assertTrue(wins)

    def test_ping_pong_replies_carry_no_window_frames(self):
        # credit below window/16 is returned lazily, also by a send: a WINDOW frame
        # riding on every reply cost both sides a frame per item
        h = self.host()
        c = h.exec_(ECHO)
        for i in range(50):
            h.send(c, i)
            self.assertEqual(h.item(c), i)
        self.assertEqual([f for f in h.frames_seen if f[0] == W.WINDOW], [])

    def test_one_stalled_channel_does_not_stall_others(self):
        h = self.host(window=16 * 1024, max_frame=4096, autocredit=False)
        a = h.exec_("while True:\n    channel.send(b'a' * 4000)\n")
        b = h.exec_(ECHO)
        time.sleep(0.2)
        for i in range(20):
            h.send(b, i)
            kind, v, n = h.receive(b)
            self.assertEqual(v, i)
            h.send_frame(W.WINDOW, b, W.dumps(n))
        self.assertEqual(h.terminate(), 0)


class OutputForwarding(WorkerTestCase):
    def test_forward(self):
        h = self.host(options={"output": "forward"})
        c = h.exec_("import os, sys\nprint('printed')\nos.write(1, b'fd one\\n')\n"
                    "sys.stderr.write('to stderr\\n')\nos.write(2, b'fd two\\n')\n"
                    "channel.send('after')\n")
        self.assertEqual(h.item(c), "after")
        self.assertEqual(h.terminate(), 0)
        out = b"".join(b for fd, b in h.output if fd == 1)
        err = b"".join(b for fd, b in h.output if fd == 2)
        self.assertEqual(out, b"printed\nfd one\n")
        self.assertEqual(err, b"to stderr\nfd two\n")

    def test_forward_with_the_host_reading_stderr(self):
        # options "stderr": "host" (a local worker's host reads its stderr pipe): fd 1
        # is forwarded in OUTPUT frames, fd 2 stays on the original stderr, so what is
        # written there just before the worker dies is in the pipe, not lost with it
        h = self.host(options={"output": "forward", "stderr": "host"})
        c = h.exec_("import os, sys\nprint('printed')\nsys.stdout.flush()\n"
                    "sys.stderr.write('last words\\n')\nsys.stderr.flush()\nos._exit(3)\n")
        self.assertEqual(h.finish(10), 3)
        self.assertIn("last words\n", h.stderr_text())
        self.assertEqual([b for fd, b in h.output if fd == 2], [])

    def test_inherit_is_default_and_fd1_cannot_corrupt_the_stream(self):
        h = self.host()
        c = h.exec_("import os\nprint('printed')\nos.write(1, b'\\x03\\x00\\x00\\x00\\x01garbage\\n')\n"
                    "channel.send('intact')\n")
        self.assertEqual(h.item(c), "intact")
        self.assertEqual(h.terminate(), 0)
        err = h.stderr_text()
        self.assertIn("printed\n", err)
        self.assertIn("garbage", err)

    def test_discard(self):
        h = self.host(options={"output": "discard"})
        c = h.exec_("import os, sys\nprint('printed')\nos.write(2, b'gone')\nchannel.send(1)\n")
        self.assertEqual(h.item(c), 1)
        self.assertEqual(h.terminate(), 0)
        self.assertEqual(h.stderr_text(), "")
        self.assertEqual(h.output, [])


class Termination(WorkerTestCase):
    def test_terminate_interrupts_and_closes_exec_channels(self):
        h = self.host()
        c1 = h.exec_("import time\nwhile True:\n    time.sleep(0.01)\n")  # main thread
        c2 = h.exec_("channel.receive()")  # a thread, waiting
        time.sleep(0.2)
        t = time.time()
        self.assertEqual(h.terminate(), 0)
        self.assertLess(time.time() - t, 2.5)
        k1 = h.queues[c1][0]
        self.assertEqual(k1[0], "close")
        self.assertIn("KeyboardInterrupt", k1[1])
        self.assertEqual(h.queues[c2][0][:2], ("close", None))
        self.assertEqual(h.terminated, "")

    def test_terminate_bounded_when_interrupt_is_ignored(self):
        h = self.host()
        src = ("import time\nwhile True:\n    try:\n        time.sleep(0.01)\n"
               "    except KeyboardInterrupt:\n        pass\n")
        c1 = h.exec_(src)
        c2 = h.exec_("while True:\n    pass\n")  # a busy thread
        time.sleep(0.2)
        t = time.time()
        self.assertEqual(h.terminate(), 0)
        self.assertLess(time.time() - t, 2.5)
        for c in (c1, c2):
            kind, err, _ = h.queues[c][0]
            self.assertEqual(kind, "close")
            self.assertIn("terminated while this execution was still running", err)

    def test_terminate_while_receiving(self):
        h = self.host()
        c1 = h.exec_("channel.receive()")  # the main thread, reading the stream itself
        c2 = h.exec_("channel.receive()")
        h.send(c1, "warm")  # c1 loops back into receive via the leader path
        time.sleep(0.2)
        t = time.time()
        self.assertEqual(h.terminate(), 0)
        self.assertLess(time.time() - t, 2.5)
        self.assertEqual(h.queues[c2][0][:2], ("close", None))

    def test_stdin_eof_while_receiving(self):
        h = self.host()
        h.exec_("channel.receive()")
        time.sleep(0.1)
        t = time.time()
        h.proc.stdin.close()
        self.assertEqual(h.finish(), 0)
        self.assertLess(time.time() - t, 2.5)

    def test_stdin_eof_ends_worker(self):
        h = self.host()
        h.exec_("import time\ntime.sleep(30)")
        time.sleep(0.1)
        t = time.time()
        h.proc.stdin.close()
        self.assertEqual(h.finish(), 0)
        self.assertLess(time.time() - t, 2.5)

    def test_protocol_violation_terminates_with_reason(self):
        h = self.host()
        h.send_frame(0x42, 0)
        h.wait_for(lambda: h.eof)
        self.assertEqual(h.finish(), 0)
        self.assertIn("protocol violation", h.terminated)
        self.assertIn("protocol violation", h.stderr_text())

    def test_malformed_item_is_a_violation(self):
        h = self.host()
        c = h.exec_("channel.receive()")
        h.send_frame(W.DATA, c, b"\xc6\x01")  # unknown tag 6
        h.wait_for(lambda: h.eof)
        self.assertIn("protocol violation: unknown or malformed tag 6", h.terminated)

    def test_oversized_frame_is_a_violation(self):
        h = self.host(max_frame=1024)
        h.write(W._hdr(W.DATA, 1, 4096))
        h.wait_for(lambda: h.eof)
        self.assertIn("exceeds max_frame", h.terminated)


class Tracing(WorkerTestCase):
    def test_trace_to_file(self):
        fd, path = tempfile.mkstemp()
        os.close(fd)
        self.addCleanup(os.unlink, path)
        env = dict(os.environ, EXECNET_DEBUG=path)
        h = self.host(env=env)
        c = h.exec_("channel.send(1)")
        self.assertEqual(h.item(c), 1)
        self.assertEqual(h.terminate(), 0)
        with open(path) as f:
            trace = f.read()
        self.assertIn("HELLO", trace)
        self.assertIn("TERMINATE received", trace)


if __name__ == "__main__":
    unittest.main()
