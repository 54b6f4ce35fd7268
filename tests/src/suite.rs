//! The channel/gateway behaviour every transport must show, written once
//! and run over each of them (`tests/tests/{ssh,socket,via}.rs` call
//! [`run`] with a gateway of their kind): echo, remote tracebacks, end of
//! channel, channels inside values both ways, callbacks with endmarkers,
//! makefile readers and writers, remote status, a big item both ways,
//! many channels at once. Each check panics with what went wrong.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use execnet::blocking::{Channel, Gateway};
use execnet::{Error, Value};

const T: Duration = Duration::from_secs(20);

/// Runs every check on `gw` (which stays usable afterwards).
pub fn run(gw: &Gateway) {
    echo(gw);
    traceback(gw);
    end_of_channel(gw);
    channels_in_values(gw);
    callbacks(gw);
    makefile(gw);
    status(gw);
    big_item(gw);
    many_channels(gw);
}

/// Items go there and back unchanged.
pub fn echo(gw: &Gateway) {
    let ch = gw
        .remote_exec("for x in channel:\n    channel.send(x)")
        .unwrap();
    for i in 0..20i64 {
        ch.send(&i).unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), i);
    }
    ch.send(&("x", vec![1.5f64], Value::Bytes(b"\0\xff".to_vec())))
        .unwrap();
    let back: (String, Vec<f64>, Value) = ch.receive().unwrap();
    assert_eq!(
        back,
        ("x".into(), vec![1.5], Value::Bytes(b"\0\xff".to_vec()))
    );
    ch.close().unwrap();
    ch.waitclose(Some(T)).unwrap();
}

/// A remote exception arrives as its traceback, once.
pub fn traceback(gw: &Gateway) {
    let ch = gw
        .remote_exec("def foo():\n  return foobar()\nfoo()\n")
        .unwrap();
    match ch.receive::<Value>() {
        Err(Error::Remote(e)) => {
            assert_eq!(e.exception_type(), Some("NameError"), "{e}");
            assert!(e.formatted().contains("foobar"), "{e}");
        }
        other => panic!("expected a remote NameError, got {other:?}"),
    }
}

/// Items first, then end of channel, repeatedly.
pub fn end_of_channel(gw: &Gateway) {
    let ch = gw.remote_exec("channel.send(1); channel.send(2)").unwrap();
    assert_eq!(ch.receive::<i64>().unwrap(), 1);
    assert_eq!(ch.receive::<i64>().unwrap(), 2);
    assert!(matches!(ch.receive::<Value>(), Err(Error::EndOfChannel)));
    assert!(matches!(ch.receive::<Value>(), Err(Error::EndOfChannel)));
    ch.waitclose(Some(T)).unwrap();
}

/// Channels travel inside values, both ways.
pub fn channels_in_values(gw: &Gateway) {
    let ch = gw
        .remote_exec(
            r#"
            c1, c2 = channel.receive()
            c1.send(c1.receive() + 1)
            new = channel.gateway.newchannel()
            channel.send(new)
            new.send("from a new channel")
            c2.send(c2.receive() * 2)
            "#,
        )
        .unwrap();
    let (c1, c2) = (gw.newchannel().unwrap(), gw.newchannel().unwrap());
    ch.send(&(&c1, &c2)).unwrap();
    c1.send(&41).unwrap();
    assert_eq!(c1.receive::<i64>().unwrap(), 42);
    let new: Channel = ch.receive().unwrap();
    assert_eq!(new.receive::<String>().unwrap(), "from a new channel");
    c2.send(&21).unwrap();
    assert_eq!(c2.receive::<i64>().unwrap(), 42);
    ch.waitclose(Some(T)).unwrap();
}

/// A callback gets every item, then the endmarker.
pub fn callbacks(gw: &Gateway) {
    let ch = gw
        .remote_exec("for i in range(5):\n    channel.send(i)")
        .unwrap();
    let (tx, rx) = mpsc::channel();
    ch.set_callback(
        move |v| {
            let _ = tx.send(v);
        },
        Some(Value::str("end")),
    )
    .unwrap();
    let mut got = Vec::new();
    loop {
        let v = rx.recv_timeout(T).expect("callback item");
        if v == Value::str("end") {
            break;
        }
        got.push(v);
    }
    assert_eq!(got, (0..5).map(Value::Int).collect::<Vec<_>>());
}

/// `makefile`: bytes written by the host are read remotely and back.
pub fn makefile(gw: &Gateway) {
    let ch = gw
        .remote_exec(
            r#"
            data = b""
            for item in channel:
                if item == b"":
                    break
                data += item
            channel.send(data.upper())
            "#,
        )
        .unwrap();
    let mut w = ch.makefile_writer();
    w.write_all(b"hello ").unwrap();
    write!(w, "world").unwrap();
    ch.send_value(&Value::Bytes(Vec::new())).unwrap();
    let mut r = ch.makefile_reader();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert_eq!(out, b"HELLO WORLD");
}

/// The worker answers a status request.
pub fn status(gw: &Gateway) {
    let ch = gw
        .remote_exec("channel.send('running'); channel.receive()")
        .unwrap();
    assert_eq!(ch.receive::<String>().unwrap(), "running");
    let s = gw.remote_status().unwrap();
    assert!(s.numexecuting >= 1, "{s:?}");
    assert!(s.numchannels >= 1, "{s:?}");
    ch.send(&0).unwrap();
    ch.waitclose(Some(T)).unwrap();
}

/// A 4 MiB item goes there and back intact.
pub fn big_item(gw: &Gateway) {
    let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let ch = gw
        .remote_exec("x = channel.receive(); channel.send(x[::-1])")
        .unwrap();
    ch.send_value(&Value::Bytes(data.clone())).unwrap();
    match ch.receive_value(Some(T)).unwrap() {
        Value::Bytes(b) => {
            assert_eq!(b.len(), data.len());
            assert!(b.iter().rev().eq(data.iter()), "big item corrupted");
        }
        other => panic!("expected bytes, got {}", other.type_name()),
    }
    ch.waitclose(Some(T)).unwrap();
}

/// 100 channels, each with its own exec, interleaved.
pub fn many_channels(gw: &Gateway) {
    let chans: Vec<Channel> = (0..100)
        .map(|_| {
            gw.remote_exec("channel.send(channel.receive() * 3)")
                .unwrap()
        })
        .collect();
    for (i, ch) in chans.iter().enumerate() {
        ch.send(&(i as i64)).unwrap();
    }
    for (i, ch) in chans.iter().enumerate().rev() {
        assert_eq!(ch.receive::<i64>().unwrap(), 3 * i as i64);
    }
    for ch in &chans {
        ch.waitclose(Some(T)).unwrap();
    }
}
