"""The worker's `execnet` compatibility module (contract M): what remote code written
for execnet -- pytest-xdist's remote.py above all -- imports and uses on the worker."""
import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_worker import WorkerTestCase  # noqa: E402

NAMES = ["Channel", "DataFormatError", "DumpError", "LoadError", "RemoteError", "TimeoutError",
         "dump", "dumps", "load", "loads"]


class CompatModule(WorkerTestCase):
    def test_import_execnet_is_ours(self):
        h = self.host()
        c = h.exec_("import execnet\nchannel.send(execnet.__engine__)\n"
                    "import sys\nchannel.send(sys.modules['execnet'] is execnet)\n"
                    "channel.send(sorted(n for n in %r if not hasattr(execnet, n)))\n" % NAMES)
        self.assertEqual(h.item(c), "execnet-rs")
        self.assertEqual(h.item(c), True)
        self.assertEqual(h.item(c), [])

    def test_ours_even_when_a_real_execnet_is_importable(self):
        # pytest-xdist installs the real execnet beside the worker: the worker's answer
        # to "import execnet" is still ours, also for modules imported later
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        os.mkdir(os.path.join(d, "execnet"))
        with open(os.path.join(d, "execnet", "__init__.py"), "w") as f:
            f.write("REAL = True\n")
        with open(os.path.join(d, "uses_execnet.py"), "w") as f:
            f.write("import execnet\nENGINE = getattr(execnet, '__engine__', 'real')\n")
        h = self.host(env=dict(os.environ, PYTHONPATH=d))
        c = h.exec_("import execnet, sys\nimport uses_execnet\n"
                    "channel.send((execnet.__engine__, hasattr(execnet, 'REAL'), "
                    "uses_execnet.ENGINE))\n")
        self.assertEqual(h.item(c), ("execnet-rs", False, "execnet-rs"))

    def test_dumps_loads_round_trip(self):
        h = self.host()
        c = h.exec_(
            "import execnet\n"
            "class S(str): pass\n"
            "class D(dict): pass\n"
            "vals = [None, True, 0, -1, 2 ** 100, -(2 ** 70), 1.5, float('inf'), 1 + 2j, b'x',\n"
            "        'text \\u20ac', [1, [2]], (1, (2,)), {'a': {1: None}}, {1, 2},\n"
            "        frozenset([3]), ()]\n"
            "out = []\n"
            "for v in vals:\n"
            "    b = execnet.dumps(v)\n"
            "    w = execnet.loads(b)\n"
            "    out.append(type(b) is bytes and w == v and type(w) is type(v))\n"
            "extra = [execnet.loads(execnet.dumps(S('s'))), execnet.loads(execnet.dumps(D(k=1))),\n"
            "         execnet.loads(execnet.dumps(bytearray(b'ba'))),\n"
            "         execnet.loads(bytearray(execnet.dumps(7))),\n"
            "         execnet.loads(memoryview(execnet.dumps('mv')))]\n"
            "import io\nf = io.BytesIO()\nexecnet.dump(f, (1, 'two'))\nf.seek(0)\n"
            "extra.append(execnet.load(f))\n"
            "channel.send((out, extra))\n")
        out, extra = h.item(c)
        self.assertEqual(out, [True] * 17)
        self.assertEqual(extra, ["s", {"k": 1}, b"ba", 7, "mv", (1, "two")])

    def test_dump_error_and_load_error(self):
        h = self.host()
        c = h.exec_(
            "import execnet\nr = []\n"
            "for v in (object(), [1, object()], {'k': object}):\n"
            "    try:\n        execnet.dumps(v)\n"
            "    except execnet.DumpError as e:\n"
            "        r.append((isinstance(e, execnet.DataFormatError), isinstance(e, TypeError)))\n"
            "for b in (b'', b'\\x82\\x01', b'\\xc6\\x01', b'\\x01\\x02', b'\\xa1\\x81\\x01\\x01'):\n"
            "    try:\n        execnet.loads(b)\n"
            "    except execnet.LoadError as e:\n"
            "        r.append(isinstance(e, execnet.DataFormatError))\n"
            "channel.send(r)\n"
            "try:\n    channel.send(object())\nexcept execnet.DumpError:\n"
            "    channel.send('channel still usable')\n")
        self.assertEqual(h.item(c), [(True, True)] * 3 + [True] * 5)
        self.assertEqual(h.item(c), "channel still usable")

    def test_gateway_base_submodule(self):
        h = self.host()
        c = h.exec_(
            "import execnet.gateway_base\nfrom execnet import gateway_base as gb\n"
            "from execnet.gateway_base import ExecModel, DumpError\n"
            "import execnet\n"
            "channel.send((gb is execnet.gateway_base, DumpError is execnet.DumpError,\n"
            "              sorted(n for n in %r if getattr(gb, n) is not getattr(execnet, n)),\n"
            "              isinstance(channel.gateway.execmodel, ExecModel),\n"
            "              isinstance(channel.gateway, gb.WorkerGateway), gb.__engine__))\n"
            "try:\n    import execnet.multi\nexcept ImportError as e:\n    channel.send('no multi')\n"
            "try:\n    execnet.makegateway\nexcept AttributeError as e:\n    channel.send(str(e))\n"
            % NAMES)
        self.assertEqual(h.item(c), (True, True, [], True, True, "execnet-rs"))
        self.assertEqual(h.item(c), "no multi")
        self.assertIn("no attribute 'makegateway'", h.item(c))

    def test_execmodel_attributes(self):
        for model in ("thread", "main_thread_only"):
            h = self.host(options={"execmodel": model})
            c = h.exec_(
                "import _thread, os, queue, socket, subprocess, time\n"
                "import execnet\nm = channel.gateway.execmodel\n"
                "lk, rl, ev = m.Lock(), m.RLock(), m.Event()\n"
                "with lk:\n    with lk:\n        pass\n"  # reentrant, as execnet's
                "with rl:\n    pass\n"
                "got = []\ndef work(a, b):\n    got.append(a + b)\n    ev.set()\n"
                "m.start(work, (1, 2))\n"
                "r, w = os.pipe()\nf = m.fdopen(w, 'w')\nf.write('\\u20ac')\nf.close()\n"
                "t = time.monotonic()\nm.sleep(0.01)\n"
                "try:\n    execnet.gateway_base.get_execmodel('eventlet')\n"
                "except ValueError:\n    bad = True\n"
                "channel.send((m.backend, repr(m), m.queue is queue, m.socket is socket,\n"
                "              m.subprocess is subprocess, m.get_ident() == _thread.get_ident(),\n"
                "              ev.wait(10), got, os.read(r, 10).decode('utf-8'),\n"
                "              time.monotonic() - t >= 0.01, bad,\n"
                "              execnet.gateway_base.get_execmodel(m.backend).backend,\n"
                "              execnet.gateway_base.get_execmodel(m) is m))\n")
            self.assertEqual(h.item(c), (model, "<ExecModel %r>" % model, True, True, True, True,
                                         True, [3], "\u20ac", True, True, model, True))
            self.assertEqual(h.request_status()["execmodel"], model)  # still a str on the wire
            self.assertEqual(h.terminate(), 0)

    def test_xdist_testqueue_on_the_execmodel(self):
        # a trimmed copy of what pytest-xdist's remote.py does with the execmodel: its
        # TestQueue (RLock + Event) fed from a channel callback, drained by the exec
        h = self.host(options={"execmodel": "main_thread_only"})
        c = h.exec_(XDIST_QUEUE)
        h.send(c, "go")
        self.assertEqual(h.item(c), "ready")
        for i in range(5):
            h.send(c, ("runtests", {"indices": [2 * i, 2 * i + 1]}))
        h.send(c, ("shutdown", {}))
        self.assertEqual(h.item(c), list(range(10)))
        self.assertEqual(h.receive(c)[:2], ("close", None))


