"""Channel semantics as execnet has them."""

import gc
import sys
import threading
import time

import pytest

import execnet_rs


def test_timeout_eof_and_remote_error(gw):
    ch = gw.remote_exec("channel.receive(); channel.send(1)")
    with pytest.raises(ch.TimeoutError) as e:
        ch.receive(0.05)
    assert isinstance(e.value, IOError) and isinstance(e.value, execnet_rs.TimeoutError)
    ch.send(None)
    assert ch.receive(10) == 1
    with pytest.raises(EOFError):
        ch.receive(10)
    ch = gw.remote_exec("raise ValueError('boom 42')")
    with pytest.raises(ch.RemoteError) as e:
        ch.receive(10)
    assert "boom 42" in str(e.value) and "ValueError" in e.value.formatted
    ch = gw.remote_exec("raise KeyError('x')")
    with pytest.raises(execnet_rs.RemoteError):
        ch.waitclose(10)


def test_iteration_and_isclosed(gw):
    ch = gw.remote_exec("for i in range(5): channel.send(i)")
    assert list(ch) == [0, 1, 2, 3, 4]
    ch.waitclose(10)
    assert ch.isclosed()


def test_send_after_close_is_oserror(gw):
    ch = gw.remote_exec("channel.receive()")
    ch.close()
    with pytest.raises(OSError):
        ch.send(1)


def test_close_with_error_reaches_remote(gw):
    ch = gw.remote_exec(
        """
        sub = channel.receive()
        try:
            sub.receive()
        except sub.RemoteError as e:
            channel.send(str(e))
        """
    )
    sub = gw.newchannel()
    ch.send(sub)
    sub.close("stop it")
    assert "stop it" in ch.receive(10)


def test_waitclose_timeout(gw):
    ch = gw.remote_exec("channel.receive()")
    with pytest.raises(ch.TimeoutError):
        ch.waitclose(0.05)
    ch.send(1)
    ch.waitclose(10)


def test_setcallback_endmarker_and_receive_refused(gw):
    ch = gw.remote_exec("for i in range(3): channel.send(i)")
    got, done = [], threading.Event()

    def cb(x):
        got.append(x)
        if x == "END":
            done.set()

    ch.setcallback(cb, endmarker="END")
    assert done.wait(10)
    assert got == [0, 1, 2, "END"]
    with pytest.raises(OSError):
        ch.receive(1)


def test_setcallback_twice_is_oserror(gw):
    ch = gw.remote_exec("channel.receive()")
    ch.setcallback(lambda x: None)
    with pytest.raises(OSError):
        ch.setcallback(lambda x: None)
    ch.close()


def test_callback_runs_while_caller_waits(gw):
    """The reader thread needs the GIL for the callback while the main
    thread waits in receive(): the wait must have released it."""
    ch1 = gw.remote_exec("for x in channel: channel.send(x)")
    ch2 = gw.remote_exec("import time; time.sleep(0.2); channel.send('late')")
    ch1.setcallback(lambda x: seen.append(x))
    seen = []
    for i in range(50):
        ch1.send(i)
    assert ch2.receive(10) == "late"
    deadline = time.time() + 10
    while len(seen) < 50 and time.time() < deadline:
        time.sleep(0.01)
    assert seen == list(range(50))


def test_wait_inside_callback_fails_instead_of_hanging(gw):
    other = gw.remote_exec("channel.receive()")
    ch = gw.remote_exec("channel.send(1)")
    result = []
    done = threading.Event()

    def cb(x):
        try:
            other.receive()
        except OSError as e:
            result.append(e)
        done.set()

    ch.setcallback(cb)
    assert done.wait(10)
    assert isinstance(result[0], OSError)
    other.send(None)


def test_callback_exception_closes_channel_with_error(gw, capsys):
    ch = gw.remote_exec(
        """
        channel.send(1)
        try:
            channel.receive()
        except channel.RemoteError as e:
            pass
        """
    )

    def cb(x):
        raise ValueError("callback failed")

    ch.setcallback(cb)
    ch.waitclose(10)


