"""Drives Python's execnet for the side-by-side benchmark (tests/src/bin/bench.rs).

Runs in a venv with execnet==2.1.2. Reads one JSON command per line on stdin
and answers one JSON line on stdout: {"value": <float>} or {"error": "..."}.
Every remote snippet comes from the Rust side, so both implementations run
the same remote code. Times are seconds, as measured here.
"""
import json
import resource
import subprocess
import sys
import threading
import time

import execnet

PY = sys.argv[1]
SPEC = "popen//python=" + PY


def _start():
    t = time.perf_counter()
    gw = execnet.makegateway(SPEC)
    gw.remote_exec("channel.send(1)").receive()
    dt = time.perf_counter() - t
    gw.exit()
    return dt


class Bench(object):
    def __init__(self):
        self.gw = None

    def gateway(self):
        if self.gw is None:
            self.gw = execnet.makegateway(SPEC)
        return self.gw

    def op_start(self, c):
        return _start()

    def op_start_many(self, c):
        n = c["n"]
        gws = [None] * n
        errors = []

        def one(i):
            try:
                g = execnet.Group()
                gw = g.makegateway(SPEC)
                gw.remote_exec("channel.send(1)").receive()
                gws[i] = g
            except Exception as e:  # reported below
                errors.append(repr(e))

        t = time.perf_counter()
        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        dt = time.perf_counter() - t
        for g in gws:
            if g is not None:
                g.terminate(5)
        if errors:
            raise RuntimeError(errors[0])
        return dt

    def op_pingpong(self, c):
        ch = self.gateway().remote_exec(c["src"])
        for i in range(c["warmup"]):
            ch.send(i)
            ch.receive()
        n = c["n"]
        t = time.perf_counter()
        for i in range(n):
            ch.send(i)
            ch.receive()
        dt = time.perf_counter() - t
        ch.close()
        ch.waitclose()
        return dt / n

    def _item(self, kind, i):
        return i if kind == "int" else (i, "ab")

    def op_items_up(self, c):
        n, kind = c["n"], c["kind"]
        gw = self.gateway()
        t = time.perf_counter()
        ch = gw.remote_exec(c["src"])
        send = ch.send
        if kind == "int":
            for i in range(n):
                send(i)
        else:
            for i in range(n):
                send((i, "ab"))
        send(None)
        got = ch.receive()
        dt = time.perf_counter() - t
        assert got == n, got
        ch.waitclose()
        return n / dt

    def op_items_down(self, c):
        n = c["n"]
        gw = self.gateway()
        t = time.perf_counter()
        ch = gw.remote_exec(c["src"])
        ch.send((n, c["kind"]))
        k = 0
        receive = ch.receive
        while True:
            x = receive()
            if x is None:
                break
            k += 1
        dt = time.perf_counter() - t
        assert k == n, k
        ch.waitclose()
        return n / dt

    def op_bulk_up(self, c):
        n = c["n"]
        data = b"x" * (1 << 20)
        gw = self.gateway()
        t = time.perf_counter()
        ch = gw.remote_exec(c["src"])
        for _ in range(n):
            ch.send(data)
        ch.send(None)
        got = ch.receive()
        dt = time.perf_counter() - t
        assert got == n << 20, got
        ch.waitclose()
        return n / dt

    def op_bulk_down(self, c):
        n = c["n"]
        gw = self.gateway()
        t = time.perf_counter()
        ch = gw.remote_exec(c["src"])
        ch.send(n)
        total = 0
        while True:
            x = ch.receive()
            if x is None:
                break
            total += len(x)
        dt = time.perf_counter() - t
        assert total == n << 20, total
        ch.waitclose()
        return n / dt

    def op_channels(self, c):
        n = c["n"]
        gw = self.gateway()
        t = time.perf_counter()
        chans = [gw.remote_exec(c["src"]) for _ in range(n)]
        for i, ch in enumerate(chans):
            ch.send(i)
        for i, ch in enumerate(chans):
            assert ch.receive() == i
        dt = time.perf_counter() - t
        for ch in chans:
            ch.waitclose()
        return dt

    def op_execs(self, c):
        # on a fresh gateway, as ours (tests/src/bin/bench.rs: ours_execs)
        n = c["n"]
        gw = execnet.makegateway(SPEC)
        t = time.perf_counter()
        chans = [gw.remote_exec(c["src"]) for _ in range(n)]
        for ch in chans:
            assert ch.receive() == 1
        dt = time.perf_counter() - t
        for ch in chans:
            ch.waitclose()
        gw.exit()
        return dt

    def op_rss_bulk(self, c):
        # A fresh host process, so that its peak RSS is the bulk transfer's.
        script = (
            "import execnet, resource, sys\n"
            "gw = execnet.makegateway(%r)\n"
            "n = %d\n"
            "data = b'x' * (1 << 20)\n"
            "ch = gw.remote_exec(%r)\n"
            "for _ in range(n):\n"
            "    ch.send(data)\n"
            "ch.send(None)\n"
            "assert ch.receive() == n << 20\n"
            "ch = gw.remote_exec(%r)\n"
            "ch.send(n)\n"
            "while ch.receive() is not None:\n"
            "    pass\n"
            "gw.exit()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        ) % (SPEC, c["n"], c["src_up"], c["src_down"])
        out = subprocess.check_output([sys.executable, "-c", script])
        return int(out.split()[-1]) * 1024.0

    def op_rsync(self, c):
        gw = self.gateway()
        rs = execnet.RSync(c["src"], verbose=False)
        rs.add_target(gw, c["dst"])
        t = time.perf_counter()
        rs.send()
        return time.perf_counter() - t

    def op_maxrss(self, c):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0

    def op_exit(self, c):
        if self.gw is not None:
            self.gw.exit()
            self.gw = None
        return 0.0


def main():
    b = Bench()
    for line in sys.stdin:
        c = json.loads(line)
        try:
            out = {"value": getattr(b, "op_" + c["op"])(c)}
        except Exception as e:
            out = {"error": "%s: %s" % (type(e).__name__, e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        if c["op"] == "exit":
            break


if __name__ == "__main__":
    main()
