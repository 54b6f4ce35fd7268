#!/usr/bin/env python3
"""End-to-end benchmark: pytest-xdist on execnet-rs vs on execnet 2.1.2, in one run.

Rows (each run REPEAT times per engine, engines alternating, median reported):

- ``trivial3000 -n2`` / ``-n8``: 3,000 tests that pass at once (30 files x 100);
- ``sleep200 -n8``: 200 tests that each sleep 20 ms;
- ``startup -n8`` / ``-n32``: one test per worker; besides the wall time the
  time from ``pytest_xdist_setupnodes`` to the last ``pytest_testnodeready``
  (every worker started, pytest configured on it and its collection done).

Per run: the wall time of the whole ``pytest`` command and the peak RSS
(VmHWM) of the controller process, read by the controller itself at exit.

Usage::

    tests/xdist/bench_xdist.py --ours VENV_PY --execnet VENV_PY [--repeat 3] [--only ROW]

``--ours``: a venv python with pytest 8.4.2, pytest-xdist 3.8.0 and execnet_rs
(the real execnet uninstalled); ``--execnet``: one with pytest 8.4.2,
pytest-xdist 3.8.0 and execnet 2.1.2. ``tests/xdist/bench_xdist.sh`` makes both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# A conftest that the controller uses to report its own figures.
CONFTEST = r'''
import json, os, time

_t = {}


def _vmhwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def pytest_xdist_setupnodes(config, specs):
    _t["setup"] = time.perf_counter()


def pytest_testnodeready(node):
    _t["ready"] = time.perf_counter()


def pytest_unconfigure(config):
    out = os.environ.get("BENCH_XDIST_OUT")
    if out and not hasattr(config, "workerinput"):
        res = {"vmhwm_kib": _vmhwm_kib()}
        if "setup" in _t and "ready" in _t:
            res["ready_s"] = _t["ready"] - _t["setup"]
        try:
            import execnet
            res["engine"] = execnet.__name__
        except Exception as e:
            res["engine"] = repr(e)
        with open(out, "w") as f:
            json.dump(res, f)
'''


def make_project(root: str, files: int, per_file: int, body: str) -> str:
    os.makedirs(root)
    with open(os.path.join(root, "conftest.py"), "w") as f:
        f.write(CONFTEST)
    with open(os.path.join(root, "pytest.ini"), "w") as f:
        f.write("[pytest]\n")
    for i in range(files):
        with open(os.path.join(root, "test_m%03d.py" % i), "w") as f:
            f.write("import time\n\n")
            for j in range(per_file):
                f.write("def test_%d():\n    %s\n\n" % (j, body))
    return root


ROWS = {
    # name: (project, -n)
    "trivial3000 -n2": ("trivial", 2),
    "trivial3000 -n8": ("trivial", 8),
    "sleep200 -n8": ("sleep", 8),
    "startup -n8": ("one8", 8),
    "startup -n32": ("one32", 32),
}


def run_once(py: str, ours: bool, project: str, n: int, outfile: str) -> dict:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env["BENCH_XDIST_OUT"] = outfile
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(n)]
    if ours:
        cmd[3:3] = ["-p", "execnet_rs.xdist"]
    if os.path.exists(outfile):
        os.unlink(outfile)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    wall = time.perf_counter() - t0
    last = p.stdout.decode(errors="replace").strip().splitlines()[-1:] or [""]
    if p.returncode != 0 or " passed" not in last[0]:
        raise SystemExit("run failed (%s, -n %d, ours=%s):\n%s" % (project, n, ours, p.stdout.decode(errors="replace")[-3000:]))
    with open(outfile) as f:
        res = json.load(f)
    res["wall_s"] = wall
    res["summary"] = last[0]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours", required=True, help="venv python with execnet_rs (no execnet)")
    ap.add_argument("--execnet", required=True, help="venv python with execnet 2.1.2")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", action="append", help="row name (repeatable)")
    ap.add_argument("--json", help="write all samples here")
    a = ap.parse_args()
    # absolute (the runs change directory), not resolved (a venv's python is a symlink)
    a.ours, a.execnet = os.path.abspath(a.ours), os.path.abspath(a.execnet)
    rows = a.only or list(ROWS)
    tmp = tempfile.mkdtemp(prefix="bench-xdist-")
    try:
        projects = {
            "trivial": make_project(os.path.join(tmp, "trivial"), 30, 100, "pass"),
            "sleep": make_project(os.path.join(tmp, "sleep"), 10, 20, "time.sleep(0.02)"),
            "one8": make_project(os.path.join(tmp, "one8"), 1, 8, "pass"),
            "one32": make_project(os.path.join(tmp, "one32"), 1, 32, "pass"),
        }
        out = os.path.join(tmp, "res.json")
        samples: dict = {}
        engines = [("execnet-rs", a.ours, True), ("execnet 2.1.2", a.execnet, False)]
        for row in rows:
            proj, n = ROWS[row]
            # one untimed warm-up per engine (page cache, .pyc of site-packages)
            for _, py, ours in engines:
                run_once(py, ours, projects[proj], n, out)
            for _ in range(a.repeat):
                for name, py, ours in engines:
                    r = run_once(py, ours, projects[proj], n, out)
                    samples.setdefault(row, {}).setdefault(name, []).append(r)
            ours_r = samples[row]["execnet-rs"]
            base_r = samples[row]["execnet 2.1.2"]
            if {r.get("engine") for r in base_r} != {"execnet"}:
                raise SystemExit("the execnet runs did not run on execnet")
            engine_seen = {r.get("engine") for r in ours_r}
            if engine_seen != {"execnet_rs"}:
                raise SystemExit("the execnet-rs runs did not run on execnet-rs: %r" % engine_seen)

            def med(rs, key):
                vals = [r[key] for r in rs if key in r]
                return statistics.median(vals) if vals else float("nan")

            line = "%-16s wall %6.2f s vs %6.2f s (%.2fx)  controller peak RSS %5.1f vs %5.1f MiB" % (
                row, med(ours_r, "wall_s"), med(base_r, "wall_s"),
                med(base_r, "wall_s") / med(ours_r, "wall_s"),
                med(ours_r, "vmhwm_kib") / 1024, med(base_r, "vmhwm_kib") / 1024)
            if row.startswith("startup"):
                line += "  all ready %.3f vs %.3f s" % (med(ours_r, "ready_s"), med(base_r, "ready_s"))
            print(line, flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(samples, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
