//! The channel policies shared with the worker: the lifecycle table
//! (`execnet_core::lifecycle`) and the window policy
//! (`execnet_core::window`), written to `vectors/channel_policy.json`.
//!
//! This test regenerates the file's content from the core and fails when it
//! differs from the committed file; `bootstrap/tests/test_channel_policy.py`
//! checks the worker's literal table and its window rules against the same
//! file. So a change to either side alone fails one of the two tests. After
//! an intended change: `EXECNET_BLESS=1 cargo test -p execnet-core --test
//! channel_policy`, then make the worker agree.

use execnet_core::lifecycle::{ChannelEvent, ChannelState, Local, Outcome, Remote};
use execnet_core::window::{RecvWindow, EAGER_DIVISOR, GRANT_DIVISOR};
use serde_json::{json, Map, Value};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/channel_policy.json"
);

fn lifecycle() -> Value {
    let mut table = Map::new();
    for s in ChannelState::all() {
        let mut row = Map::new();
        for e in ChannelEvent::ALL {
            let cell = match s.next(e) {
                Outcome::To(next) => next.name(),
                Outcome::Refused => "refused".into(),
                Outcome::Violation => "violation".into(),
            };
            row.insert(e.name().into(), Value::String(cell));
        }
        table.insert(s.name(), Value::Object(row));
    }
    let names = |f: fn(ChannelState) -> bool| -> Vec<String> {
        ChannelState::all()
            .filter(|s| f(*s))
            .map(|s| s.name())
            .collect()
    };
    json!({
        "local": Local::ALL.iter().map(|l| l.name()).collect::<Vec<_>>(),
        "remote": Remote::ALL.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "events": ChannelEvent::ALL.iter().map(|e| e.name()).collect::<Vec<_>>(),
        "initial": ChannelState::OPEN.name(),
        "table": table,
        "ended": names(ChannelState::ended),
        "closing": names(ChannelState::closing),
        "fully_closed": names(ChannelState::fully_closed),
    })
}

/// One window-policy case: `ops` replayed on a fresh [`RecvWindow`], each
/// with what it returned. `chunk N`: a DATA_MORE chunk of N bytes was
/// buffered; `deliver N`: an item completed with a last chunk of N bytes
/// (the result is the credit it holds); `consume C`: the application took an
/// item holding C. For chunk and consume the result is the WINDOW grant that
/// became due (0: none).
fn window_case(window: u32, ops: &[(&str, u64)]) -> Value {
    let mut w = RecvWindow::new(window);
    let mut out = Vec::new();
    for &(op, n) in ops {
        let result = match op {
            "chunk" => {
                w.spend(n).expect("the case stays within the window");
                if w.chunk_buffered(n) {
                    w.grant()
                } else {
                    0
                }
            }
            "deliver" => {
                w.spend(n).expect("the case stays within the window");
                w.item_delivered(n)
            }
            "consume" => {
                if w.item_consumed(n) {
                    w.grant()
                } else {
                    0
                }
            }
            other => panic!("unknown op {other}"),
        };
        out.push(json!([op, n, result]));
    }
    json!({"window": window, "ops": out})
}

fn window() -> Value {
    let cases = vec![
        // Consumed credit is batched up to half a window.
        window_case(
            100,
            &[
                ("deliver", 30),
                ("consume", 30),
                ("deliver", 30),
                ("consume", 30),
                ("deliver", 30),
                ("consume", 30),
            ],
        ),
        // Chunks flow while nothing waits, are held while an item waits.
        window_case(
            100,
            &[
                ("chunk", 60),
                ("deliver", 10),
                ("chunk", 20),
                ("deliver", 5),
                ("consume", 10),
                ("consume", 25),
            ],
        ),
        // The last waiting item releases what was held for the next one.
        window_case(100, &[("deliver", 10), ("chunk", 40), ("consume", 10)]),
        // Tiny and odd windows: the threshold is at least one byte.
        window_case(1, &[("deliver", 1), ("consume", 1)]),
        window_case(
            7,
            &[("deliver", 2), ("consume", 2), ("chunk", 1), ("chunk", 3)],
        ),
        // The default window with 1 MiB chunks (a big item flowing).
        window_case(
            4 << 20,
            &[
                ("chunk", 1 << 20),
                ("chunk", 1 << 20),
                ("chunk", 1 << 20),
                ("deliver", 1 << 20),
                ("consume", 1 << 20),
            ],
        ),
    ];
    json!({
        "grant_divisor": GRANT_DIVISOR,
        "eager_divisor": EAGER_DIVISOR,
        "cases": cases,
    })
}

fn generated() -> String {
    let doc = json!({
        "about": "Generated by core/tests/channel_policy.rs (EXECNET_BLESS=1 cargo test -p execnet-core --test channel_policy); checked by it and by bootstrap/tests/test_channel_policy.py. Do not edit.",
        "lifecycle": lifecycle(),
        "window": window(),
    });
    let mut text = serde_json::to_string_pretty(&doc).expect("serializable");
    text.push('\n');
    text
}

#[test]
fn the_golden_file_matches_the_core() {
    let text = generated();
    if std::env::var_os("EXECNET_BLESS").is_some() {
        std::fs::write(PATH, &text).expect("write the golden file");
        return;
    }
    let committed = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(
        committed == text,
        "{PATH} differs from the core's lifecycle table or window policy.\n\
         If the change is intended: EXECNET_BLESS=1 cargo test -p execnet-core --test \
         channel_policy, then make bootstrap/worker.py agree \
         (python3 -m unittest discover -s bootstrap/tests -p test_channel_policy.py)"
    );
}

#[test]
fn the_table_covers_every_state_and_event() {
    let doc: Value = serde_json::from_str(&generated()).expect("json");
    let table = doc["lifecycle"]["table"].as_object().expect("table");
    assert_eq!(table.len(), 15);
    for row in table.values() {
        assert_eq!(row.as_object().expect("row").len(), 8);
    }
    // A new channel can do everything but transmit an end it has not queued.
    let open = &table["open/open"];
    assert_eq!(open["send"], "open/open");
    assert_eq!(open["recv_close"], "close_queued/closed");
    assert_eq!(open["close_transmitted"], "refused");
    assert_eq!(table["close_sent/closed"]["recv_data"], "violation");
}
