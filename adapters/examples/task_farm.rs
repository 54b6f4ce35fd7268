//! A task farm: several gateways pull numbers from a shared queue and send
//! back results; the host collects them with a callback per channel.
//!
//! `cargo run --example task_farm [N_GATEWAYS]`

use std::sync::mpsc;

use execnet::blocking::Group;
use execnet::Value;

const WORKER: &str = r#"
import os
channel.send(("ready", os.getpid()))
for task in channel:
    channel.send(("result", task, sum(i * i for i in range(task))))
"#;

fn main() -> Result<(), execnet::Error> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let group = Group::new();
    let (tx, rx) = mpsc::channel::<(usize, Value)>();
    let mut channels = Vec::new();
    for i in 0..n {
        let gw = group.makegateway("popen")?;
        let ch = gw.remote_exec(WORKER)?;
        let tx = tx.clone();
        ch.set_callback(move |v| drop(tx.send((i, v))), Some(Value::str("done")))?;
        channels.push(ch);
    }
    drop(tx);
    let tasks: Vec<i64> = (0..40).map(|t| 10_000 + t * 1_000).collect();
    let mut next = 0;
    let mut results = 0;
    while results < tasks.len() {
        let (worker, msg) = rx.recv().expect("workers ended early");
        match msg {
            Value::Tuple(items) if items.first() == Some(&Value::str("ready")) => {}
            Value::Tuple(items) if items.first() == Some(&Value::str("result")) => {
                results += 1;
                println!("gw{worker}: task {:?} -> {:?}", items[1], items[2]);
            }
            other => println!("gw{worker}: {other:?}"),
        }
        // Keep every worker busy: one new task per message received.
        if next < tasks.len() {
            channels[worker].send(&tasks[next])?;
            next += 1;
        }
    }
    for ch in &channels {
        ch.close()?;
    }
    group.terminate(None);
    println!("{results} results from {n} gateways");
    Ok(())
}
