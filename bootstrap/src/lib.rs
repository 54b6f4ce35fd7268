//! The remote side of execnet: a zero-install Python worker and a standalone
//! socket server, embedded as text.
//!
//! Nothing is installed on the remote machine. A host starts
//! `PYTHON -u -c LOADER` (see [`loader`]) and writes [`worker_compressed`] to
//! the interpreter's stdin, followed at once by protocol frames
//! (`docs/protocol.md` §1). The worker runs unchanged on CPython 3.6–3.13 and
//! PyPy3, with the standard library only.
//!
//! # Layout
//!
//! ```text
//! bootstrap/
//!   worker.py        the worker: codec, framing, channels, execution, main loop
//!   socketserver.py  standalone socket server (HMAC-SHA256 token handshake,
//!                    one worker subprocess per connection; also `installvia`)
//!   forkserver.py    popen//fork's fork server: loads the worker once, forks
//!                    a ready worker per gateway, reaps and reports them
//!   src/lib.rs       this crate: the sources as text, the compressed worker, the loader
//!   tests/           stdlib unittest suites (`python -m unittest discover -s bootstrap/tests`)
//! ```
//!
//! # Size
//!
//! Start-up cost grows with the worker's size (about 1.5 ms per 10 KB of
//! source to compile, on a start that compiles; popen starts after the first
//! load the compiled code instead, ~149 KB of marshal data on CPython 3.11).
//! `worker.py` is about 97 KB of source, about 26.6 KB zlib-compressed
//! (26,621 bytes when this was written); the unit test
//! `compressed_worker_decompresses_to_the_source` prints the exact figure.
//!
//! # Starting a worker
//!
//! ```text
//! PYTHON -u -c "import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read(N)))"
//! stdin:  N bytes of worker_compressed(), then frames (host HELLO first), no wait
//! stdout: frames (worker HELLO first)
//! stderr: the process's stderr (fd 1 output too, in the default "inherit" mode)
//! ```
//!
//! popen uses [`boot_loader`] instead: a header on stdin says whether
//! compiled code (from an earlier start of the same interpreter, kept in
//! memory and on disk by the host) comes ahead of the source; without it
//! the interpreter compiles the source and hands its compiled worker back
//! ahead of its frames (docs/protocol.md §1). [`learning_loader`] and
//! [`cached_loader`] are the same two halves with the choice made in argv.
//!
//! `-S` may be added (the worker needs no `site`); it saves ~20 ms per start.
//! The worker moves the protocol off fds 0/1 at once (fd 0 becomes
//! `/dev/null`, fd 1 goes to fd 2 / a forwarding pipe / `/dev/null`), so
//! remote code writing to fd 1 cannot corrupt the stream. For
//! `socketserver.py` the client sends a 4-byte big-endian length before the
//! compressed worker instead (see `docs/protocol.md` §12).
//!
//! # Thread mode
//!
//! A host may also run the worker inside its own Python process: executing
//! [`WORKER_SOURCE`] in a fresh namespace whose `__name__` is not
//! `"__main__"` only defines things; `serve_thread(read_fd, write_fd)` then
//! serves one gateway over those two descriptors in the calling thread and
//! returns (both descriptors closed) when the gateway has ended. It touches
//! nothing process-wide: no fds 0/1/2, signal handlers, `os._exit` or
//! `sys.modules`; the `output` option is ignored.
//!
//! # Remote code and `import execnet`
//!
//! Remote code gets the worker's `execnet` compatibility module for
//! `import execnet` (`execnet.__engine__ == "execnet-rs"`): execnet's
//! remote-side API (`dumps`, `loads`, `DumpError`, `gateway_base`,
//! `channel.gateway.execmodel`, ...) on this worker. A worker process puts
//! it into `sys.modules` before the first exec; thread mode hands it to each
//! exec through the exec's own `__import__` (CPython; PyPy ignores it).
//!
//! # Worker options and environment
//!
//! The host HELLO's `options` map: `execmodel` (`"thread"` default, or
//! `"main_thread_only"`), `output` (`"inherit"` default, `"forward"`,
//! `"discard"`), `debug` (bool: trace to the worker's stderr). The environment
//! variable `EXECNET_DEBUG=1` traces to stderr, `EXECNET_DEBUG=/path` appends
//! the trace to a file. A worker that fails before its HELLO writes one line
//! `execnet-worker: bootstrap failed: …` to stderr and exits with status 1.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::io::Write;

