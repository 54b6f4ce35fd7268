"""Gateway: a running worker (popen, ssh, socket, via or thread)."""

from __future__ import annotations

import inspect
import linecache
import os
import textwrap
import threading
import types
import weakref
from typing import TYPE_CHECKING, Any, Callable

from . import _core
from .gateway_base import Channel
from .xspec import XSpec

if TYPE_CHECKING:
    from .multi import Group


class Gateway:
    """Gateway to a local or remote Python interpreter."""

    _group: Group

    def __init__(self, core, spec: XSpec, execmodel=None) -> None:
        """:private: made by ``Group.makegateway``."""
        self._gw = core
        self.spec = spec
        self.id = core.id
        self.execmodel = execmodel
        # The Channel objects alive (for repr's "N active channels").
        self._channels: weakref.WeakSet[Channel] = weakref.WeakSet()

    @property
    def remoteaddress(self) -> str:
        addr = self._gw.remoteaddress
        if addr is None:
            raise AttributeError("remoteaddress is only defined for ssh and socket gateways")
        return addr

    def __repr__(self) -> str:
        try:
            r = "receive-live" if self.hasreceiver() else "not-receiving"
        except OSError:
            r = "forked"
        backend = getattr(self.execmodel, "backend", "thread")
        try:
            n = sum(1 for ch in list(self._channels) if not ch.isclosed())
        except OSError:
            n = 0
        return f"<{self.__class__.__name__} id={self.id!r} {r}, {backend} model, {n} active channels>"

    def exit(self) -> None:
        """Start ending the worker (TERMINATE, then a kill after 5 s) and
        leave the group; ``group.terminate()`` waits for it to be over."""
        group = getattr(self, "_group", None)
        if group is not None:
            if self not in group._gateways:
                return
            group._unregister(self)
        try:
            self._gw.begin_exit()
        except OSError:
            pass

    def join(self, timeout: float | None = None) -> None:
        """Wait until the gateway's session is over."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._gw.is_terminated():
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def reconfigure(self, py2str_as_py3str: bool = True, py3str_as_py2str: bool = False) -> None:
        """No-op: Python 2 strings do not exist on this engine."""
        self._strconfig = (py2str_as_py3str, py3str_as_py2str)

    def _rinfo(self, update: bool = False) -> RInfo:
        """Some sys/env information from the remote (cached; ``update``
        asks again)."""
        if update or not hasattr(self, "_cache_rinfo"):
            if update:
                ch = self.remote_exec(rinfo_source)
                try:
                    self._cache_rinfo = RInfo(ch.receive())
                finally:
                    ch.waitclose()
            else:
                info = self._gw.info()
                self._cache_rinfo = RInfo(
                    dict(
                        executable=info["executable"],
                        version_info=info["version_info"],
                        platform=info["platform"],
                        cwd=info["cwd"],
                        pid=info["pid"],
                    )
                )
        return self._cache_rinfo

    def hasreceiver(self) -> bool:
        """Whether the gateway is able to receive data."""
        return not self._gw.is_terminated()

    def remote_status(self) -> RemoteStatus:
        """The remote's execution status (numchannels, numexecuting, execmodel)."""
        n, e, m = self._gw.remote_status()
        return RemoteStatus(dict(numchannels=n, numexecuting=e, execmodel=m))

    def newchannel(self) -> Channel:
        """A new channel, to pass to remote code inside a sent value."""
        return self._gw.newchannel(self)

    def remote_exec(
        self,
        source: str | types.FunctionType | Callable[..., object] | types.ModuleType,
        **kwargs: object,
    ) -> Channel:
        """Run ``source`` remotely with a ``channel`` in its globals and
        ``__name__ == "__channelexec__"``; return that channel.

        * a string: executed (dedented first);
        * a pure function: its source is sent and it is called as
          ``function(channel, **kwargs)``;
        * a module: its source is executed.
        """
        call_name = file_name = None
        if isinstance(source, types.ModuleType):
            file_name = inspect.getsourcefile(source)
            linecache.updatecache(file_name)  # type: ignore[arg-type]
            source = inspect.getsource(source)
        elif isinstance(source, types.FunctionType):
            call_name = source.__name__
            file_name = inspect.getsourcefile(source)
            source = _source_of_function(source)
        else:
            source = textwrap.dedent(str(source))

        if not call_name and kwargs:
            raise TypeError("can't pass kwargs to non-function remote_exec")
        if file_name:
            source = _compiled_as(source, file_name)
        if call_name:
            return self._gw.remote_exec_call(self, source, call_name, kwargs)
        return self._gw.remote_exec(self, source)

    def remote_init_threads(self, num: int | None = None) -> None:
        """DEPRECATED. A no-op, as in execnet."""


