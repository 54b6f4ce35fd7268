"""RSync: a directory tree to one or many gateways (the engine's rsync)."""

from __future__ import annotations

import os
from typing import Callable

from . import _core


class RSync:
    """Send a directory structure (recursively) to one or many remote
    filesystems. Subclasses may override ``filter(path)`` (gets full local
    paths) and ``_report_send_file(gateway, relpath)``, and use
    ``_sourcedir`` and ``_verbose``, as pytest-xdist's HostRSync does."""

    def __init__(self, sourcedir, callback=None, verbose: bool = True) -> None:
        self._sourcedir = str(sourcedir)
        self._verbose = verbose
        assert callback is None or callable(callback)
        self._callback = callback
        self._targets: list[tuple[object, str, Callable[[], None] | None, bool]] = []

    def filter(self, path: str) -> bool:
        return True

    def _report_send_file(self, gateway, modified_rel_path: str) -> None:
        if self._verbose:
            print(f"{gateway} <= {modified_rel_path}")

    def add_target(self, gateway, destdir, finishedcallback=None, delete: bool = False) -> None:
        """Add a remote target directory on ``gateway``."""
        for target in self._targets:
            if target[0] is gateway:
                raise ValueError("already have a target on this gateway")
        self._targets.append((gateway, str(destdir), finishedcallback, bool(delete)))

    def send(self, raises: bool = True) -> None:
        """Sync the source to every target (all at once); the targets are
        used up. With no targets: OSError if ``raises``, else return."""
        if not self._targets:
            if raises:
                raise OSError("no targets available, maybe you are trying call send() twice?")
            return
        self._sourcedir = os.path.dirname(os.path.join(self._sourcedir, "x"))
        targets, self._targets = self._targets, []
        custom_filter = type(self).filter is not RSync.filter
        gateways = [t[0] for t in targets]

        reported: set[str] = set()

        def report(kind: str, relpath, bytes_to_send: int) -> None:
            # The engine reports per chunk for all targets at once; execnet's
            # hooks are per file and target.
            if kind == "list":
                if self._callback:
                    for gw in gateways:
                        self._callback("list", bytes_to_send, gw)
                return
            if relpath in reported:
                return
            reported.add(relpath)
            for gw in gateways:
                self._report_send_file(gw, relpath)
            if self._callback:
                try:
                    size = os.path.getsize(os.path.join(self._sourcedir, relpath))
                except OSError:
                    size = 0
                for gw in gateways:
                    self._callback("ack", size, gw)

        _core.rsync_send(
            self._sourcedir,
            [(gw._gw, dest, delete) for gw, dest, _, delete in targets],
            self.filter if custom_filter else None,
            report,
        )
        for _, _, finished, _ in targets:
            if finished:
                finished()
