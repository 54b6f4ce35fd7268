"""Exceptions, channels and value encoding: execnet's ``gateway_base`` names.

The channel is a thin Python object over the engine's handle (``_core``):
sending, receiving, callbacks, closing and waiting all happen in Rust.
"""

from __future__ import annotations

import sys
import threading
import traceback
from typing import Any, Callable, Iterator

from . import _core

__all__ = [
    "Channel",
    "DataFormatError",
    "DumpError",
    "LoadError",
    "RemoteError",
    "TimeoutError",
    "dump",
    "dumps",
    "load",
    "loads",
]


class DataFormatError(Exception):
    """A value could not be encoded or decoded."""


class DumpError(DataFormatError):
    """Error while serializing an object."""


class LoadError(DataFormatError):
    """Error while unserializing an object."""


class RemoteError(Exception):
    """Exception containing a stringified error from the other side."""

    def __init__(self, formatted: str) -> None:
        super().__init__()
        self.formatted = formatted

    def __str__(self) -> str:
        return self.formatted

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}: {self.formatted}"

    def warn(self) -> None:
        sys.stderr.write(f"Warning: unhandled {self!r}\n")


class TimeoutError(IOError):
    """Exception indicating that a timeout was reached."""


def dumps(obj: object) -> bytes:
    """Serialize ``obj`` (builtin types only) to bytes (the engine's encoding)."""
    return _core.dumps(obj)


def loads(bytestring: bytes, py2str_as_py3str: bool = False, py3str_as_py2str: bool = False) -> Any:
    """Deserialize bytes made by :func:`dumps`."""
    return _core.loads(bytes(bytestring))


def dump(byteio, obj: object) -> None:
    """Write the serialized ``obj`` to a stream."""
    data = dumps(obj)
    byteio.write(len(data).to_bytes(4, "big") + data)


def load(io, py2str_as_py3str: bool = False, py3str_as_py2str: bool = False) -> Any:
    """Read one object written by :func:`dump` from a stream."""
    head = io.read(4)
    if len(head) < 4:
        raise EOFError("expected 4 bytes")
    n = int.from_bytes(head, "big")
    data = io.read(n)
    if len(data) < n:
        raise LoadError("truncated data")
    return loads(data)


NO_ENDMARKER_WANTED = object()


class Channel:
    """Communication channel between two Python interpreter execution points."""

    RemoteError = RemoteError
    TimeoutError = TimeoutError

    def __init__(self, gateway, core) -> None:
        """:private: made by ``Gateway.remote_exec``/``newchannel`` or when a
        channel arrives inside a value; ``Channel(gateway, id)`` gives a
        handle on the channel with that id, as in execnet."""
        self.gateway = gateway
        if isinstance(core, int):
            core = gateway._gw.channel(gateway, core)
        self._ch = core
        self.id = core.id
        self._remoteerrors: list[RemoteError] = []
        live = getattr(gateway, "_channels", None)
        if live is not None:
            live.add(self)

    def __repr__(self) -> str:
        try:
            flag = "closed" if self.isclosed() else "open"
        except OSError:
            flag = "forked"
        return "<Channel id=%d %s>" % (self.id, flag)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Channel):
            return NotImplemented
        return self.id == other.id and self.gateway is other.gateway

    def __hash__(self) -> int:
        return hash((id(self.gateway), self.id))

    def setcallback(self, callback: Callable[[Any], Any], endmarker: object = NO_ENDMARKER_WANTED) -> None:
        """Deliver items to ``callback`` (queued items first) on the engine's
        reader thread; ``endmarker`` once when the channel ends, if given.
        ``receive()`` raises after this."""
        want = endmarker is not NO_ENDMARKER_WANTED
        self._ch.setcallback(callback, want, endmarker if want else None)

    def _getremoteerror(self):
        """The error the channel ended with, if it was not raised yet (a
        RemoteError, or EOFError if the worker died), else None."""
        try:
            return self._remoteerrors.pop(0)
        except IndexError:
            pass
        try:
            # An ended channel answers at once (a callback may still be
            # returning from the endmarker: allow it a moment).
            self._ch.waitclose(1.0 if self._ch.isclosed() else 0.0)
        except (RemoteError, EOFError) as e:
            return e
        except Exception:
            return None
        return None

    def isclosed(self) -> bool:
        """Whether the channel is closed (it may still hold items)."""
        return self._ch.isclosed()

    def makefile(self, mode: str = "w", proxyclose: bool = False):
        """A file-like object: mode 'w' sends what is written, 'r' reads items."""
        if mode == "w":
            return ChannelFileWrite(channel=self, proxyclose=proxyclose)
        elif mode == "r":
            return ChannelFileRead(channel=self, proxyclose=proxyclose)
        raise ValueError(f"mode {mode!r} not available")

    def close(self, error=None) -> None:
        """Close the channel, with an optional error text for the other side."""
        if isinstance(error, RemoteError):
            self._remoteerrors.append(error)
        self._ch.close(None if error is None else str(error))

    def waitclose(self, timeout: float | None = None) -> None:
        """Wait until the channel is closed; re-raise the remote error."""
        try:
            self._ch.waitclose(timeout)
        except TimeoutError:
            raise self.TimeoutError("Timeout after %r seconds" % timeout) from None
        error = self._getremoteerror()
        if error:
            raise error

    def send(self, item: object) -> None:
        """Send ``item`` (waits while the channel's window is full).
        OSError after the channel was closed; DumpError for values that
        cannot be sent (nothing is sent then)."""
        self._ch.send(item)

    def receive(self, timeout: float | None = None) -> Any:
        """Receive the next item. ``timeout`` in seconds: TimeoutError after
        it. EOFError at the end; RemoteError if the remote code failed."""
        try:
            return self._ch.receive(timeout)
        except TimeoutError:
            raise self.TimeoutError("no item after %r seconds" % timeout) from None

    def __iter__(self) -> Iterator[Any]:
        return self

    def next(self) -> Any:
        try:
            return self.receive()
        except EOFError:
            raise StopIteration from None

    __next__ = next

    def reconfigure(self, py2str_as_py3str: bool = True, py3str_as_py2str: bool = False) -> None:
        """No-op: Python 2 strings do not exist on this engine."""
        self._strconfig = (py2str_as_py3str, py3str_as_py2str)


