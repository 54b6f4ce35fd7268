//! Rough in-memory throughput of two wired sessions (no I/O): small items
//! per second and bulk MiB per second, to see the core's own ceiling.
//!
//! ```text
//! cargo run --release -p execnet-core --example pair_throughput
//! ```

use std::time::Instant;

use execnet_core::{Config, Event, Session, Value, WorkerInfo};

fn pump(host: &mut Session, worker: &mut Session, wire: &mut Vec<u8>, back: &mut Vec<u8>) -> u64 {
    let mut got = 0;
    wire.clear();
    while host.poll_transmit(wire, 256 * 1024) > 0 {}
    worker.handle_input(wire).unwrap();
    while let Some(e) = worker.poll_event() {
        if let Event::Readable { channel } = e {
            let mut ch = worker.channel(channel).unwrap();
            while ch.recv().is_some() {
                got += 1;
            }
        }
    }
    back.clear();
    while worker.poll_transmit(back, 256 * 1024) > 0 {}
    host.handle_input(back).unwrap();
    while host.poll_event().is_some() {}
    got
}

fn run(item: &Value, total_items: u64) -> f64 {
    let mut host = Session::new_host(Config::default(), Value::Dict(vec![]));
    let mut worker = Session::new_worker(Config::default(), WorkerInfo::default());
    let (mut wire, mut back) = (Vec::new(), Vec::new());
    pump(&mut host, &mut worker, &mut wire, &mut back);
    let ch = host.open_channel().unwrap();
    let start = Instant::now();
    let (mut sent, mut received) = (0, 0);
    while received < total_items {
        while sent < total_items {
            match host.channel(ch).unwrap().send(item) {
                Ok(()) => sent += 1,
                Err(_) => break,
            }
        }
        received += pump(&mut host, &mut worker, &mut wire, &mut back);
        if std::env::var_os("DEBUG_PT").is_some() {
            eprintln!(
                "sent {sent} received {received} wire {} back {}",
                wire.len(),
                back.len()
            );
        }
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let secs = run(&Value::Int(12345), n);
    println!("small items: {:.0} items/s", n as f64 / secs);
    let blob = Value::Bytes(vec![7u8; 1 << 20]);
    let n = 2000;
    let secs = run(&blob, n);
    println!("bulk 1 MiB items: {:.0} MiB/s", n as f64 / secs);
}