def test_makefile(gw):
    ch = gw.remote_exec(
        """
        f = channel.makefile("w")
        f.write("hello\\nworld\\n")
        """
    )
    f = ch.makefile("r")
    assert f.readline() == "hello\n"
    assert f.readline() == "world\n"
    ch = gw.remote_exec("channel.send(channel.receive())")
    w = ch.makefile("w")
    w.write(b"bytes")
    assert ch.receive(10) == b"bytes"
    with pytest.raises(ValueError):
        ch.makefile("x")


def test_dropped_unused_channel_closes(gw):
    ch = gw.remote_exec("for x in channel: pass")
    del ch
    gc.collect()
    deadline = time.time() + 10
    while gw.remote_status().numexecuting and time.time() < deadline:
        time.sleep(0.02)
    assert gw.remote_status().numexecuting == 0


def test_unsendable_value_says_cant_serialize_both_ways(gw):
    # execnet's text, which code matches: "can't serialize <class '...'>"
    ch = gw.remote_exec("channel.send(ValueError(42))")
    with pytest.raises(ch.RemoteError) as e:
        ch.receive(10)
    assert "can't serialize <class 'ValueError'>" in str(e.value)
    ch = gw.remote_exec("channel.send(channel.receive())")
    with pytest.raises(execnet_rs.DumpError) as e:
        ch.send(object())
    assert str(e.value).startswith("can't serialize <class 'object'>")
    ch.send(1)
    assert ch.receive(10) == 1


def test_channel_dropped_by_a_remote_thread_closes(gw):
    # execnet's test_channel_callback_remote_freed: a remote thread sends on a
    # channel and ends, dropping it; nothing else happens on the gateway, yet
    # the host's waitclose() returns (it waited for unrelated traffic)
    seen = []
    ch = gw.remote_exec(
        """
        import _thread, gc, time
        def producer(box):
            sub = box.pop()
            for i in range(3):
                time.sleep(0.05)
                sub.send(i)
            del sub
            gc.collect()
        box = [channel.receive()]
        _thread.start_new_thread(producer, (box,))
        """
    )
    sub = gw.newchannel()
    sub.setcallback(seen.append)
    ch.send(sub)
    ch.waitclose(10)
    sub.waitclose(10)
    assert seen == [0, 1, 2]


def test_multichannel(group):
    for _ in range(3):
        group.makegateway(f"popen//python={sys.executable}")
    mc = group.remote_exec("channel.send(channel.receive() * 2)")
    assert len(mc) == 3
    mc.send_each(21)
    assert mc.receive_each() == [42, 42, 42]
    mc.waitclose()
    mc = group.remote_exec("channel.send(channel.gateway.id if hasattr(channel.gateway, 'id') else 1)")
    q = mc.make_receive_queue(endmarker=-1)
    assert mc.make_receive_queue() is q
    items = [q.get(timeout=10) for _ in range(6)]
    ends = [ch for ch, x in items if x == -1]
    assert sorted(c.id for c in ends) == sorted(c.id for c in mc)
    assert all(ch in mc for ch, _ in items)
    import queue

    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)


def test_multichannel_waitclose_raises_remote_error(group):
    for _ in range(2):
        group.makegateway(f"popen//python={sys.executable}")
    mc = group.remote_exec("raise ValueError('x')")
    with pytest.raises(execnet_rs.RemoteError):
        mc.waitclose()


def test_32_threads_share_one_gateway(gw):
    errors = []

    def work(n):
        try:
            ch = gw.remote_exec("for x in channel: channel.send(x + 1)")
            for i in range(50):
                ch.send(n * 1000 + i)
                assert ch.receive(30) == n * 1000 + i + 1
            ch.close()
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert not any(t.is_alive() for t in threads)


def test_bulk_sends_reuse_memory(gw):
    """A stream of 1 MiB bytes items from this thread does not map fresh
    pages for every item: ~490 page faults per MiB did, holding a Python
    host's host->worker bulk at a third of a Rust host's (the bench row
    "host page faults per MiB sent")."""
    import resource

    ch = gw.remote_exec("n = 0\nfor x in iter(channel.receive, None):\n    n += len(x)\nchannel.send(n)")
    blob = b"x" * (1 << 20)
    for _ in range(8):  # the allocator settles: its thresholds adapt
        ch.send(blob)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(64):
        ch.send(blob)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    ch.send(None)
    assert ch.receive() == 72 << 20
    assert faults / 64 < 100, f"{faults / 64:.0f} page faults per MiB sent"
