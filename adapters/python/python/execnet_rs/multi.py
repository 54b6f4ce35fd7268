"""Groups of gateways and operations on many channels."""

from __future__ import annotations

import atexit
import os
import queue
import shlex
import sys
import types
import weakref
from threading import Lock
from typing import Any, Callable, Iterable, Iterator, Sequence

from . import _core
from .gateway import Gateway
from .gateway_base import NO_ENDMARKER_WANTED, Channel, RemoteError, TimeoutError, get_execmodel
from .xspec import XSpec

_groups: "weakref.WeakSet[Group]" = weakref.WeakSet()


class Group:
    """Gateway Group: ids, creation, and termination of many gateways."""

    defaultspec = "popen"

    def __init__(self, xspecs: Iterable[XSpec | str | None] = (), execmodel: str = "thread") -> None:
        """Initialize a group and make gateways as specified."""
        self._gateways: list[Gateway] = []
        self._autoidcounter = 0
        self._autoidlock = Lock()
        self._gateways_to_join: list[Gateway] = []
        self._pid = os.getpid()
        self.set_execmodel(execmodel)
        for xspec in xspecs:
            self.makegateway(xspec)
        _groups.add(self)
        atexit.register(self._cleanup_atexit)

    @property
    def execmodel(self):
        return self._execmodel

    @property
    def remote_execmodel(self):
        return self._remote_execmodel

    def set_execmodel(self, execmodel: str, remote_execmodel: str | None = None) -> None:
        """Set the execution model for the local and the remote side (only
        before any gateway is created)."""
        if self._gateways:
            raise ValueError("can not set execution models if gateways have been created already")
        if remote_execmodel is None:
            remote_execmodel = execmodel
        self._execmodel = get_execmodel(execmodel)
        self._remote_execmodel = get_execmodel(remote_execmodel)

    def __repr__(self) -> str:
        idgateways = [gw.id for gw in self]
        return "<Group %r>" % idgateways

    def __getitem__(self, key: int | str | Gateway) -> Gateway:
        if isinstance(key, int):
            return self._gateways[key]
        for gw in self._gateways:
            if gw == key or gw.id == key:
                return gw
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        try:
            self[key]
            return True
        except KeyError:
            return False

    def __len__(self) -> int:
        return len(self._gateways)

    def __iter__(self) -> Iterator[Gateway]:
        return iter(list(self._gateways))

    def makegateway(self, spec: XSpec | str | None = None) -> Gateway:
        """Create and configure a gateway to a Python interpreter.

        ``spec`` is ``key1=value1//key2=value2//...``: a type (``popen``,
        ``ssh=host``, ``socket=host:port``, ``thread``) and options
        (``id=``, ``python=``, ``execmodel=``, ``chdir=``, ``nice=``,
        ``env:NAME=value``, ``via=``, ``installvia=``). No spec: the
        group's ``defaultspec``.
        """
        if not spec:
            spec = self.defaultspec
        if not isinstance(spec, XSpec):
            spec = XSpec(spec)
        self.allocate_id(spec)
        if spec.id in self:
            raise ValueError(f"already have gateway with id {spec.id!r}")
        if spec.execmodel is None:
            spec.execmodel = self.remote_execmodel.backend
        if spec.socket and spec.socket is not True and not spec.installvia:
            _check_socket_host(spec.socket)
        through = spec.via or spec.installvia
        via = self[through]._gw if through else None
        rendered = spec._render()
        if spec.popen and not spec.python and not spec.via:
            # execnet starts popen gateways with this interpreter.
            rendered += "//python=" + shlex.quote(sys.executable)
        core = _core.makegateway(rendered, via)
        gw = Gateway(core, spec, self.execmodel)
        self._register(gw)
        return gw

    def allocate_id(self, spec: XSpec) -> None:
        """(re-entrant) allocate id for the given xspec object."""
        if spec.id is None:
            with self._autoidlock:
                id = "gw" + str(self._autoidcounter)
                self._autoidcounter += 1
                if id in self:
                    raise ValueError(f"already have gateway with id {id!r}")
                spec.id = id

    def _register(self, gateway: Gateway) -> None:
        assert not hasattr(gateway, "_group")
        assert gateway.id
        assert gateway.id not in self
        self._gateways.append(gateway)
        gateway._group = self

    def _unregister(self, gateway: Gateway) -> None:
        self._gateways.remove(gateway)
        self._gateways_to_join.append(gateway)

    def _cleanup_atexit(self) -> None:
        self.terminate(timeout=1.0)

    def _forget(self) -> None:
        """In a forked child: the gateways are the parent's."""
        self._gateways = []
        self._gateways_to_join = []
        self._pid = os.getpid()

    def terminate(self, timeout: float | None = None) -> None:
        """End every member gateway: all at once, each killed after
        ``timeout`` seconds (None: 2 s) if it did not end by itself.
        Always returns."""
        if os.getpid() != self._pid:
            self._forget()
            return
        while self:
            for gw in self:
                if isinstance(gw, Gateway):
                    # Ended below with this call's timeout (exit() would
                    # kill after its own 5 s).
                    self._unregister(gw)
                else:
                    gw.exit()
        joins, self._gateways_to_join = self._gateways_to_join, []
        ours = [gw for gw in joins if isinstance(gw, Gateway)]
        for gw in joins:
            if not isinstance(gw, Gateway):
                gw.join()
        # All at once, on the engine: TERMINATE, wait, kill, reap.
        _core.terminate_all([gw._gw for gw in ours], timeout)

    def remote_exec(self, source, **kwargs) -> MultiChannel:
        """remote_exec ``source`` on every member gateway; one MultiChannel."""
        channels = []
        for gw in self:
            channels.append(gw.remote_exec(source, **kwargs))
        return MultiChannel(channels)


