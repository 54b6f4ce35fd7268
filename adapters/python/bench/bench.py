#!/usr/bin/env python3
"""Python-host benchmark: execnet_rs vs execnet 2.1.2, measured in one run.

    python adapters/python/bench/bench.py [--quick] [--repeats N] [--python /usr/bin/python3]

Run it with an interpreter that has execnet_rs installed. execnet 2.1.2 is
installed into a throwaway venv (/tmp/execnet-rs-bench-execnet, made on the
first run) and measured there, in a subprocess, right after ours. Every row
uses popen gateways on the same worker interpreter (--python) and the host's
main thread. Prints one table; lower is better for times, higher for rates.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

EXECNET_VENV = "/tmp/execnet-rs-bench-execnet"


def measure(modname, python, quick):
    """All rows for one implementation (runs in that implementation's env)."""
    mod = __import__(modname)
    spec = f"popen//python={python}"
    rows = {}
    n_start = 5 if quick else 15
    starts = []
    for _ in range(n_start):
        t = time.perf_counter()
        gw = mod.makegateway(spec)
        ch = gw.remote_exec("channel.send(channel.receive())")
        ch.send(1)
        ch.receive()
        starts.append(time.perf_counter() - t)
        gw.exit()
    mod.default_group.terminate(5)
    rows["start -> first round trip (ms)"] = statistics.median(starts) * 1e3

    gw = mod.makegateway(spec)
    # Warm up (and use a later gateway too, see ENVIRONMENT.md).
    ch = gw.remote_exec("for x in channel: channel.send(x)")
    n = 500 if quick else 3000
    for i in range(200):
        ch.send(i)
        ch.receive()
    t = time.perf_counter()
    for i in range(n):
        ch.send(i)
        ch.receive()
    rows["ping-pong (us per round trip)"] = (time.perf_counter() - t) / n * 1e6
    ch.close()

    n = 20000 if quick else 200000
    ch = gw.remote_exec(
        """
        n = 0
        for x in channel:
            n += 1
        """
    )
    t = time.perf_counter()
    for i in range(n):
        ch.send(i)
    ch.close()
    ch.waitclose()
    rows["small items host->worker (k items/s)"] = n / (time.perf_counter() - t) / 1e3

    ch = gw.remote_exec(
        """
        n = channel.receive()
        for i in range(n):
            channel.send(i)
        """
    )
    t = time.perf_counter()
    ch.send(n)
    for _ in range(n):
        ch.receive()
    rows["small items worker->host (k items/s)"] = n / (time.perf_counter() - t) / 1e3

    size, count = 1 << 20, (64 if quick else 256)
    blob = b"x" * size
    ch = gw.remote_exec(
        """
        total = 0
        for x in channel:
            total += len(x)
        """
    )
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    for _ in range(count):
        ch.send(blob)
    ch.close()
    ch.waitclose()
    rows["bulk host->worker (MiB/s)"] = size * count / (time.perf_counter() - t) / (1 << 20)
    # The host's own page faults while sending: fresh pages per item (one
    # ~490 per MiB) are what held this row at ~1,000 MiB/s.
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    rows["host page faults per MiB sent"] = faults / (size * count / (1 << 20))

    ch = gw.remote_exec(
        """
        size, count = channel.receive()
        blob = b"x" * size
        for i in range(count):
            channel.send(blob)
        """
    )
    t = time.perf_counter()
    ch.send((size, count))
    for _ in range(count):
        ch.receive()
    rows["bulk worker->host (MiB/s)"] = size * count / (time.perf_counter() - t) / (1 << 20)

    n = 1000
    t = time.perf_counter()
    chans = [gw.remote_exec("channel.send(1)") for _ in range(n)]
    for c in chans:
        c.receive()
    rows["1,000 channels (ms)"] = (time.perf_counter() - t) * 1e3
    gw.exit()
    mod.default_group.terminate(5)
    return rows


def ensure_execnet_venv():
    py = os.path.join(EXECNET_VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", EXECNET_VENV], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "execnet==2.1.2"], check=True)
    return py


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    ap.add_argument("--python", default="/usr/bin/python3", help="the worker interpreter")
    ap.add_argument("--repeats", type=int, default=None, help="alternating runs per side (default 5, quick 1)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    if args.child:
        print(json.dumps(measure(args.child, args.python, args.quick)))
        return
    base = [__file__, "--python", args.python] + (["--quick"] if args.quick else [])
    theirs_py = ensure_execnet_venv()
    runs = {"ours": [], "theirs": []}
    # Our compiled-worker cache in a directory of this run's own, not the
    # user's ~/.cache/execnet-rs (the first run fills it, as a first use would).
    cache = tempfile.mkdtemp(prefix="execnet-rs-bench-cache-")
    env = dict(os.environ, EXECNET_CACHE_DIR=cache)
    # Alternating runs (ours, theirs, ours, ...); each row is the median of
    # its runs: the machine's load swings within seconds.
    try:
        for _ in range(args.repeats):
            for key, py, mod in (("ours", sys.executable, "execnet_rs"), ("theirs", theirs_py, "execnet")):
                out = subprocess.run([py] + base + ["--child", mod], check=True,
                                     capture_output=True, text=True, env=env).stdout
                runs[key].append(json.loads(out))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    ours = {row: statistics.median(r[row] for r in runs["ours"]) for row in runs["ours"][0]}
    theirs = {row: statistics.median(r[row] for r in runs["theirs"]) for row in runs["theirs"][0]}
    targets = {
        "start -> first round trip (ms)": ("<=", 0.6),
        "ping-pong (us per round trip)": ("<=", 0.5),
        "small items host->worker (k items/s)": (">=", 2.0),
        "small items worker->host (k items/s)": (">=", 2.0),
        "bulk host->worker (MiB/s)": (">=", 3.0),
        "bulk worker->host (MiB/s)": (">=", 3.0),
        "1,000 channels (ms)": ("<=", 1 / 3),
        "host page faults per MiB sent": (None, None),
    }
    print(f"Python host {sys.version.split()[0]}, worker {args.python}, median of {args.repeats} alternating run(s)"
          + (" (quick)" if args.quick else ""))
    print(f"| row | execnet_rs | execnet 2.1.2 | ratio | target | met |")
    print("|---|---:|---:|---:|---:|:-:|")
    for row, (op, goal) in targets.items():
        a, b = ours[row], theirs[row]
        ratio = a / b if b else float("inf")
        if op is None:  # reported, no target
            print(f"| {row} | {a:.1f} | {b:.1f} | {ratio:.2f}x | - | - |")
            continue
        met = ratio <= goal if op == "<=" else ratio >= goal
        goal_text = f"{op} {goal:.2f}x"
        print(f"| {row} | {a:.1f} | {b:.1f} | {ratio:.2f}x | {goal_text} | {'yes' if met else 'no'} |")


if __name__ == "__main__":
    main()
