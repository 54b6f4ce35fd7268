"""pytest plugin (-p execnet_alias): ``import execnet`` gives execnet_rs.

Loaded before the test files and their conftest, so that execnet 2.1.2's
own test suite runs against this package. execnet internals that the
suite imports by name but that have no counterpart here (WorkerPool,
gateway_io's argument builders, safe_terminate, ...) are placeholders
that fail when used: the tests that exercise them fail, the rest run.
"""

import sys
import types

import execnet_rs
from execnet_rs import gateway, gateway_base, multi, rsync, xspec


class _Internal:
    """An execnet internal this package does not have."""

    def __init__(self, name):
        self._name = name

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"execnet internal {self._name} (not in execnet_rs)")

    def __getattr__(self, attr):
        raise NotImplementedError(f"execnet internal {self._name}.{attr} (not in execnet_rs)")


def _module(name, real=None, **internals):
    mod = types.ModuleType(name)
    if real is not None:
        mod.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
    for key in internals:
        if not hasattr(mod, key):
            setattr(mod, key, _Internal(f"{name}.{key}"))
    sys.modules[name] = mod
    return mod


sys.modules["execnet"] = execnet_rs
sys.modules["execnet.gateway"] = gateway
sys.modules["execnet.xspec"] = xspec
sys.modules["execnet.rsync"] = rsync
base = _module(
    "execnet.gateway_base",
    gateway_base,
    WorkerPool=1,
    Message=1,
    Popen2IO=1,
    BaseGateway=1,
    ChannelFactory=1,
    ENDMARKER=1,
    geterrortext=1,
    loads_internal=1,
    dumps_internal=1,
    Unserializer=1,
    init_popen_io=1,
    serve=1,
)
_module("execnet.multi", multi, safe_terminate=1)
_module(
    "execnet.gateway_io",
    None,
    popen_args=1,
    ssh_args=1,
    vagrant_ssh_args=1,
    create_io=1,
    ProxyIO=1,
    Popen2IOMaster=1,
)
_module("execnet.gateway_bootstrap", None, bootstrap=1, HostNotFound=1)
_module("execnet.gateway_socket", None, create_io=1)
_module("execnet.rsync_remote", None, serve_rsync=1)
execnet_rs.gateway_base = base
execnet_rs.gateway_io = sys.modules["execnet.gateway_io"]
