//! Compresses `worker.py` and `forkserver.py` at build time into
//! `$OUT_DIR/NAME.z`, which `worker_compressed()` and
//! `forkserver_compressed()` embed: doing it at run time cost every fresh
//! host process ~3 ms (zlib's best level on ~80 KB) before its first start,
//! and ~0.8 ms before its first fork server.

use std::io::Write;
use std::path::PathBuf;

fn main() {
    for name in ["worker.py", "forkserver.py"] {
        println!("cargo:rerun-if-changed={name}");
        let source = std::fs::read(name).unwrap_or_else(|e| panic!("read {name}: {e}"));
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&source)
            .expect("writing to a Vec cannot fail");
        let z = enc.finish().expect("writing to a Vec cannot fail");
        let out =
            PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join(format!("{name}.z"));
        std::fs::write(out, z).unwrap_or_else(|e| panic!("write {name}.z: {e}"));
    }
}
