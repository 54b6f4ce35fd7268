//! Compresses `worker.py` at build time into `$OUT_DIR/worker.py.z`, which
//! `worker_compressed()` embeds: doing it at run time cost every fresh host
//! process ~3 ms (zlib's best level on ~80 KB) before its first start.

use std::io::Write;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=worker.py");
    let source = std::fs::read("worker.py").expect("read worker.py");
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&source)
        .expect("writing to a Vec cannot fail");
    let z = enc.finish().expect("writing to a Vec cannot fail");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("worker.py.z");
    std::fs::write(out, z).expect("write worker.py.z");
}
