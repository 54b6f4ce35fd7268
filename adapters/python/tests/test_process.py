"""Whole-process behaviour: Ctrl-C, interpreter exit, fork. Each test runs
a fresh interpreter with the package."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from procs import alive, children_of


def run_child(code, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_line(p, prefix, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = p.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and p.poll() is not None:
            break
    raise AssertionError(f"no {prefix!r} line; stderr: {p.stderr.read()}")


SIGINT_CHILD = """
    import sys, execnet_rs
    gw = execnet_rs.makegateway("popen//python=%s")
    ch = gw.remote_exec("channel.receive(); channel.send('after')")
    for what in ("receive", "receive_timeout", "waitclose"):
        print("waiting", what, flush=True)
        try:
            if what == "receive":
                ch.receive()
            elif what == "receive_timeout":
                ch.receive(timeout=600)
            else:
                ch.waitclose()
        except KeyboardInterrupt:
            print("interrupted", what, flush=True)
    ch.send(1)
    print("usable", ch.receive(10), flush=True)
""" % sys.executable


def test_sigint_interrupts_receive_and_waitclose():
    p = run_child(SIGINT_CHILD)
    try:
        for what in ("receive", "receive_timeout", "waitclose"):
            wait_line(p, f"waiting {what}")
            time.sleep(0.3)
            os.kill(p.pid, signal.SIGINT)
            assert wait_line(p, "interrupted").strip() == f"interrupted {what}"
        assert wait_line(p, "usable").strip() == "usable after"
        assert p.wait(30) == 0
    finally:
        p.kill()
        p.wait()


def test_sigint_interrupts_a_send_held_by_a_full_window():
    """The remote never receives: the window fills and send() waits; Ctrl-C
    raises KeyboardInterrupt there (the main thread waits in slices)."""
    p = run_child(
        """
        import execnet_rs
        gw = execnet_rs.makegateway("popen//python=%s")
        ch = gw.remote_exec("import time\\ntime.sleep(60)")
        item = b"x" * (1 << 20)
        print("sending", flush=True)
        sent = 0
        try:
            while sent < 1000:
                ch.send(item)
                sent += 1
        except KeyboardInterrupt:
            print("interrupted after", sent, flush=True)
        gw.exit()
        """
        % sys.executable
    )
    try:
        wait_line(p, "sending")
        time.sleep(1.0)
        os.kill(p.pid, signal.SIGINT)
        line = wait_line(p, "interrupted after")
        assert 0 < int(line.split()[-1]) < 1000, line
        assert p.wait(30) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait()


def test_a_killed_host_leaves_no_process_of_its_workers():
    """The host process dies (SIGKILL): its popen worker sees its input end and
    ends, and takes along what remote code started in its process group (the
    host can no longer kill that group)."""
    p = run_child(
        """
        import time, execnet_rs
        gw = execnet_rs.makegateway("popen//python=%s")
        ch = gw.remote_exec(
            "import os, subprocess\\n"
            "p = subprocess.Popen(['sleep', '600'])\\n"
            "channel.send((os.getpid(), p.pid))")
        print("pids", *ch.receive(), flush=True)
        time.sleep(600)
        """
        % sys.executable
    )
    pids = []
    try:
        pids = [int(x) for x in wait_line(p, "pids").split()[1:]]
        p.kill()
        p.wait()
        deadline = time.time() + 10
        while any(alive(x) for x in pids) and time.time() < deadline:
            time.sleep(0.05)
        assert [x for x in pids if alive(x)] == []
    finally:
        p.kill()
        p.wait()
        for x in pids:
            try:
                os.kill(x, signal.SIGKILL)
            except OSError:
                pass


def test_exit_with_busy_gateways_does_not_hang_or_leak():
    p = run_child(
        """
        import threading, execnet_rs
        gws = [execnet_rs.makegateway("popen//python=%s") for _ in range(3)]
        g2 = execnet_rs.Group()
        gws.append(g2.makegateway("popen//python=%s"))
        pids = [gw._rinfo().pid for gw in gws]
        chans = [gw.remote_exec("import time\\nwhile 1: time.sleep(1)") for gw in gws]
        busy = gws[0].remote_exec("for x in channel: channel.send(x)")
        t = threading.Thread(target=lambda: chans[1].receive(), daemon=True)
        t.start()
        busy.setcallback(lambda x: None)
        print("pids", *pids, flush=True)
        """
        % (sys.executable, sys.executable)
    )
    try:
        pids = [int(x) for x in wait_line(p, "pids").split()[1:]]
        assert p.wait(30) == 0, p.stderr.read()
        deadline = time.time() + 5
        while any(alive(x) for x in pids) and time.time() < deadline:
            time.sleep(0.05)
        assert not any(alive(x) for x in pids)
    finally:
        p.kill()
        p.wait()


def test_fork_neither_deadlocks_nor_corrupts_parent():
    p = run_child(
        """
        import os, execnet_rs
        gw = execnet_rs.makegateway("popen//python=%s")
        ch = gw.remote_exec("for x in channel: channel.send(x)")
        ch.send(1); assert ch.receive(10) == 1
        for use in (False, True):
            pid = os.fork()
            if pid == 0:
                # The child forgets the parent's gateways: no TERMINATE into
                # the parent's pipe, no join of threads it does not have.
                try:
                    if use:
                        try:
                            ch.send(2)
                        except OSError:
                            pass
                        else:
                            os._exit(3)
                    assert len(execnet_rs.default_group) == 0
                    g = execnet_rs.makegateway("popen//python=%s")
                    assert g.remote_exec("channel.send(5)").receive(10) == 5
                except BaseException as e:
                    print("child failed", repr(e), flush=True)
                    os._exit(1)
                os._exit(0) if use else None
                break
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
        else:
            ch.send(7); assert ch.receive(10) == 7
            print("parent ok", flush=True)
        """
        % (sys.executable, sys.executable)
    )
    try:
        out, err = p.communicate(timeout=60)
        assert "parent ok" in out, (out, err)
        assert p.returncode == 0, err
    finally:
        p.kill()
        p.wait()


def test_sigint_interrupts_terminate_wait():
    p = run_child(
        """
        import os, signal, time, execnet_rs
        g = execnet_rs.Group()
        gw = g.makegateway("popen//python=%s")
        pid = gw._rinfo().pid
        os.kill(pid, signal.SIGSTOP)   # TERMINATE is never read: the wait lasts
        print("terminating", flush=True)
        t = time.time()
        try:
            g.terminate(timeout=30)
        except KeyboardInterrupt:
            print("interrupted after %%.1f" %% (time.time() - t), flush=True)
        try:  # the termination goes on in the background and may have reaped it
            os.kill(pid, signal.SIGKILL)
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        """
        % sys.executable
    )
    try:
        wait_line(p, "terminating")
        time.sleep(0.5)
        os.kill(p.pid, signal.SIGINT)
        line = wait_line(p, "interrupted")
        assert float(line.split()[-1]) < 10
        assert p.wait(30) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait()


def test_exit_with_busy_thread_gateway_does_not_hang():
    from test_transports import _thread_worker_available
    import pytest

    if not _thread_worker_available():
        pytest.skip("SKIPPED: the worker has no serve_thread yet (contract T)")
    p = run_child(
        """
        import execnet_rs
        gw = execnet_rs.makegateway("thread")
        gw.remote_exec("import time\\nwhile 1: time.sleep(0.05)")
        ch = gw.remote_exec("for x in channel: channel.send(x)")
        ch.send(1); assert ch.receive(10) == 1
        print("busy", flush=True)
        """
    )
    try:
        wait_line(p, "busy")
        assert p.wait(30) == 0, p.stderr.read()
    finally:
        p.kill()
        p.wait()