def _check_socket_host(address: str) -> None:
    """An unknown socket host is HostNotFound, as in execnet (the engine
    would first ask for the server's token)."""
    import socket

    from . import HostNotFound

    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        raise HostNotFound(f"host not found: {host}: {e}") from None


class MultiChannel:
    """Several channels used as one."""

    def __init__(self, channels: Sequence[Channel]) -> None:
        self._channels = channels

    def __len__(self) -> int:
        return len(self._channels)

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._channels)

    def __getitem__(self, key: int) -> Channel:
        return self._channels[key]

    def __contains__(self, chan: Channel) -> bool:
        return chan in self._channels

    def send_each(self, item: object) -> None:
        """Send ``item`` on every channel, in order (converted once)."""
        if all(isinstance(ch, Channel) for ch in self._channels):
            _core.send_each([ch._ch for ch in self._channels], item)
        else:
            for ch in self._channels:
                ch.send(item)

    def receive_each(self, withchannel: bool = False) -> list[Any]:
        """One item from each channel, in order."""
        result: list[Any] = []
        for ch in self._channels:
            obj = ch.receive()
            result.append((ch, obj) if withchannel else obj)
        return result

    def make_receive_queue(self, endmarker: object = NO_ENDMARKER_WANTED) -> ReceiveQueue:
        """A queue of ``(channel, item)`` fed by every channel (through
        callbacks); ``(channel, endmarker)`` once per channel at its end if
        an endmarker is given. Made once; later calls return it."""
        try:
            return self._queue
        except AttributeError:
            want = endmarker is not NO_ENDMARKER_WANTED
            core = _core.make_receive_queue(list(self._channels), want, endmarker if want else None)
            self._queue = ReceiveQueue(core)
            return self._queue

    def waitclose(self, timeout: float | None = None) -> None:
        """Wait until every channel is closed (one deadline for all); then
        raise the first remote error, if any."""
        if all(isinstance(ch, Channel) for ch in self._channels):
            _core.multi_waitclose([ch._ch for ch in self._channels], timeout)
            return
        first = None
        for ch in self._channels:
            try:
                ch.waitclose()
            except RemoteError as exc:
                if first is None:
                    first = exc
        if first:
            raise first


class ReceiveQueue:
    """The queue of ``MultiChannel.make_receive_queue`` (``queue.Queue``'s
    ``get`` interface)."""

    Empty = queue.Empty

    def __init__(self, core) -> None:
        self._q = core

    def get(self, block: bool = True, timeout: float | None = None):
        """The next ``(channel, item)``; queue.Empty after ``timeout``
        (or at once if not ``block``). Once every channel ended and every
        item was taken: queue.Empty as well when a timeout was given,
        EOFError when the call would wait for good (execnet hangs there)."""
        if not block:
            timeout = 0.0
        try:
            return self._q.get(timeout)
        except TimeoutError:
            raise queue.Empty from None
        except EOFError:
            if timeout is not None:
                raise queue.Empty from None
            raise

    def get_nowait(self):
        return self.get(block=False)

    def qsize(self) -> int:
        return self._q.qsize()

    def empty(self) -> bool:
        return self._q.qsize() == 0


def _after_fork_in_child() -> None:
    _core._after_fork_in_child()
    for g in list(_groups):
        g._forget()


atexit.register(_core._set_finalizing)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

default_group = Group()
makegateway = default_group.makegateway
set_execmodel = default_group.set_execmodel
