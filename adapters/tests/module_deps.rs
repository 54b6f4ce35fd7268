//! The crate's layering, checked: the transports (`adapters/src/transport/`)
//! sit below gateways, channels and the driver and never import them. A
//! start that goes through another gateway asks the `transport::Through`
//! trait instead (docs/architecture.md, "Layout"). This test fails when a
//! transport module starts naming a layer above it, which is how the old
//! gateway ↔ channel ↔ transport import cycle began.

use std::path::Path;

/// Modules of the crate that a transport must not use.
const ABOVE: &[&str] = &[
    "gateway", "channel", "driver", "relay", "group", "multi", "rsync", "blocking", "io",
];

#[test]
fn transports_do_not_import_the_layers_above_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/transport");
    let mut offenders = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("src/transport is readable") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).expect("source is readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for module in ABOVE {
                if code.contains(&format!("crate::{module}::"))
                    || code.contains(&format!("crate::{module};"))
                    || code.contains(&format!("crate::{{{module}"))
                {
                    offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(files >= 5, "expected the transport modules in {dir:?}");
    assert!(
        offenders.is_empty(),
        "transport modules import layers above them:\n{}",
        offenders.join("\n")
    );
}
