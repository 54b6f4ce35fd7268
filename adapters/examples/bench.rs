//! Quick numbers for one popen gateway: start-up, ping-pong, small items/s,
//! bulk MiB/s each way. (The side-by-side comparison with Python's execnet
//! is a separate bench command.)
//!
//! `cargo run --release --example bench [SPEC]`

use std::time::{Duration, Instant};

use execnet::blocking::makegateway;
use execnet::Value;

fn main() -> Result<(), execnet::Error> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "popen".into());
    // The first start resolves the default interpreter; time the second.
    makegateway(&spec)?.exit()?;
    let t0 = Instant::now();
    let gw = makegateway(&spec)?;
    let ch = gw.remote_exec("channel.send(1)")?;
    ch.receive::<i64>()?;
    println!("start to first round trip: {:?}", t0.elapsed());

    let echo = gw.remote_exec("for x in channel:\n    channel.send(x)\n")?;
    for i in 0..200i64 {
        echo.send(&i)?;
        echo.receive::<i64>()?;
    }
    let n = 5000;
    let t = Instant::now();
    for i in 0..n {
        echo.send(&i)?;
        echo.receive::<i64>()?;
    }
    println!("ping-pong: {:?} per round trip", t.elapsed() / n as u32);

    let sink = gw.remote_exec(
        "n = 0\nfor x in channel:\n    if x is None:\n        break\n    n += 1\nchannel.send(n)\n",
    )?;
    let m = 200_000i64;
    let t = Instant::now();
    for i in 0..m {
        sink.send(&i)?;
    }
    sink.send(&())?;
    let got: i64 = sink.receive()?;
    assert_eq!(got, m);
    println!(
        "small items host->worker: {:.0}/s",
        m as f64 / t.elapsed().as_secs_f64()
    );

    let src = gw.remote_exec("for i in range(200000):\n    channel.send(i)\n")?;
    let t = Instant::now();
    let mut k = 0;
    while src.receive_value(None).is_ok() {
        k += 1;
    }
    println!(
        "small items worker->host: {:.0}/s ({k})",
        k as f64 / t.elapsed().as_secs_f64()
    );

    let mib = 64usize;
    let bulk = gw.remote_exec(
        "import time\nx = channel.receive()\nchannel.send(len(x))\nchannel.send(b'y' * len(x))\n",
    )?;
    let data = Value::Bytes(vec![b'x'; mib << 20]);
    let t = Instant::now();
    bulk.send_value(&data)?;
    let n: u64 = bulk.receive()?;
    let up = t.elapsed();
    let t = Instant::now();
    let back = bulk.receive_value(Some(Duration::from_secs(60)))?;
    let down = t.elapsed();
    assert_eq!(n as usize, mib << 20);
    assert!(matches!(back, Value::Bytes(b) if b.len() == mib << 20));
    println!(
        "bulk {mib} MiB item: host->worker {:.0} MiB/s, worker->host {:.0} MiB/s",
        mib as f64 / up.as_secs_f64(),
        mib as f64 / down.as_secs_f64()
    );
    let t = Instant::now();
    let chans: Vec<_> = (0..1000)
        .map(|_| gw.remote_exec("channel.send(1)"))
        .collect::<Result<_, _>>()?;
    for c in &chans {
        c.receive::<i64>()?;
    }
    println!("1,000 channels (exec + one item each): {:?}", t.elapsed());
    drop(chans);
    gw.exit()
}
