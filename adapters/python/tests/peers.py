"""Real peers for the transport tests: an OpenSSH server on 127.0.0.1 (as
tests/src/sshd.rs starts one) and bootstrap/socketserver.py. Each is
stopped by the pid it was started with."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
SSHD = "/usr/sbin/sshd"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


class Sshd:
    """sshd in the foreground (-D), root login with a generated key."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="exsshd-py-")
        os.chmod(self.dir, 0o755)
        d = self.dir
        for name in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/{name}"],
                check=True,
            )
        shutil.copy(f"{d}/client_key.pub", f"{d}/authorized_keys")
        os.chmod(f"{d}/authorized_keys", 0o644)
        os.makedirs("/run/sshd", exist_ok=True)
        self.proc = None
        for _ in range(5):
            self.port = free_port()
            with open(f"{d}/sshd_config", "w") as f:
                f.write(
                    f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {d}/host_key\n"
                    f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n"
                    "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "MaxSessions 64\nMaxStartups 64:30:128\nPrintMotd no\n"
                )
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-f", f"{d}/sshd_config", "-E", f"{d}/sshd.log"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if wait_port(self.port, self.proc):
                break
            self.stop_process()
        else:
            raise RuntimeError("sshd did not start: " + open(f"{d}/sshd.log").read())
        kind, key = open(f"{d}/host_key.pub").read().split()[:2]
        with open(f"{d}/known_hosts", "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {kind} {key}\n")
        with open(f"{d}/ssh_config", "w") as f:
            f.write(
                f"Host sshd-root\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
                f"  IdentityFile {d}/client_key\n  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking yes\n"
                "  BatchMode yes\n  KexAlgorithms curve25519-sha256\n  LogLevel ERROR\n"
            )
        self.ssh_config = f"{d}/ssh_config"

    def stop_process(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self):
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)


class SocketServer:
    """bootstrap/socketserver.py on a free loopback port with a token."""

    def __init__(self, python=sys.executable):
        self.dir = tempfile.mkdtemp(prefix="exsock-py-")
        self.token = os.urandom(16).hex()
        with open(f"{self.dir}/token", "w") as f:
            f.write(self.token)
        self.proc = subprocess.Popen(
            [python, os.path.join(REPO, "bootstrap", "socketserver.py"),
             "--bind", "127.0.0.1:0", "--token-file", f"{self.dir}/token"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"socket server did not start: {line!r}")
        self.address = line.split()[-1]

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
