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
//!   src/lib.rs       this crate: the sources as text, the compressed worker, the loader
//!   tests/           stdlib unittest suites (`python -m unittest discover -s bootstrap/tests`)
//! ```
//!
//! # Size
//!
//! Start-up cost grows with the worker's size (about 1.5 ms per 10 KB of
//! source to compile, on a start that compiles; popen starts after the first
//! load the compiled code instead, ~131 KB of marshal data). `worker.py` is
//! about 82 KB of source, about 22.2 KB zlib-compressed (22,219 bytes when
//! this was written); the unit test
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
//! popen may instead use [`learning_loader`] (the interpreter hands its
//! compiled worker back ahead of its frames) and, for later starts of the
//! same interpreter, [`cached_loader`] (it loads that code instead of
//! compiling the source; docs/protocol.md §1).
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
use std::sync::OnceLock;

/// The worker's Python source (`bootstrap/worker.py`).
pub const WORKER_SOURCE: &str = include_str!("../worker.py");

/// The socket server's Python source (`bootstrap/socketserver.py`).
pub const SOCKETSERVER_SOURCE: &str = include_str!("../socketserver.py");

/// The remote side of RSync (`bootstrap/rsync_remote.py`), run with
/// `remote_exec`.
pub const RSYNC_SOURCE: &str = include_str!("../rsync_remote.py");

/// The worker source, zlib-compressed (computed once, on first use).
pub fn worker_compressed() -> &'static [u8] {
    static COMPRESSED: OnceLock<Vec<u8>> = OnceLock::new();
    COMPRESSED.get_or_init(|| {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(WORKER_SOURCE.as_bytes())
            .expect("writing to a Vec cannot fail");
        enc.finish().expect("writing to a Vec cannot fail")
    })
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
        assert!(std::ptr::eq(z, worker_compressed()), "computed once");
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
        assert!(WORKER_SOURCE.contains("def _main()"));
        assert!(WORKER_SOURCE.trim_end().ends_with("_main()"));
        assert!(SOCKETSERVER_SOURCE.contains("HMAC"));
    }
}
