"""Every gateway kind, real: popen, thread, ssh (a real sshd on 127.0.0.1),
socket (bootstrap/socketserver.py), via."""

import os
import sys

import pytest

import execnet_rs
from peers import SSHD, Sshd, SocketServer

REQUIRE_ALL = os.environ.get("EXECNET_REQUIRE_ALL") == "1"


def _thread_worker_available():
    from execnet_rs import gateway

    return "serve_thread" in gateway._thread_worker_namespace()


@pytest.fixture(scope="module")
def sshd():
    if not os.path.exists(SSHD):
        if REQUIRE_ALL:
            pytest.fail(f"{SSHD} missing (apt-get install openssh-server)")
        pytest.skip(f"SKIPPED: {SSHD} missing (apt-get install openssh-server)")
    s = Sshd()
    yield s
    s.stop()


@pytest.fixture
def socketserver():
    s = SocketServer()
    yield s
    s.stop()


def roundtrip(gw):
    ch = gw.remote_exec("import os; channel.send((os.getpid(), channel.receive() * 2))")
    ch.send(21)
    pid, v = ch.receive(30)
    assert v == 42
    return pid


def test_ssh_gateway(group, sshd):
    gw = group.makegateway(f"ssh=sshd-root//ssh_config={sshd.ssh_config}//python=/usr/bin/python3")
    assert roundtrip(gw) != os.getpid()
    assert gw.remoteaddress == "sshd-root"


def test_ssh_gateway_classic_name(sshd):
    gw = execnet_rs.SshGateway("sshd-root", remotepython="/usr/bin/python3", ssh_config=sshd.ssh_config)
    try:
        roundtrip(gw)
    finally:
        gw.exit()
        execnet_rs.default_group.terminate(2)


def test_ssh_unknown_host_is_hostnotfound(group, sshd):
    with pytest.raises(execnet_rs.HostNotFound):
        group.makegateway(f"ssh=no-such-host.invalid//ssh_config={sshd.ssh_config}")


def test_ssh_failing_before_the_worker_is_hostnotfound(group, tmp_path):
    # execnet: HostNotFound for any ssh start whose worker never answered;
    # here ssh itself fails (exit 255) on a missing config file, no network
    if not __import__("shutil").which("ssh"):
        pytest.skip("SKIPPED: no ssh client on PATH")
    with pytest.raises(execnet_rs.HostNotFound) as e:
        group.makegateway(f"ssh=xyz//ssh_config={tmp_path / 'missing'}")
    assert "missing" in str(e.value)  # ssh's own words are kept


def test_socket_gateway(group, socketserver, monkeypatch):
    monkeypatch.setenv("EXECNET_SOCKET_TOKEN", socketserver.token)
    gw = group.makegateway(f"socket={socketserver.address}")
    roundtrip(gw)
    assert gw.remoteaddress == socketserver.address
    host, port = socketserver.address.rsplit(":", 1)
    gw2 = execnet_rs.SocketGateway(host, int(port))
    try:
        roundtrip(gw2)
    finally:
        gw2.exit()
        execnet_rs.default_group.terminate(2)


def test_socket_unknown_host_is_hostnotfound(group, monkeypatch):
    monkeypatch.delenv("EXECNET_SOCKET_TOKEN", raising=False)
    with pytest.raises(execnet_rs.HostNotFound):
        group.makegateway("socket=no-such-host.invalid:9000")


def test_socket_refused_is_hostnotfound(group, monkeypatch):
    from peers import free_port

    monkeypatch.setenv("EXECNET_SOCKET_TOKEN", "x")
    with pytest.raises(execnet_rs.HostNotFound):
        group.makegateway(f"socket=127.0.0.1:{free_port()}")


def test_via_gateway(group):
    first = group.makegateway(f"popen//python={sys.executable}//id=relay")
    second = group.makegateway(f"popen//python={sys.executable}//via=relay")
    assert roundtrip(second) != roundtrip(first)
    group.terminate(timeout=2)


def test_thread_gateway(group):
    if not _thread_worker_available():
        pytest.skip("SKIPPED: the worker has no serve_thread yet (contract T)")
    gw = group.makegateway("thread")
    assert roundtrip(gw) == os.getpid()
    assert gw.remote_exec("import execnet; channel.send(execnet.__engine__)").receive(10) == "execnet-rs"
    busy = gw.remote_exec("import time\nwhile 1: time.sleep(0.05)")
    tg = execnet_rs.ThreadGateway()
    try:
        roundtrip(tg)
        with pytest.raises(ValueError):
            group.makegateway("thread//chdir=/tmp")
    finally:
        tg.exit()
        execnet_rs.default_group.terminate(2)


def test_thread_gateway_terminates_busy_code_within_bounds(group):
    import time

    if not _thread_worker_available():
        pytest.skip("SKIPPED: the worker has no serve_thread yet (contract T)")
    gw = group.makegateway("thread")
    gw.remote_exec("import time\nwhile 1: time.sleep(0.05)")
    t = time.time()
    group.terminate(timeout=2)
    assert time.time() - t < 10
    assert gw._gw.is_terminated()


def test_thread_gateway_main_thread_only(group):
    if not _thread_worker_available():
        pytest.skip("SKIPPED: the worker has no serve_thread yet (contract T)")
    gw = group.makegateway("thread//execmodel=main_thread_only")
    assert gw.remote_status().execmodel == "main_thread_only"
    roundtrip(gw)