/// The worker's Python source (`bootstrap/worker.py`).
pub const WORKER_SOURCE: &str = include_str!("../worker.py");

/// The socket server's Python source (`bootstrap/socketserver.py`).
pub const SOCKETSERVER_SOURCE: &str = include_str!("../socketserver.py");

/// The remote side of RSync (`bootstrap/rsync_remote.py`), run with
/// `remote_exec`.
pub const RSYNC_SOURCE: &str = include_str!("../rsync_remote.py");

/// The fork server's Python source (`bootstrap/forkserver.py`): one interpreter
/// that loads the worker once and forks a ready worker per `popen//fork`
/// gateway. Started with [`loader`]`(`[`forkserver_compressed`]`().len())`;
/// its start and control protocol are described at the top of the file.
pub const FORKSERVER_SOURCE: &str = include_str!("../forkserver.py");

/// [`FORKSERVER_SOURCE`], zlib-compressed (at build time, by `build.rs`:
/// at run time it cost a fresh host process ~0.8 ms before its first fork
/// server could start).
pub fn forkserver_compressed() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/forkserver.py.z"))
}

/// The worker source, zlib-compressed (at build time, by `build.rs`, as
/// [`compress`] does: compressing it at run time cost every fresh host
/// process ~3 ms).
pub fn worker_compressed() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/worker.py.z"))
}

/// `source`, zlib-compressed as the loaders expect it (for a worker source
/// with statements in front, see `WorkerSetup` in the `execnet` crate).
/// Runs once per such start, so at zlib's fastest level: ~0.6 ms and ~30 KB
/// for the worker, against ~8 ms and ~24.5 KB at the best level (which
/// [`worker_compressed`] pays once, at build time).
pub fn compress(source: &str) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(source.as_bytes())
        .expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// The `-c` argument that reads `len` compressed bytes from stdin and runs them:
/// `import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read(len)))`.
///
/// Pass `worker_compressed().len()`, then write exactly those bytes to stdin.
pub fn loader(len: usize) -> String {
    format!("import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read({len})))")
}

/// The 8 bytes that open the record a [`learning_loader`] writes to stdout.
///
/// The record: these 8 bytes, a 4-byte big-endian length and that many
/// bytes of the interpreter's `sys.version` (UTF-8), a 4-byte big-endian
/// length and that many bytes of `marshal.dumps` of the compiled worker.
/// The worker's own frames (HELLO first) follow it on stdout.
pub const CODE_RECORD_MAGIC: &[u8; 8] = b"EXNCODE1";

/// Like [`loader`], but the interpreter also hands its compiled worker back:
/// it compiles the `len` compressed source bytes, writes the code record
/// (see [`CODE_RECORD_MAGIC`]) to fd 1, then runs the compiled worker.
///
/// Compiling the worker is most of a start's cost above the bare
/// interpreter (~10 ms of ~12 ms on CPython 3.11 here); a host that keeps
/// the record can start the same interpreter again with [`cached_loader`].
/// The argument contains quotes: for argv (popen), not for a remote shell.
pub fn learning_loader(len: usize) -> String {
    format!(
        "import sys,zlib,marshal;_c=compile(zlib.decompress(sys.stdin.buffer.read({len})),'<string>','exec');\
         _m=marshal.dumps(_c);_v=sys.version.encode();_f=open(1,'wb',closefd=False);\
         _f.write(b'EXNCODE1'+len(_v).to_bytes(4,'big')+_v+len(_m).to_bytes(4,'big')+_m);_f.flush();\
         del _f,_m,_v;exec(_c)"
    )
}

