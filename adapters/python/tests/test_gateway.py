"""Gateway, Group and XSpec as execnet has them."""

import os
import sys
import time

import pytest

import execnet_rs
from execnet_rs import XSpec


def test_remote_exec_module(gw):
    import remote_module_example as mod

    ch = gw.remote_exec(mod)
    assert ch.receive(10) == "__channelexec__"


def test_remote_traceback_names_the_module_file(gw, tmp_path, monkeypatch):
    # execnet's tracebacks of remote_exec(module) and remote_exec(function)
    # name the module's file and line, not "<remote exec>"
    (tmp_path / "remote_tb_example.py").write_text(
        "\ndef run_me(channel=None):\n    raise ValueError('me')\n\n"
        "if __name__ == '__channelexec__':\n    run_me()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import remote_tb_example as mod

    for source in (mod, mod.run_me):
        ch = gw.remote_exec(source)
        with pytest.raises(ch.RemoteError) as e:
            ch.receive(10)
        text = str(e.value)
        assert 'remote_tb_example.py", line 3, in run_me' in text
        assert "raise ValueError('me')" in text  # the file is there: lines shown
        assert text.endswith("ValueError: me\n")
    ch = gw.remote_exec("def f():\n    raise KeyError(1)\nf()\n")
    with pytest.raises(ch.RemoteError) as e:
        ch.receive(10)
    assert 'File "<remote exec>", line 2, in f' in str(e.value)


def _no_channel_arg(x):
    pass


def _uses_global(channel):
    channel.send(os.getpid())


def test_function_checks(gw):
    with pytest.raises(ValueError):
        gw.remote_exec(lambda channel: None)
    with pytest.raises(ValueError):
        gw.remote_exec(_no_channel_arg)
    with pytest.raises(ValueError):
        gw.remote_exec(_uses_global)
    y = 1

    def closure(channel):
        channel.send(y)

    with pytest.raises(ValueError):
        gw.remote_exec(closure)
    with pytest.raises(TypeError):
        gw.remote_exec("pass", a=1)


def test_info_and_status(gw):
    info = gw._rinfo()
    assert info.executable and info.pid != os.getpid()
    assert gw._rinfo() is info
    fresh = gw._rinfo(update=True)
    assert fresh.pid == info.pid and tuple(fresh.version_info) == tuple(info.version_info)
    # The exec that answered _rinfo(update=True) may still be finishing.
    deadline = time.time() + 10
    st = gw.remote_status()
    while st.numexecuting and time.time() < deadline:
        time.sleep(0.01)
        st = gw.remote_status()
    assert st.numchannels >= 0 and st.numexecuting == 0
    assert gw.hasreceiver()
    assert gw.spec.id == gw.id


def test_user_attributes_and_group(group):
    gw = group.makegateway(f"popen//python={sys.executable}//id=mine")
    gw.node = "xdist sets this"
    assert group["mine"] is gw and group[0] is gw and "mine" in group and len(group) == 1
    assert list(group) == [gw] and gw._group is group
    assert group["mine"].node == "xdist sets this"
    gw2 = group.makegateway(f"popen//python={sys.executable}")
    assert gw2.id == "gw0"
    with pytest.raises(ValueError):
        group.makegateway(f"popen//python={sys.executable}//id=mine")
    gw.exit()
    assert "mine" not in group and len(group) == 1
    group.terminate(timeout=2)
    assert len(group) == 0


def test_set_execmodel_main_thread_only(group):
    group.set_execmodel("main_thread_only")
    gw = group.makegateway(f"popen//python={sys.executable}")
    assert gw.remote_status().execmodel == "main_thread_only"
    assert gw.remote_exec("channel.send(1)").receive(10) == 1
    with pytest.raises(ValueError):
        group.set_execmodel("thread")
    with pytest.raises(ValueError):
        execnet_rs.Group(execmodel="nonsense")


def test_popen_gateway_classic_name():
    gw = execnet_rs.PopenGateway(python=sys.executable)
    try:
        assert gw.remote_exec("channel.send(2 * 21)").receive(10) == 42
    finally:
        gw.exit()
        execnet_rs.default_group.terminate(2)


def test_bad_python_and_bad_spec():
    g = execnet_rs.Group()
    with pytest.raises(OSError):
        g.makegateway("popen//python=/nonexistent/python3")
    with pytest.raises(ValueError):
        g.makegateway("nosuchtype")
    g.terminate(1)


def test_xspec():
    s = XSpec("popen//python=python3.11//id=w1//env:A=1//unknown=x")
    assert s.popen is True and s.python == "python3.11" and s.id == "w1"
    assert s.env == {"A": "1"} and s.unknown == "x" and s.ssh is None
    assert str(s) == "popen//python=python3.11//id=w1//env:A=1//unknown=x"
    assert hash(s) == hash(XSpec(str(s))) and s == XSpec(str(s))
    s.node = 1
    assert s.node == 1
    with pytest.raises(ValueError):
        XSpec("popen//popen")
    with pytest.raises(AttributeError):
        XSpec("_x=1")


def test_exit_then_terminate_is_quick_and_reaps(group):
    gw = group.makegateway(f"popen//python={sys.executable}")
    pid = gw._rinfo().pid
    gw.remote_exec("import time; time.sleep(60)")
    group.terminate(timeout=0.5)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_remote_import_execnet_is_the_workers_module(gw):
    """Contract M: remote code doing `import execnet` runs on our worker's
    compatibility module, whatever is installed remotely."""
    ch = gw.remote_exec(
        """
        import execnet
        channel.send((execnet.__engine__, execnet.loads(execnet.dumps((1, "a"))),
                      channel.gateway.execmodel.backend))
        """
    )
    assert ch.receive(10) == ("execnet-rs", (1, "a"), "thread")
