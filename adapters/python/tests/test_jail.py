"""popen//jail (bubblewrap) and the resource limits from Python
(docs/jails.md); the Rust suite tests/tests/jail.rs covers the rest."""

import os
import shutil

import pytest

REQUIRE_ALL = os.environ.get("EXECNET_REQUIRE_ALL") == "1"


@pytest.fixture
def bwrap():
    absent = "bwrap" in os.environ.get("EXECNET_TEST_ABSENT", "").split(",")
    if absent or shutil.which("bwrap") is None:
        if REQUIRE_ALL:
            pytest.fail("bwrap missing (apt-get install bubblewrap)")
        pytest.skip("SKIPPED: bwrap missing (apt-get install bubblewrap)")


def test_jailed_worker_is_walled_in(group, bwrap, tmp_path):
    # A jail_rw= path must be writable by the jail's user (uid 65534 on
    # the host when this runs as root).
    tmp_path.chmod(0o777)
    gw = group.makegateway(f"popen//jail//jail_rw={tmp_path}//env:JAILED=1")
    ch = gw.remote_exec(
        """
import os
def attempt(path):
    try:
        open(path, "w").close()
        return "ok"
    except OSError as e:
        return e.errno
channel.send((os.getuid(), os.environ.get("JAILED"), os.environ.get("HOME"),
              attempt("/usr/execnet-jail-py"), attempt(channel.receive())))
"""
    )
    ch.send(str(tmp_path / "written"))
    uid, jailed, home, usr, rw = ch.receive(30)
    assert uid != 0
    assert (jailed, home) == ("1", "/tmp")
    assert usr == 30  # EROFS
    assert rw == "ok"
    assert (tmp_path / "written").exists()


def test_cpu_limit_names_itself(group):
    gw = group.makegateway("popen//max_cpu=1")
    ch = gw.remote_exec("while True:\n    pass\n")
    with pytest.raises(EOFError, match="max_cpu=1"):
        ch.receive(30)


def test_memory_limit_names_itself_or_says_why_not(group):
    try:
        gw = group.makegateway("popen//max_memory=128M")
    except PermissionError as e:
        # No writable cgroup here: the error says what was tried.
        assert "max_memory=128M" in str(e) and "tried" in str(e)
        pytest.skip(f"SKIPPED: no writable cgroup: {e}")
    ch = gw.remote_exec("x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n")
    with pytest.raises(EOFError, match="max_memory=128M"):
        ch.receive(30)


def test_xspec_has_the_jail_keys():
    from execnet_rs import XSpec

    x = XSpec("popen//jail//jail_rw=/a,/b//jail_net//max_memory=256M//max_cpu=2//max_procs=8")
    assert (x.jail, x.jail_net, x.jail_rw) == (True, True, "/a,/b")
    assert (x.max_memory, x.max_cpu, x.max_procs) == ("256M", "2", "8")
    assert XSpec("popen").jail is None


def test_jail_keys_are_checked(group):
    with pytest.raises(ValueError, match="needs `jail`"):
        group.makegateway("popen//jail_rw=/tmp")
    with pytest.raises(ValueError, match="max_memory"):
        group.makegateway("popen//max_memory=lots")