/// The `-c` argument that runs a worker compiled earlier by the same
/// interpreter: stdin carries `code_len` bytes of marshal data (as in the
/// record of a [`learning_loader`]), then `len` bytes of [`worker_compressed`].
///
/// The marshal data is used only when `sys.version` is `version` (marshal
/// is specific to an interpreter version; loading another version's code
/// could crash it); otherwise the source is compiled as by [`loader`]. Both
/// parts are always read, so the protocol starts at the same offset either
/// way. `_execnet_boot` in `__main__` says which part ran (`True`: the
/// compiled code).
pub fn cached_loader(code_len: usize, version: &str, len: usize) -> String {
    let hex: String = version.bytes().map(|b| format!("{b:02x}")).collect();
    format!(
        "import sys,zlib,marshal;_b=sys.stdin.buffer;_d=_b.read({code_len});_s=_b.read({len});\
         _execnet_boot=sys.version.encode().hex()=='{hex}';\
         _x=marshal.loads(_d) if _execnet_boot else zlib.decompress(_s);\
         del _b,_d,_s;exec(_x)"
    )
}

/// The `-c` argument of a popen start whose stdin says what it carries: the
/// host decides *after* spawning the interpreter whether it sends compiled
/// code, so an interpreter starts while another start of the same one is
/// still compiling (single-flight, `transport/code_cache.rs`).
///
/// stdin: a header line made by [`boot_header`] (`K N VERSION_HEX\n`), `K`
/// bytes of marshal data (none when `K` is 0), `N` bytes of
/// [`worker_compressed`], then frames. The loader loads the marshal data
/// only if `K > 0` and `sys.version` is the version in the header (marshal
/// data of another version could crash the interpreter), and then sets
/// `_execnet_boot = True` in `__main__`. Otherwise it compiles the source,
/// writes the code record of a [`learning_loader`] to fd 1 (see
/// [`CODE_RECORD_MAGIC`]) ahead of the worker's frames, and runs it. The
/// argument holds quotes and newlines: for argv (popen), not for a remote
/// shell.
pub fn boot_loader() -> &'static str {
    "import sys,zlib,marshal\n\
     _b=sys.stdin.buffer;_h=_b.readline().split();_d=_b.read(int(_h[0]));_s=_b.read(int(_h[1]))\n\
     if _d and sys.version.encode().hex()==_h[2].decode():_x=marshal.loads(_d);_execnet_boot=True\n\
     else:\n \
     _x=compile(zlib.decompress(_s),'<string>','exec');_m=marshal.dumps(_x);_v=sys.version.encode()\n \
     _f=open(1,'wb',closefd=False);_f.write(b'EXNCODE1'+len(_v).to_bytes(4,'big')+_v+len(_m).to_bytes(4,'big')+_m);_f.flush();del _f,_m,_v\n\
     del _b,_h,_d,_s;exec(_x)"
}

/// The header line a [`boot_loader`] reads first: `code_len` bytes of
/// marshal data compiled by the interpreter whose `sys.version` is
/// `version` follow it (`code_len` 0: none, `version` is ignored), then
/// `source_len` bytes of [`worker_compressed`].
pub fn boot_header(code_len: usize, version: &str, source_len: usize) -> Vec<u8> {
    let mut hex: String = version.bytes().map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() {
        hex.push('-');
    }
    format!("{code_len} {source_len} {hex}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn compressed_worker_decompresses_to_the_source() {
        let z = worker_compressed();
        let mut out = String::new();
        flate2::read::ZlibDecoder::new(z)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, WORKER_SOURCE);
        assert!(
            std::ptr::eq(z, worker_compressed()),
            "the same bytes every call"
        );
        println!(
            "worker.py: {} bytes, {} compressed",
            WORKER_SOURCE.len(),
            z.len()
        );
    }

    #[test]
    fn loader_reads_exactly_n_bytes() {
        let n = worker_compressed().len();
        assert_eq!(
            loader(n),
            format!("import sys,zlib;exec(zlib.decompress(sys.stdin.buffer.read({n})))")
        );
        assert!(!loader(n).contains('"') && !loader(n).contains('\''));
    }

    #[test]
    fn sources_are_embedded() {
        assert!(WORKER_SOURCE.contains("def _main("));
        assert!(WORKER_SOURCE.trim_end().ends_with("_main()"));
        assert!(SOCKETSERVER_SOURCE.contains("HMAC"));
    }
}
