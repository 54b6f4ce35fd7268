"""pytest plugin that runs an unmodified pytest-xdist on the execnet-rs engine.

Load it before xdist's own plugins, with any of::

    pytest -p execnet_rs.xdist -n 4
    PYTEST_ADDOPTS="-p execnet_rs.xdist" pytest -n 4
    # pytest.ini / tox.ini [pytest] / pyproject [tool.pytest.ini_options]:
    addopts = -p execnet_rs.xdist
    # conftest.py at the rootdir (only when the real execnet is installed, see docs/xdist.md):
    pytest_plugins = ["execnet_rs.xdist"]

pytest imports ``-p`` plugins before the entry-point plugins (xdist's
``xdist.plugin`` and ``xdist.looponfail``), so when this module is imported it
can register ``execnet_rs`` under the name ``execnet`` in ``sys.modules``:
every ``import execnet`` that xdist (or anything else in this pytest process)
does afterwards gets our package, even when the real ``execnet`` distribution
is not installed. Nothing of xdist is copied or patched on disk.

On the remote side, xdist's ``remote.py`` runs in our worker, whose
compatibility module answers its ``import execnet`` (contract M). When pytest
starts inside one of our workers (this plugin is then loaded again from the
forwarded command line), the full ``execnet_rs`` package takes over the name
``execnet`` for the tests, so a test that makes gateways itself gets a complete
API, as it would on the real execnet.

Only Linux is served: on other platforms this module does nothing and xdist
stays on the real execnet.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from typing import Any

import pytest

#: Whether this platform runs xdist on our engine (settled: Linux only).
ACTIVE = sys.platform.startswith("linux")

#: Set to "0" to load the plugin but leave xdist on the real execnet (for comparisons).
ENV_DISABLE = "EXECNET_RS_XDIST"

# execnet's submodules; those our package also has are registered under
# ``execnet.<name>`` too, so ``import execnet.gateway_base`` resolves to ours.
_SUBMODULES = (
    "gateway_base",
    "gateway",
    "gateway_io",
    "gateway_bootstrap",
    "gateway_socket",
    "multi",
    "rsync",
    "rsync_remote",
    "xspec",
)

# Modules that bind ``execnet`` when they are imported: once one of them holds
# the real execnet, registering ours is too late for it.
_XDIST_HOST_MODULES = ("xdist.workermanage", "xdist.dsession")

#: Why this plugin left xdist on the real execnet (None: xdist runs on ours).
skipped_reason: str | None = None


def _is_our_worker_compat(mod: Any) -> bool:
    """The worker's compatibility module (contract M), not the package itself."""
    return getattr(mod, "__engine__", None) == "execnet-rs" and not hasattr(mod, "Group")


def _install() -> str | None:
    """Registers ``execnet_rs`` as ``execnet``; returns why not, or None."""
    if not ACTIVE:
        return "execnet-rs serves pytest-xdist on Linux only (platform %s)" % sys.platform
    if os.environ.get(ENV_DISABLE, "1") == "0":
        return "%s=0 in the environment" % ENV_DISABLE
    import execnet_rs

    current = sys.modules.get("execnet")
    if current is execnet_rs:
        return None
    for name in _XDIST_HOST_MODULES:
        mod = sys.modules.get(name)
        bound = getattr(mod, "execnet", None) if mod is not None else None
        if bound is not None and bound is not execnet_rs:
            # Too late: xdist already holds another execnet (classes such as
            # HostRSync were made from it). Say so rather than mixing engines.
            return (
                "%s was imported before execnet_rs.xdist; load the plugin with "
                "-p execnet_rs.xdist (see docs/xdist.md)" % name
            )
    sys.modules["execnet"] = execnet_rs
    for sub in _SUBMODULES:
        mod = getattr(execnet_rs, sub, None)
        key = "execnet." + sub
        if isinstance(mod, types.ModuleType):
            sys.modules[key] = mod
        elif key in sys.modules and current is not None and not _is_our_worker_compat(current):
            # a submodule of the real execnet must not pair with our package
            del sys.modules[key]
    return None


skipped_reason = _install()


def _nodemanager(config: Any) -> Any:
    dsession = config.pluginmanager.getplugin("dsession")
    return getattr(dsession, "nodemanager", None) if dsession is not None else None


def pytest_report_header(config: Any) -> list[str] | None:
    """With -v: one header line naming the engine xdist runs on (controller, with -n/-d)."""
    if getattr(config, "workerinput", None) is not None:
        return None
    if config.pluginmanager.getplugin("dsession") is None or config.option.verbose <= 0:
        return None
    if skipped_reason is None:
        import execnet_rs

        return ["xdist engine: execnet-rs %s" % getattr(execnet_rs, "__version__", "?")]
    return ["xdist engine: execnet (execnet-rs not used: %s)" % skipped_reason]


class WorkerLost(Exception):
    """How a worker ended without closing its channel (exit status, stderr tail).

    Not an ``EOFError``: xdist prints only other errors as they are.
    """


def _explaining(getremoteerror: Any) -> Any:
    def _getremoteerror() -> Any:
        err = getremoteerror()
        if isinstance(err, EOFError) and str(err):
            return WorkerLost(_short(str(err)))
        return err

    return _getremoteerror


#: How many of the last stderr lines the "node down" line repeats (the whole
#: stderr has already been passed through to the terminal).
TAIL_LINES = 5


def _short(text: str) -> str:
    head, sep, tail = text.partition("; stderr:")
    lines = [line for line in tail.splitlines() if line.strip()]
    if not sep or not lines:
        return head
    return "%s; last lines of its stderr:\n    %s" % (head, "\n    ".join(lines[-TAIL_LINES:]))


def _execnet_rs() -> Any:
    import execnet_rs

    return execnet_rs


