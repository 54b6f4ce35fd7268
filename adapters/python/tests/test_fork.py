"""popen//fork through the Python package: the spec string goes to the engine
unchanged, every forked worker is a full gateway of its own (own pid and process
group, forked by one fork server per interpreter), terminate reaps them, and a
killed one is reported as a dead worker."""

import os
import sys
import time

import pytest

import execnet_rs
from procs import alive


def ids(gw):
    return gw.remote_exec(
        "import os; channel.send((os.getpid(), os.getppid(), os.getpgid(0)))"
    ).receive(30)


def test_xspec_accepts_fork():
    spec = execnet_rs.XSpec("popen//fork//python=python3//env:X=1")
    assert spec.popen is True and spec.fork is True
    assert spec.env == {"X": "1"}
    assert execnet_rs.XSpec("popen").fork is None


def test_fork_gateways_are_full_gateways(group):
    gws = [group.makegateway("popen//fork") for _ in range(4)]
    seen = [ids(gw) for gw in gws]
    pids = {pid for pid, _, _ in seen}
    servers = {ppid for _, ppid, _ in seen}
    assert len(pids) == 4
    assert len(servers) == 1 and os.getpid() not in servers
    assert all(pgid == pid for pid, _, pgid in seen)
    for gw in gws:
        ch = gw.remote_exec("channel.send(channel.receive() + 1)")
        ch.send(41)
        assert ch.receive(30) == 42
        assert gw.spec.fork is True
    group.terminate(timeout=5)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(alive(p) for p in pids)


def test_a_killed_fork_worker_is_a_dead_gateway(group):
    gw = group.makegateway(f"popen//fork//python={sys.executable}")
    ch = gw.remote_exec("import os; channel.receive(); os.kill(os.getpid(), 9)")
    ch.send(None)
    with pytest.raises(EOFError) as info:
        ch.receive(30)
    # execnet's own class for it; the engine's text says how the worker died
    assert "signal 9" in str(info.value) or "SIGKILL" in str(info.value), info.value


def test_a_forked_host_process_gets_its_own_fork_server(group):
    gw = group.makegateway("popen//fork")
    server = ids(gw)[1]
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            g = execnet_rs.Group()
            other = g.makegateway("popen//fork")
            mine = ids(other)[1]
            code = 0 if mine != server else 2
            g.terminate(5)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    # the parent's server and gateway are untouched
    assert ids(gw)[1] == server
    assert gw.remote_exec("channel.send(2)").receive(30) == 2
