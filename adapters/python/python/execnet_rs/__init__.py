"""execnet_rs: execnet's API on the execnet-rs engine.

Switching is one import::

    import execnet_rs as execnet

    gw = execnet.makegateway("popen")
    ch = gw.remote_exec("channel.send(channel.receive() * 2)")
    ch.send(21)
    assert ch.receive() == 42

Gateways, channels, groups, receive queues and rsync run on the Rust
engine (the ``execnet`` crate); this package never imports the ``execnet``
distribution.
"""

from . import gateway_base
from .gateway import Gateway
from .gateway_base import (
    Channel,
    DataFormatError,
    DumpError,
    LoadError,
    RemoteError,
    TimeoutError,
    dump,
    dumps,
    load,
    loads,
)
from .multi import Group, MultiChannel, default_group, makegateway, set_execmodel
from .rsync import RSync
from .xspec import XSpec
from . import _core

__version__ = "0.1.0"
#: The engine behind this API (execnet itself has no such attribute).
__engine__ = "execnet-rs"


class HostNotFound(Exception):
    """The host could not be reached or logged into (ssh, socket)."""


_core._register(
    Channel,
    RemoteError,
    TimeoutError,
    DumpError,
    LoadError,
    HostNotFound,
    gateway._start_thread_worker,
    gateway_base._format_exception,
)


def PopenGateway(python=None) -> Gateway:
    """A gateway to a new local interpreter (``python``: its command)."""
    spec = "popen" if python is None else f"popen//python={python}"
    return default_group.makegateway(spec)


def SshGateway(host, remotepython=None, ssh_config=None) -> Gateway:
    """A gateway to an interpreter on ``host`` through the system ssh."""
    spec = f"ssh={host}"
    if remotepython is not None:
        spec += f"//python={remotepython}"
    if ssh_config is not None:
        spec += f"//ssh_config={ssh_config}"
    return default_group.makegateway(spec)


def SocketGateway(host, port) -> Gateway:
    """A gateway to a running socket server (bootstrap/socketserver.py)."""
    return default_group.makegateway(f"socket={host}:{port}")


def ThreadGateway() -> Gateway:
    """A gateway whose worker runs in a thread of this interpreter."""
    return default_group.makegateway("thread")


__all__ = [
    "Channel",
    "DataFormatError",
    "DumpError",
    "Gateway",
    "Group",
    "HostNotFound",
    "LoadError",
    "MultiChannel",
    "PopenGateway",
    "RSync",
    "RemoteError",
    "SocketGateway",
    "SshGateway",
    "ThreadGateway",
    "TimeoutError",
    "XSpec",
    "__version__",
    "default_group",
    "dump",
    "dumps",
    "load",
    "loads",
    "makegateway",
    "set_execmodel",
]