class RInfo:
    def __init__(self, kwargs) -> None:
        self.__dict__.update(kwargs)

    def __repr__(self) -> str:
        info = ", ".join(f"{k}={v}" for k, v in sorted(self.__dict__.items()))
        return "<RInfo %r>" % info

    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...


RemoteStatus = RInfo


def rinfo_source(channel) -> None:
    import os
    import sys

    channel.send(
        dict(
            executable=sys.executable,
            version_info=sys.version_info[:5],
            platform=sys.platform,
            cwd=os.getcwd(),
            pid=os.getpid(),
        )
    )


def _find_non_builtin_globals(source: str, codeobj: types.CodeType) -> list[str]:
    import ast
    import builtins

    vars = dict.fromkeys(codeobj.co_varnames)
    return [
        node.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Name) and node.id not in vars and node.id not in builtins.__dict__
    ]


def _compiled_as(source: str, file_name: str) -> str:
    """Source that runs ``source`` compiled under ``file_name``, so that
    remote tracebacks name the module's file and its lines, as execnet's do
    (execnet sends the file name along; the engine's exec request has only
    the source). Runs in the exec's own namespace (``channel``,
    ``__name__``); a function's frame is its file's, a module's traceback
    starts with one ``<remote exec>`` line, where execnet's starts with its
    own ``gateway_base`` frames."""
    return "exec(compile(%r, %r, 'exec', dont_inherit=True))\n" % (source + "\n", file_name)


def _source_of_function(function) -> str:
    if function.__name__ == "<lambda>":
        raise ValueError("can't evaluate lambda functions'")
    sig = inspect.getfullargspec(function)
    args = sig.args
    if not args or args[0] != "channel":
        raise ValueError("expected first function argument to be `channel`")

    closure = function.__closure__
    codeobj = function.__code__

    if closure is not None:
        raise ValueError("functions with closures can't be passed")

    try:
        source = inspect.getsource(function)
    except OSError as e:
        raise ValueError("can't find source file for %s" % function) from e

    source = textwrap.dedent(source)  # just for inner functions

    used_globals = _find_non_builtin_globals(source, codeobj)
    if used_globals:
        raise ValueError("the use of non-builtin globals isn't supported", used_globals)

    leading_ws = "\n" * (codeobj.co_firstlineno - 1)
    return leading_ws + source


# ---------------------------------------------------------------- thread mode

_worker_ns: dict | None = None
_worker_lock = threading.Lock()


def _thread_worker_namespace() -> dict:
    """The worker's definitions, executed once per process (contract T)."""
    global _worker_ns
    with _worker_lock:
        if _worker_ns is None:
            ns: dict = {"__name__": "execnet_thread_worker"}
            exec(compile(_core.WORKER_SOURCE, "<execnet worker>", "exec"), ns)
            _worker_ns = ns
        return _worker_ns


def _start_thread_worker(read_fd: int, write_fd: int) -> None:
    """Serves one thread gateway over these fds in a daemon thread; the
    worker closes them when the gateway ends."""
    try:
        serve = _thread_worker_namespace().get("serve_thread")
        if serve is None:
            raise RuntimeError("this worker has no serve_thread (thread gateways need it)")
        t = threading.Thread(
            target=serve, args=(read_fd, write_fd), name="execnet-thread-worker", daemon=True
        )
        t.start()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
