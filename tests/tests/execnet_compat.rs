//! The worker's `execnet` compatibility module (contract M) on real popen
//! gateways: remote code written for execnet -- pytest-xdist's `remote.py`
//! above all -- imports `execnet` and finds what it uses.

use std::time::Duration;

use execnet::blocking::makegateway;
use execnet::Value;
use execnet_tests::{bounded, gw, LIMIT};

const T: Duration = Duration::from_secs(20);

#[test]
fn import_execnet_gives_the_workers_module() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                "import execnet, sys\n\
                 channel.send(execnet.__engine__)\n\
                 channel.send(sys.modules['execnet'] is execnet)\n\
                 channel.send(channel.gateway.execmodel.backend)\n",
            )
            .unwrap();
        assert_eq!(ch.receive::<String>().unwrap(), "execnet-rs");
        assert!(ch.receive::<bool>().unwrap());
        assert_eq!(ch.receive::<String>().unwrap(), "thread");
        ch.waitclose(Some(T)).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn dumps_loads_round_trip_and_dump_error() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                "import execnet\n\
                 v = channel.receive()\n\
                 b = execnet.dumps(v)\n\
                 channel.send((type(b).__name__, execnet.loads(b) == v, execnet.loads(b)))\n\
                 try:\n    execnet.dumps(object())\n\
                 except execnet.DumpError as e:\n\
                 \x20   channel.send(('DumpError', isinstance(e, execnet.DataFormatError)))\n\
                 try:\n    execnet.loads(b'\\xc6\\x01')\n\
                 except execnet.gateway_base.LoadError as e:\n\
                 \x20   channel.send('LoadError')\n",
            )
            .unwrap();
        let v = Value::Dict(vec![
            (
                Value::str("k"),
                Value::Tuple(vec![Value::Int(1), Value::Float(2.5), Value::Null]),
            ),
            (Value::Int(7), Value::Bytes(b"\x00\xff".to_vec())),
            (
                Value::str("set"),
                // one member: a set's order on the way back is Python's hash order
                Value::FrozenSet(vec![Value::str("a")]),
            ),
        ]);
        ch.send_value(&v).unwrap();
        assert_eq!(
            ch.receive_value(Some(T)).unwrap(),
            Value::Tuple(vec![Value::str("bytes"), Value::Bool(true), v])
        );
        assert_eq!(
            ch.receive::<(String, bool)>().unwrap(),
            ("DumpError".to_string(), true)
        );
        assert_eq!(ch.receive::<String>().unwrap(), "LoadError");
        ch.waitclose(Some(T)).unwrap();
        gw.exit().unwrap();
    })
}

/// A trimmed copy of what pytest-xdist 3.8's `remote.py` does with the
/// execmodel: its `TestQueue` (the execmodel's `RLock()` and `Event()`), fed by
/// a channel callback on the reader thread while the main thread drains it,
/// plus a helper thread from `execmodel.start` and `execmodel.queue`.
const XDIST_REMOTE: &str = r#"
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

model = channel.gateway.execmodel
torun = TestQueue(model)

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

q = model.queue.Queue()
model.start(lambda a, b: q.put(a + b), (40, 2))
import threading
channel.send((model.backend, q.get(timeout=10), threading.current_thread() is threading.main_thread()))
channel.setcallback(handle_command, endmarker=Marker.SHUTDOWN)
done = []
while True:
    i = torun.get()
    if i is Marker.SHUTDOWN:
        break
    done.append(i)
channel.send(done)
"#;

#[test]
fn xdist_remote_execmodel_usage_on_main_thread_only() {
    bounded(LIMIT, || {
        let gw = makegateway("popen//execmodel=main_thread_only").unwrap();
        let ch = gw.remote_exec(XDIST_REMOTE).unwrap();
        assert_eq!(
            ch.receive::<(String, i64, bool)>().unwrap(),
            ("main_thread_only".to_string(), 42, true)
        );
        for i in 0..5i64 {
            let cmd = Value::Tuple(vec![
                Value::str("runtests"),
                Value::Dict(vec![(
                    Value::str("indices"),
                    Value::List(vec![Value::Int(2 * i), Value::Int(2 * i + 1)]),
                )]),
            ]);
            ch.send_value(&cmd).unwrap();
        }
        ch.send_value(&Value::Tuple(vec![
            Value::str("shutdown"),
            Value::Dict(vec![]),
        ]))
        .unwrap();
        assert_eq!(
            ch.receive::<Vec<i64>>().unwrap(),
            (0..10).collect::<Vec<_>>()
        );
        ch.waitclose(Some(T)).unwrap();
        gw.exit().unwrap();
    })
}
