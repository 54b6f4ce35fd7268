"""RSync as pytest-xdist's HostRSync uses it."""

import os

import pytest

import execnet_rs


class HostRSync(execnet_rs.RSync):
    """Like xdist's: filters by name, reports each file."""

    def __init__(self, sourcedir, ignores=(), verbose=True):
        self._ignores = list(ignores)
        self.reported = []
        super().__init__(sourcedir=sourcedir, verbose=verbose)

    def filter(self, path):
        return os.path.basename(path) not in self._ignores

    def _report_send_file(self, gateway, modified_rel_path):
        if self._verbose:
            self.reported.append((gateway.id, modified_rel_path))


def make_tree(root):
    os.makedirs(os.path.join(root, "pkg", "sub"))
    for rel, text in [("a.txt", "a"), ("pkg/b.py", "b"), ("pkg/sub/c.bin", "c" * 100000), ("skip.me", "x")]:
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)


def test_subclassed_rsync_to_two_gateways(group, tmp_path):
    import sys

    src = tmp_path / "src"
    make_tree(str(src))
    gws = [group.makegateway(f"popen//python={sys.executable}") for _ in range(2)]
    rs = HostRSync(src, ignores=["skip.me"])
    assert rs._sourcedir == str(src)
    finished = []
    for i, gw in enumerate(gws):
        rs.add_target(gw, str(tmp_path / f"dst{i}"), finishedcallback=lambda i=i: finished.append(i), delete=True)
    rs.send()
    assert sorted(finished) == [0, 1]
    for i in range(2):
        d = tmp_path / f"dst{i}"
        assert (d / "a.txt").read_text() == "a"
        assert (d / "pkg" / "sub" / "c.bin").read_text() == "c" * 100000
        assert not (d / "skip.me").exists()
    assert {p for _, p in rs.reported} >= {"a.txt", "pkg/b.py", "pkg/sub/c.bin"}
    with pytest.raises(OSError):
        rs.send()
    rs.send(raises=False)


def test_delete_removes_extra_files(gw, tmp_path):
    src = tmp_path / "src"
    make_tree(str(src))
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "extra").write_text("gone soon")
    rs = execnet_rs.RSync(src, verbose=False)
    rs.add_target(gw, str(dst), delete=True)
    rs.send()
    assert not (dst / "extra").exists() and (dst / "skip.me").exists()
