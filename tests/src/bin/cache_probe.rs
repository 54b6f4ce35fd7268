//! Test helper for `tests/tests/code_cache.rs`: a fresh host process that
//! starts N popen gateways of one spec at once and prints, one line per
//! gateway, how its worker booted: `loaded` (compiled code from the host's
//! cache, memory or disk) or `compiled` (the interpreter compiled the
//! source). The worker itself says which (`_execnet_boot` in `__main__`,
//! set by the boot loader only when it loaded marshal data).
//!
//! ```text
//! cache_probe SPEC N
//! ```

use execnet::blocking::makegateway;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(spec), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: cache_probe SPEC N");
        std::process::exit(2);
    };
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let gw = makegateway(spec).map_err(|e| e.to_string())?;
                    let boot: Option<bool> = gw
                        .remote_exec(
                            "import sys\n\
                             channel.send(getattr(sys.modules['__main__'], '_execnet_boot', None))",
                        )
                        .and_then(|ch| ch.receive())
                        .map_err(|e| e.to_string())?;
                    gw.exit().map_err(|e| e.to_string())?;
                    Ok(if boot == Some(true) {
                        "loaded"
                    } else {
                        "compiled"
                    }
                    .to_string())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
            .collect()
    });
    let mut failed = false;
    for r in results {
        match r {
            Ok(kind) => println!("{kind}"),
            Err(e) => {
                eprintln!("cache_probe: {e}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
