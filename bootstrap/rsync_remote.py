"""The remote side of execnet's RSync (host side: adapters/src/rsync.rs).

Run with remote_exec; standard library only; CPython 3.6-3.13 and PyPy3.
Paths travel as bytes (any file name works), relative to the destination,
"/"-separated, b"" for the destination itself.

Conversation (host -> remote, remote -> host):

    -> (dest, delete)
    -> [entry, ...]  ...   listing batches, in walk order (a directory
    -> None                before its contents); entry index = position
       entry: (rel, 0, mode)                   directory
              (rel, 1, mode, mtime_ns, size)   regular file
              (rel, 2, target)                 symlink
    <- ("needs", [(index, sha256_or_None), ...], deleted)
       a file is needed when its size or mtime differs; the digest of the
       present file is sent when only the mtime differs
    -> ("t", index)                 content is equal: set mode and mtime
    -> ("F", [(index, data), ...])  whole files (the small ones, together)
    -> ("w", index), data..., ("e", index, ok)   file in chunks; ok False:
                                    the source vanished, keep what was there
    -> None
    <- ("done", files_written)

Nothing is acknowledged item by item: the channel window is the flow
control.

Directories are made writable for their owner (mode | 0o700). A file that
exists is replaced through a temporary name renamed into place (a reader
never sees it half written); a new one is created in place with O_EXCL
(there is nothing to protect, and the rename per file cost ~15% of a fresh
sync). Files get their mode and mtime last.
"""


def serve_rsync(channel):
    import hashlib
    import os
    import shutil
    import stat
    import sys

    dest, delete = channel.receive()
    dest = os.path.abspath(dest)

    get = channel.receive
    utime_fd = os.utime in os.supports_fd
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)

    def full(rel):
        return os.path.join(dest, rel) if rel else dest

    def remove(path):
        if not path.startswith(dest):
            raise ValueError("refusing to remove %r outside %r" % (path, dest))
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):

            def onerror(func, p, exc_info):
                # A read-only directory: make its parent writable, retry.
                try:
                    os.chmod(os.path.dirname(p), 0o700)
                    os.chmod(p, 0o700)
                    func(p)
                except OSError:
                    pass

            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=onerror)  # onerror is deprecated there
            else:
                shutil.rmtree(path, onerror=onerror)
        else:
            os.unlink(path)

    def lstat(path):
        try:
            return os.lstat(path)
        except OSError:
            return None

    def digest(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                h.update(block)
        return h.digest()

    def set_meta(path, mode, mtime_ns):
        os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, ns=(mtime_ns, mtime_ns))

    entries = {}  # index -> (rel, mode, mtime_ns) of needed files
    needs = []
    dirs = {}  # rel of a listed directory -> names listed in it
    index = 0
    prefix = os.path.join(dest, b"")
    os_lstat = os.lstat
    S_ISREG = stat.S_ISREG
    S_IMODE = stat.S_IMODE
    while True:
        batch = get()
        if batch is None:
            break
        for entry in batch:
            rel, kind = entry[0], entry[1]
            path = prefix + rel if rel else dest
            if delete and rel:
                parent, _, name = rel.rpartition(b"/")
                names = dirs.get(parent)
                if names is not None:
                    names.add(name)
            try:
                st = os_lstat(path)
            except OSError:
                st = None
            if (
                kind == 1
                and st is not None
                and st.st_size == entry[4]
                and st.st_mtime_ns == entry[3]
                and S_ISREG(st.st_mode)
            ):
                # The common case of an unchanged tree: nothing to send.
                if S_IMODE(st.st_mode) != S_IMODE(entry[2]):
                    os.chmod(path, S_IMODE(entry[2]))
                index += 1
                continue
            if kind == 0:
                mode = entry[2]
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    remove(path)
                    st = None
                if st is None:
                    # exist_ok: another target may share this directory
                    os.makedirs(path, exist_ok=True)
                    st = os.lstat(path)
                want = stat.S_IMODE(mode) | 0o700
                if stat.S_IMODE(st.st_mode) != want:
                    os.chmod(path, want)
                dirs[rel] = set()
            elif kind == 1:
                mode, mtime_ns, size = entry[2], entry[3], entry[4]
                if st is not None and not stat.S_ISREG(st.st_mode):
                    remove(path)
                    st = None
                if st is not None and st.st_size == size:
                    if st.st_mtime_ns == mtime_ns:
                        if stat.S_IMODE(st.st_mode) != stat.S_IMODE(mode):
                            os.chmod(path, stat.S_IMODE(mode))
                    else:
                        entries[index] = (rel, mode, mtime_ns, False)
                        needs.append((index, digest(path)))
                else:
                    entries[index] = (rel, mode, mtime_ns, st is None)
                    needs.append((index, None))
            elif kind == 2:
                target = entry[2]
                if st is not None:
                    if stat.S_ISLNK(st.st_mode) and os.readlink(path) == target:
                        index += 1
                        continue
                    remove(path)
                os.symlink(target, path)
            else:
                raise ValueError("unknown entry kind %r" % (kind,))
            index += 1

    deleted = 0
    if delete:
        for rel, names in dirs.items():
            path = full(rel)
            for name in os.listdir(path):
                if name not in names:
                    remove(os.path.join(path, name))
                    deleted += 1
    channel.send(("needs", needs, deleted))

    def write_all(fd, data):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def begin(idx):
        """Opens the file for entry idx: (fd, path written, whether in place)."""
        rel, _, _, new = entries[idx]
        path = full(rel)
        if new:
            try:
                return os.open(path, flags | os.O_EXCL, 0o600), path, True
            except FileExistsError:
                pass  # created since the listing (another target?): replace it
        head, _, name = path.rpartition(b"/")
        # unique per process: two targets may share a directory
        tmp = b"%s/.#%s.%d.execnet-rsync" % (head, name, os.getpid())
        return os.open(tmp, flags, 0o600), tmp, False

    def finish(fd, path, in_place, idx, ok):
        rel, mode, mtime_ns, _ = entries[idx]
        try:
            if ok:
                os.fchmod(fd, stat.S_IMODE(mode))
                if utime_fd:
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)
        if not ok:
            # The source vanished: keep what was there (nothing, if new).
            os.unlink(path)
            return 0
        if not utime_fd:
            os.utime(path, ns=(mtime_ns, mtime_ns))
        if not in_place:
            os.replace(path, full(rel))
        return 1

    written = 0
    out = None  # (fd, path, in place, index) while a file streams in
    while True:
        item = get()
        if item is None:
            break
        if isinstance(item, bytes):
            write_all(out[0], item)
            continue
        op = item[0]
        if op == "F":
            for idx, data in item[1]:
                fd, path, in_place = begin(idx)
                try:
                    write_all(fd, data)
                except BaseException:
                    os.close(fd)
                    raise
                written += finish(fd, path, in_place, idx, True)
        elif op == "t":
            rel, mode, mtime_ns, _ = entries[item[1]]
            set_meta(full(rel), mode, mtime_ns)
        elif op == "w":
            out = begin(item[1]) + (item[1],)
        elif op == "e":
            fd, path, in_place, idx = out
            out = None
            written += finish(fd, path, in_place, idx, item[2])
        else:
            raise ValueError("unknown operation %r" % (op,))
    channel.send(("done", written))


if __name__ == "__channelexec__":
    serve_rsync(channel)  # noqa: F821 (given by the worker)