#: How many workers start at once: below OpenSSH's default MaxStartups (10),
#: which drops further unauthenticated connections; more would not start
#: local interpreters faster on a few cores either.
PARALLEL_STARTS = 8

#: Seconds a worker gets to stop after Ctrl-C before it is killed.
INTERRUPT_GRACE = 1.0


class _Controller:
    """Per-config hooks (pytester may run several pytest sessions in one process)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def pytest_xdist_setupnodes(self, config: Any, specs: Any) -> None:
        """Workers write to their own stderr, which the controller passes through.

        Our default (``stdout=forward``) sends a worker's output over the
        protocol, from a thread of the worker: what a test writes just before
        the worker dies (a segfault's faulthandler traceback, a last line on
        fd 2) would die with it. With ``stdout=inherit`` fd 1 and 2 are the
        worker's stderr pipe, read by the controller to its end: the text
        reaches the terminal and the stderr tail that xdist's "node down"
        line then shows. popen and ssh workers only (a socket server's
        stderr is not ours; a via relay forwards anyway).
        """
        for spec in specs:
            if getattr(spec, "stdout", None) is None and getattr(spec, "via", None) is None:
                if getattr(spec, "popen", None) or getattr(spec, "ssh", None):
                    spec.stdout = "inherit"
        self._start_in_parallel(specs)

    def _start_in_parallel(self, specs: Any) -> None:
        """Starts every worker's interpreter at once instead of one after another.

        xdist's ``setup_nodes`` calls ``group.makegateway(spec)`` for one spec
        after the other, each waiting for its interpreter to start (an ssh
        login: ~0.2-0.3 s each). Here they start together on threads
        (the engine's start releases the GIL); xdist's own calls, in its
        order, then receive the started gateways (at most ``PARALLEL_STARTS``
        start at a time) (an instance attribute on
        our Group; a failed start raises there, where it would have). Specs
        xdist makes later (a replaced crashed worker) start as usual.
        """
        nm = _nodemanager(self.config)
        group = getattr(nm, "group", None)
        if group is None or not isinstance(group, _execnet_rs().Group) or len(specs) < 2:
            return
        if any(getattr(spec, "id", None) is None for spec in specs):
            return
        unbound = type(group).makegateway
        started: dict = {}
        lock = threading.Lock()

        def start(spec: Any) -> None:
            try:
                result: tuple = (True, unbound(group, spec))
            except BaseException as e:  # noqa: BLE001 - handed to xdist's call below
                result = (False, e)
            with lock:
                started[spec.id] = result

        todo = list(specs)

        def starter() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    spec = todo.pop(0)
                start(spec)

        threads = [threading.Thread(target=starter, daemon=True, name="execnet_rs.xdist start %d" % i)
                   for i in range(min(PARALLEL_STARTS, len(specs)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def makegateway(spec: Any = None) -> Any:
            key = getattr(spec, "id", None)
            with lock:
                result = started.pop(key, None) if key is not None else None
            if result is None:
                return unbound(group, spec)
            ok, value = result
            if not ok:
                raise value
            return value

        group.makegateway = makegateway

    def pytest_xdist_newgateway(self, gateway: Any) -> None:
        """Channels of this gateway tell xdist why the worker died.

        xdist asks ``channel._getremoteerror()`` when a worker's channel ends;
        for anything falsy or an ``EOFError`` it prints "node down: Not
        properly terminated". Our engine knows how the worker ended (exit
        status or signal, the tail of its stderr) and says it in the
        ``EOFError``; xdist prints it when it is not an ``EOFError``.
        """
        if not isinstance(gateway, _execnet_rs().Gateway):
            return
        unbound = type(gateway).remote_exec

        def remote_exec(source: Any, **kwargs: Any) -> Any:
            channel = unbound(gateway, source, **kwargs)
            channel._getremoteerror = _explaining(channel._getremoteerror)
            return channel

        # an instance attribute on our own Gateway object (xdist's tests do the same)
        gateway.remote_exec = remote_exec

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        """Ctrl-C on the controller: stop the workers now, not after xdist's 10 s.

        Our workers run in their own process groups, so the terminal's SIGINT
        reaches only the controller. xdist then tears its nodes down with a
        10 s grace; we end them first with a short one (each worker interrupts
        the test it runs, as Ctrl-C would, and is killed if it has not exited
        by then).
        """
        nm = _nodemanager(self.config)
        group = getattr(nm, "group", None) if nm is not None else None
        if group is None:
            return
        try:
            group.terminate(timeout=INTERRUPT_GRACE)
        except BaseException:  # noqa: BLE001 - a second Ctrl-C or a dead gateway must not mask the first
            pass


def _in_worker(config: Any) -> bool:
    return getattr(config, "workerinput", None) is not None


_worker_stdout: Any = None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: Any) -> None:
    """Controller: register the per-config hooks. Worker: see below.

    On a worker, xdist's ``remote.py`` runs a whole pytest session whose
    terminal reporter writes to ``sys.stdout``. execnet points a worker's
    fd 1 at /dev/null, which hides that reporter and also every ``print`` of
    the tests under ``-s``. Our worker's fd 1 reaches the controller's
    terminal (its stderr), so the reporter, made by pytest's own
    ``pytest_configure`` after this one, gets /dev/null as its ``sys.stdout``;
    ``pytest_sessionstart`` gives the tests the real one back.
    """
    global _worker_stdout
    if skipped_reason is not None:
        return
    if not _in_worker(config):
        config.pluginmanager.register(_Controller(config), "execnet_rs.xdist.controller")
        return
    _worker_stdout = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the reporter


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: Any) -> None:
    global _worker_stdout
    if _worker_stdout is not None:
        sys.stdout = _worker_stdout
        _worker_stdout = None
