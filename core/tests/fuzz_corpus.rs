//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through
//! the target bodies in `execnet_core::fuzzing`, on stable, as part of a
//! plain `cargo test -p execnet-core` (the crate dev-depends on itself with
//! the `fuzzing` feature). Crashes found by fuzzing are kept in the corpus
//! as `regression-*` files.

use std::path::PathBuf;
use std::time::Instant;

use execnet_core::fuzzing;

fn replay(target: &str, body: impl Fn(&[u8])) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&data)));
        assert!(result.is_ok(), "{target}: {} panics", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus");
    n
}

#[test]
fn deframer_corpus() {
    replay("deframer", fuzzing::deframer);
}

#[test]
fn value_decode_corpus() {
    replay("value_decode", fuzzing::value_decode);
}

#[test]
fn session_bytes_corpus() {
    replay("session_bytes", fuzzing::session_bytes);
}

#[test]
fn session_ops_corpus() {
    let now = Instant::now();
    replay("session_ops", |data| fuzzing::session_ops(data, now));
}