XDIST_QUEUE = """
import collections, contextlib, enum
import execnet

class Marker(enum.Enum):
    SHUTDOWN = 0

class TestQueue:
    def __init__(self, execmodel: execnet.gateway_base.ExecModel):
        self._items = collections.deque()
        self._lock = execmodel.RLock()
        self._has_items_event = execmodel.Event()

    def get(self):
        while True:
            with self.lock() as locked_items:
                if locked_items:
                    return locked_items.popleft()
            self._has_items_event.wait()

    def put(self, item):
        with self.lock() as locked_items:
            locked_items.append(item)

    @contextlib.contextmanager
    def lock(self):
        with self._lock:
            try:
                yield self._items
            finally:
                if self._items:
                    self._has_items_event.set()
                else:
                    self._has_items_event.clear()

torun = TestQueue(channel.gateway.execmodel)

def handle_command(command):
    if command is Marker.SHUTDOWN:
        torun.put(Marker.SHUTDOWN)
        return
    name, kwargs = command
    if name == "runtests":
        for i in kwargs["indices"]:
            torun.put(i)
    elif name == "shutdown":
        torun.put(Marker.SHUTDOWN)

channel.receive()
channel.setcallback(handle_command, endmarker=Marker.SHUTDOWN)
channel.send("ready")
done = []
while True:
    i = torun.get()
    if i is Marker.SHUTDOWN:
        break
    done.append(i)
channel.send(done)
"""


if __name__ == "__main__":
    unittest.main()
