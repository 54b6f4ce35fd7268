"""Compat-run shim (compat/run_execnet_tests.sh only): ``import execnet``
in subprocesses that execnet's tests start gives execnet_rs."""

import execnet_alias  # noqa: F401 -- replaces sys.modules["execnet"]