class ChannelFile:
    def __init__(self, channel: Channel, proxyclose: bool = True) -> None:
        self.channel = channel
        self._proxyclose = proxyclose

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        if self._proxyclose:
            self.channel.close()

    def __repr__(self) -> str:
        state = (self.channel.isclosed() and "closed") or "open"
        return "<ChannelFile %d %s>" % (self.channel.id, state)


class ChannelFileWrite(ChannelFile):
    def write(self, out) -> None:
        self.channel.send(out)

    def flush(self) -> None:
        pass


class ChannelFileRead(ChannelFile):
    def __init__(self, channel: Channel, proxyclose: bool = True) -> None:
        super().__init__(channel, proxyclose)
        self._buffer = None

    def read(self, n: int):
        try:
            if self._buffer is None:
                self._buffer = self.channel.receive()
            while len(self._buffer) < n:
                self._buffer += self.channel.receive()
        except EOFError:
            self.close()
        if self._buffer is None:
            ret = ""
        else:
            ret = self._buffer[:n]
            self._buffer = self._buffer[n:]
        return ret

    def readline(self):
        if self._buffer is not None:
            i = self._buffer.find("\n")
            if i != -1:
                return self.read(i + 1)
            line = self.read(len(self._buffer) + 1)
        else:
            line = self.read(1)
        while line and line[-1] != "\n":
            c = self.read(1)
            if not c:
                break
            line += c
        return line


def _format_exception(exc: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        return f"{type(exc).__name__}: {exc}"


class ExecModel:
    """execnet's thread execution model object (``gw.execmodel``)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return "<ExecModel %r>" % self.backend

    @property
    def queue(self):
        import queue

        return queue

    @property
    def subprocess(self):
        import subprocess

        return subprocess

    @property
    def socket(self):
        import socket

        return socket

    def get_ident(self) -> int:
        return threading.get_ident()

    def sleep(self, delay: float) -> None:
        import time

        time.sleep(delay)

    def start(self, func, args=()) -> None:
        import _thread

        _thread.start_new_thread(func, args)

    def fdopen(self, fd, mode, bufsize=1, closefd=True):
        import os

        return os.fdopen(fd, mode, bufsize, closefd=closefd)

    def Lock(self):
        return threading.Lock()

    def RLock(self):
        return threading.RLock()

    def Event(self):
        return threading.Event()


_EXECMODELS = ("thread", "main_thread_only")


def get_execmodel(backend) -> ExecModel:
    if isinstance(backend, ExecModel):
        return backend
    if backend not in _EXECMODELS:
        raise ValueError(f"unknown execmodel {backend!r}")
    return ExecModel(backend)
