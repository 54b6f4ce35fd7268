//! Session behaviour on a wired [`Pair`]: violations, lifecycle, flow
//! control, local errors.

use std::time::{Duration, Instant};

use execnet_core::frame::{write_frame, FrameKind};
use execnet_core::fuzzing::{sample_worker_info, Chunking, Pair};
use execnet_core::{
    ChannelEnd, ChannelId, ChannelRef, Config, Event, ExecRequest, LocalError, ProtocolError, Role,
    Session, TerminateReason, Value, ValueError,
};

fn frame(kind: FrameKind, channel: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, kind, channel, payload);
    out
}

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    execnet_core::encode(v, &mut out).unwrap();
    out
}

fn small() -> Config {
    Config {
        max_frame: 1024,
        window: 4096,
        ..Config::default()
    }
}

fn connected(config: Config) -> Pair {
    let mut p = Pair::new(config);
    p.connect();
    p
}

/// Takes every received item waiting on `id`.
fn take_all(s: &mut Session, id: ChannelId) -> Vec<Value> {
    std::iter::from_fn(|| s.channel(id).and_then(|mut ch| ch.recv())).collect()
}

fn drain(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn out(s: &mut Session) -> Vec<u8> {
    let mut buf = Vec::new();
    while s.poll_transmit(&mut buf, usize::MAX) > 0 {}
    buf
}

/// A worker that has received the host HELLO (and whose HELLO was drained).
fn worker() -> Session {
    let mut p = Pair::new(small());
    p.transmit();
    let hello = std::mem::take(&mut p.to_worker);
    let mut w = Session::new_worker(small(), sample_worker_info());
    w.handle_input(&hello).unwrap();
    drain(&mut w);
    out(&mut w);
    w
}

/// A host that has received the worker HELLO.
fn host() -> Session {
    let mut p = Pair::new(small());
    p.transmit();
    p.deliver(Role::Worker, usize::MAX);
    p.transmit();
    let hello = std::mem::take(&mut p.to_host);
    let mut h = Session::new_host(small(), Value::Dict(vec![]));
    out(&mut h);
    h.handle_input(&hello).unwrap();
    drain(&mut h);
    h
}

/// Feeds `bytes`, expects `error`, and checks the violation is sticky, ends
/// every channel once with it, ends the session, and is reported by a
/// TERMINATE with its text.
fn violation(mut s: Session, bytes: &[u8], error: ProtocolError) {
    let open = s.open_channel().unwrap();
    assert_eq!(s.handle_input(bytes), Err(error.clone()));
    assert_eq!(s.handle_input(b"more"), Err(error.clone()), "sticky");
    assert_eq!(s.error(), Some(&error));
    assert!(s.is_terminated());
    let events = drain(&mut s);
    assert!(events.contains(&Event::ChannelEnded {
        channel: open,
        how: ChannelEnd::ConnectionLost(error.clone())
    }));
    assert_eq!(
        events.last(),
        Some(&Event::Terminated {
            reason: TerminateReason::ConnectionLost(error.clone())
        })
    );
    let mut expected = Vec::new();
    write_frame(
        &mut expected,
        FrameKind::Terminate,
        0,
        &cbor(&Value::str(error.to_string())),
    );
    assert!(
        out(&mut s).ends_with(&expected),
        "TERMINATE with the reason"
    );
    assert_eq!(s.open_channel(), Err(LocalError::Terminated));
    assert!(s.channel(open).is_none());
}

// ---- violations ----

#[test]
fn oversized_header_is_refused_before_the_payload() {
    let mut head = frame(FrameKind::Data, 2, &[]);
    head[5..9].copy_from_slice(&2_000_000u32.to_be_bytes());
    violation(
        host(),
        &head,
        ProtocolError::FrameTooLarge {
            length: 2_000_000,
            max: 1024,
        },
    );
}

#[test]
fn unknown_kind() {
    violation(
        host(),
        &[0x0c, 0, 0, 0, 0, 0, 0, 0, 0],
        ProtocolError::UnknownKind(0x0c),
    );
    violation(
        worker(),
        &[0x00, 0, 0, 0, 0, 0, 0, 0, 0],
        ProtocolError::UnknownKind(0),
    );
}

#[test]
fn bad_payloads() {
    let bad = |s: Session, f: Vec<u8>| {
        let mut s = s;
        let e = s.handle_input(&f).unwrap_err();
        assert!(matches!(e, ProtocolError::BadPayload { .. }), "{e:?}");
    };
    bad(host(), frame(FrameKind::Window, 2, &cbor(&Value::str("x"))));
    bad(host(), frame(FrameKind::Window, 2, &[]));
    bad(host(), frame(FrameKind::Close, 2, &cbor(&Value::Int(1))));
    bad(host(), frame(FrameKind::Terminate, 0, &[0xff]));
    bad(host(), frame(FrameKind::LastMessage, 2, &[0xf6]));
    bad(host(), frame(FrameKind::DataMore, 2, &[]));
    bad(
        host(),
        frame(
            FrameKind::Output,
            0,
            &cbor(&Value::List(vec![Value::Int(3), Value::Bytes(vec![])])),
        ),
    );
    bad(
        worker(),
        frame(FrameKind::Exec, 1, &cbor(&Value::Dict(vec![]))),
    );
    bad(
        worker(),
        frame(FrameKind::StatusRequest, 0, &cbor(&Value::Int(-1))),
    );
    // a HELLO without a version
    let mut w = Session::new_worker(small(), sample_worker_info());
    let e = w
        .handle_input(&frame(FrameKind::Hello, 0, &cbor(&Value::Dict(vec![]))))
        .unwrap_err();
    assert!(matches!(e, ProtocolError::BadPayload { kind: "HELLO", .. }));
}

#[test]
fn unknown_own_parity_channel() {
    // the worker names odd channel 5 the host never allocated
    violation(
        host(),
        &frame(FrameKind::Data, 5, &[0xf6]),
        ProtocolError::UnknownChannel(5),
    );
    violation(
        worker(),
        &frame(FrameKind::Close, 4, &[]),
        ProtocolError::UnknownChannel(4),
    );
    // a channel reference to an unallocated channel of the receiver's parity
    violation(
        host(),
        &frame(
            FrameKind::Data,
            2,
            &cbor(&Value::Channel(ChannelRef(ChannelId(99)))),
        ),
        ProtocolError::UnknownChannel(99),
    );
}

#[test]
fn wrong_direction_and_wrong_channel() {
    violation(
        host(),
        &frame(FrameKind::Exec, 2, &[]),
        ProtocolError::WrongDirection { kind: "EXEC" },
    );
    violation(
        host(),
        &frame(FrameKind::StatusRequest, 0, &[1]),
        ProtocolError::WrongDirection {
            kind: "STATUS_REQUEST",
        },
    );
    violation(
        worker(),
        &frame(FrameKind::Output, 0, &[]),
        ProtocolError::WrongDirection { kind: "OUTPUT" },
    );
    violation(
        worker(),
        &frame(FrameKind::StatusReply, 0, &[]),
        ProtocolError::WrongDirection {
            kind: "STATUS_REPLY",
        },
    );
    violation(
        host(),
        &frame(FrameKind::Data, 0, &[0xf6]),
        ProtocolError::WrongChannel {
            kind: "DATA",
            channel: 0,
        },
    );
    violation(
        host(),
        &frame(FrameKind::Terminate, 2, &[]),
        ProtocolError::WrongChannel {
            kind: "TERMINATE",
            channel: 2,
        },
    );
}

#[test]
fn frames_before_hello_and_second_hello() {
    let mut h = Session::new_host(small(), Value::Dict(vec![]));
    assert_eq!(
        h.handle_input(&frame(FrameKind::Data, 2, &[0xf6])),
        Err(ProtocolError::UnexpectedFrame {
            kind: "DATA",
            reason: "before HELLO"
        })
    );
    let mut w = Session::new_worker(small(), sample_worker_info());
    assert_eq!(w.open_channel(), Err(LocalError::NotReady));
    assert!(w.handle_input(&frame(FrameKind::Exec, 1, &[])).is_err());
    let mut w = worker();
    let mut p = Pair::new(small());
    p.transmit();
    assert_eq!(
        w.handle_input(&p.to_worker),
        Err(ProtocolError::UnexpectedFrame {
            kind: "HELLO",
            reason: "second HELLO"
        })
    );
}

#[test]
fn frames_after_terminate() {
    let mut w = worker();
    let mut bytes = frame(FrameKind::Terminate, 0, &[]);
    bytes.extend(frame(FrameKind::Data, 1, &[0xf6]));
    assert_eq!(
        w.handle_input(&bytes),
        Err(ProtocolError::UnexpectedFrame {
            kind: "DATA",
            reason: "after the peer's TERMINATE"
        })
    );
    // a host is over once the worker's TERMINATE arrived
    let mut h = host();
    h.handle_input(&frame(FrameKind::Terminate, 0, &[]))
        .unwrap();
    assert!(h.is_terminated());
    assert_eq!(
        h.handle_input(&frame(FrameKind::Close, 2, &[])),
        Err(ProtocolError::AfterEnd)
    );
}

#[test]
fn version_mismatch() {
    let hello = Value::Dict(vec![
        (Value::str("version"), Value::Int(2)),
        (Value::str("window"), Value::Int(100)),
        (Value::str("max_frame"), Value::Int(100)),
        (Value::str("max_item"), Value::Int(100)),
    ]);
    let mut w = Session::new_worker(small(), sample_worker_info());
    let e = w
        .handle_input(&frame(FrameKind::Hello, 0, &cbor(&hello)))
        .unwrap_err();
    assert_eq!(e, ProtocolError::VersionMismatch { ours: 1, theirs: 2 });
    assert_eq!(e.to_string(), "version mismatch: ours 1, theirs 2");
    let mut h = Session::new_host(small(), Value::Dict(vec![]));
    let e = h
        .handle_input(&frame(FrameKind::Hello, 0, &cbor(&hello)))
        .unwrap_err();
    assert_eq!(e, ProtocolError::VersionMismatch { ours: 1, theirs: 2 });
}

#[test]
fn credit_exceeded() {
    // window 4096: a 3000-byte chunk fits, a second one does not
    let mut h = host();
    h.handle_input(&frame(FrameKind::DataMore, 2, &[0u8; 1000]))
        .unwrap();
    h.handle_input(&frame(FrameKind::DataMore, 2, &[0u8; 1000]))
        .unwrap();
    // DATA_MORE credit comes back at once (2000 >= window/2): WINDOW owed
    let _ = out(&mut h);
    let mut h = host();
    let mut bytes = Vec::new();
    for _ in 0..4 {
        bytes.extend(frame(FrameKind::Data, 2, &{
            let mut item = vec![0x59, 0x03, 0xf7]; // bytes of length 1015
            item.resize(1018, 0);
            item
        }));
    }
    h.handle_input(&bytes).unwrap(); // 4072 bytes, unconsumed
    let e = h
        .handle_input(&frame(
            FrameKind::Data,
            2,
            &[
                0x58, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ))
        .unwrap_err();
    assert_eq!(
        e,
        ProtocolError::CreditExceeded {
            channel: 2,
            length: 34,
            credit: 24
        }
    );
}

#[test]
fn item_over_max_item() {
    let config = Config {
        max_item: 1500,
        ..small()
    };
    let mut p = connected(config);
    let mut bytes = frame(FrameKind::DataMore, 2, &[0x59; 1000]);
    bytes.extend(frame(FrameKind::DataMore, 2, &[0; 501]));
    assert_eq!(
        p.host.handle_input(&bytes),
        Err(ProtocolError::ItemTooLarge {
            channel: 2,
            size: 1501,
            max: 1500
        })
    );
    // and the sender refuses it locally, leaving the channel usable
    let id = p.worker.open_channel().unwrap();
    let mut ch = p.worker.channel(id).unwrap();
    assert_eq!(
        ch.send(&Value::Bytes(vec![0; 1500])),
        Err(LocalError::ItemTooLarge {
            size: 1503,
            max: 1500
        })
    );
    assert!(ch.can_send());
    ch.send(&Value::Int(1)).unwrap();
}

#[test]
fn bad_items_indefinite_and_depth_bomb() {
    let mut h = host();
    assert_eq!(
        h.handle_input(&frame(FrameKind::Data, 2, &[0x9f, 0xff])),
        Err(ProtocolError::BadItem {
            channel: 2,
            error: ValueError::Indefinite
        })
    );
    let mut h = host();
    assert_eq!(
        h.handle_input(&frame(FrameKind::Data, 2, &[0x81; 1000])),
        Err(ProtocolError::BadItem {
            channel: 2,
            error: ValueError::TooDeep { max: 200 }
        })
    );
    let mut h = host();
    assert!(matches!(
        h.handle_input(&frame(FrameKind::Data, 2, &[0xf6, 0xf6])),
        Err(ProtocolError::BadItem {
            error: ValueError::TrailingBytes(1),
            ..
        })
    ));
}

#[test]
fn eof_clean_lost_and_truncated() {
    // lost: end of stream between frames without TERMINATE
    let mut p = connected(small());
    let id = p.host.open_channel().unwrap();
    p.host.handle_eof();
    let ev = drain(&mut p.host);
    assert_eq!(
        ev,
        vec![
            Event::ChannelEnded {
                channel: id,
                how: ChannelEnd::ConnectionLost(ProtocolError::ConnectionLost)
            },
            Event::Terminated {
                reason: TerminateReason::ConnectionLost(ProtocolError::ConnectionLost)
            }
        ]
    );
    // truncated: end of stream inside a frame
    let mut h = host();
    h.handle_input(&frame(FrameKind::Data, 2, b"abc")[..7])
        .unwrap();
    h.handle_eof();
    assert_eq!(h.error(), Some(&ProtocolError::Truncated { buffered: 7 }));
    // clean: after the peer's TERMINATE, end of stream is normal
    let mut p = connected(small());
    p.worker
        .terminate(Some("bye"), Instant::now(), Duration::from_secs(1));
    p.pump();
    p.host.handle_eof();
    assert_eq!(p.host.error(), None);
    assert!(p.host_events.contains(&Event::Terminated {
        reason: TerminateReason::PeerInitiated(Some("bye".into()))
    }));
    // and a worker told to terminate may see EOF before answering
    let mut w = worker();
    w.handle_input(&frame(FrameKind::Terminate, 0, &[]))
        .unwrap();
    w.handle_eof();
    assert_eq!(w.error(), None);
    w.terminate(None, Instant::now(), Duration::from_secs(1));
    let _ = out(&mut w);
    assert!(w.is_terminated());
}

// ---- lifecycle ----

#[test]
fn close_delivers_queued_items_first_and_forgets() {
    for chunking in [Chunking::Whole, Chunking::Fixed(1), Chunking::Fixed(7)] {
        let mut p = Pair::with_chunking(small(), chunking);
        p.connect();
        let id = p.host.open_channel().unwrap();
        let mut ch = p.host.channel(id).unwrap();
        for i in 0..10 {
            ch.send(&Value::Int(i)).unwrap();
        }
        ch.close().unwrap();
        assert_eq!(ch.send(&Value::Int(1)), Err(LocalError::Closed));
        assert_eq!(ch.close(), Err(LocalError::Closed));
        assert!(ch.is_ended());
        p.pump();
        let values: Vec<Value> = take_all(&mut p.worker, id);
        assert_eq!(values, (0..10).map(Value::Int).collect::<Vec<_>>());
        assert_eq!(p.worker_events[0], Event::Readable { channel: id });
        assert_eq!(
            p.worker_events.last(),
            Some(&Event::ChannelEnded {
                channel: id,
                how: ChannelEnd::Closed
            })
        );
        assert_eq!(
            p.host_events,
            vec![Event::ChannelEnded {
                channel: id,
                how: ChannelEnd::ClosedLocally
            }]
        );
        assert!(p.host.channel(id).is_none(), "forgotten after both CLOSEs");
        assert!(p.worker.channel(id).is_none());
    }
}

#[test]
fn close_with_error_is_delivered_once_after_queued_items_even_when_blocked() {
    let mut p = connected(Config {
        window: 64,
        max_frame: 64,
        ..Config::default()
    });
    let id = p.worker.open_channel().unwrap();
    for i in 0..4u8 {
        // 32 encoded bytes each: two fill the window
        p.worker
            .channel(id)
            .unwrap()
            .send(&Value::Bytes(vec![i; 30]))
            .unwrap();
        p.transmit();
    }
    p.worker
        .channel(id)
        .unwrap()
        .close_with_error("boom")
        .unwrap();
    p.pump(); // the host does not consume: the rest waits for credit
    assert_eq!(p.host_events, vec![Event::Readable { channel: id }]);
    assert_eq!(p.host.channel(id).unwrap().received(), 2);
    let mut order = Vec::new();
    for _ in 0..100 {
        // Items first: the end comes after the items it follows.
        for value in take_all(&mut p.host, id) {
            if let Value::Bytes(b) = value {
                order.push(format!("item {}", b[0]));
            }
        }
        for e in std::mem::take(&mut p.host_events) {
            if !matches!(e, Event::Readable { .. }) {
                order.push(format!("{e:?}"));
            }
        }
        p.pump();
    }
    let mut expected: Vec<String> = (0..4).map(|i| format!("item {i}")).collect();
    expected.push(format!(
        "{:?}",
        Event::ChannelEnded {
            channel: id,
            how: ChannelEnd::RemoteError("boom".into())
        }
    ));
    assert_eq!(order, expected);
}

#[test]
fn half_close_lets_the_peer_still_send() {
    let mut p = connected(small());
    let id = p.host.open_channel().unwrap();
    p.host.channel(id).unwrap().send(&Value::Int(1)).unwrap();
    p.host.channel(id).unwrap().half_close().unwrap();
    assert_eq!(
        p.host.channel(id).unwrap().send(&Value::Int(2)),
        Err(LocalError::Closed)
    );
    p.pump();
    assert_eq!(p.worker_events[0], Event::Readable { channel: id });
    assert_eq!(take_all(&mut p.worker, id), vec![Value::Int(1)]);
    assert_eq!(
        p.worker_events[1],
        Event::ChannelEnded {
            channel: id,
            how: ChannelEnd::Closed
        }
    );
    // the worker still sends to the half-closed host side
    p.worker.channel(id).unwrap().send(&Value::Int(3)).unwrap();
    p.pump();
    assert_eq!(p.host_events, vec![Event::Readable { channel: id }]);
    assert_eq!(take_all(&mut p.host, id), vec![Value::Int(3)]);
    p.worker.channel(id).unwrap().close().unwrap();
    p.pump();
    assert_eq!(
        p.host_events.last(),
        Some(&Event::ChannelEnded {
            channel: id,
            how: ChannelEnd::Closed
        })
    );
    assert!(p.host.channel(id).is_none() && p.worker.channel(id).is_none());
    assert_eq!(p.host_error, None);
    assert_eq!(p.worker_error, None);
}

#[test]
fn crossing_closes() {
    let mut p = connected(small());
    let id = p.host.open_channel().unwrap();
    p.host.channel(id).unwrap().send(&Value::Int(1)).unwrap();
    p.pump();
    p.worker_events.clear();
    p.host.channel(id).unwrap().send(&Value::Int(2)).unwrap();
    p.worker.channel(id).unwrap().send(&Value::Int(3)).unwrap();
    p.host.channel(id).unwrap().close().unwrap();
    p.worker.channel(id).unwrap().close_with_error("x").unwrap();
    p.pump();
    assert_eq!(p.host_error, None);
    assert_eq!(p.worker_error, None);
    // each side: ended locally, and the crossing items are dropped
    assert_eq!(
        p.host_events,
        vec![Event::ChannelEnded {
            channel: id,
            how: ChannelEnd::ClosedLocally
        }]
    );
    assert_eq!(
        p.worker_events,
        vec![Event::ChannelEnded {
            channel: id,
            how: ChannelEnd::ClosedLocally
        }]
    );
    // The item taken before the closes still waits, the crossing ones were
    // dropped; once taken, both sides have forgotten the channel.
    assert_eq!(take_all(&mut p.host, id), vec![]);
    assert_eq!(take_all(&mut p.worker, id), vec![Value::Int(1)]);
    assert!(p.host.channel(id).is_none() && p.worker.channel(id).is_none());
}

#[test]
fn peer_close_drops_unsent_items_and_fails_sends() {
    let mut p = connected(Config {
        window: 64,
        max_frame: 64,
        ..Config::default()
    });
    let id = p.host.open_channel().unwrap();
    p.host.channel(id).unwrap().send(&Value::Int(0)).unwrap();
    p.pump();
    p.host
        .channel(id)
        .unwrap()
        .send(&Value::Bytes(vec![0; 500]))
        .unwrap();
    p.worker.channel(id).unwrap().close().unwrap();
    p.transmit();
    p.deliver(Role::Host, usize::MAX);
    assert_eq!(
        p.host_events,
        vec![Event::ChannelEnded {
            channel: id,
            how: ChannelEnd::Closed
        }]
    );
    assert_eq!(
        p.host.channel(id).unwrap().send(&Value::Int(1)),
        Err(LocalError::Closed)
    );
    p.pump();
    // The worker's first item waits (a forgotten channel keeps it until
    // taken); the host's unsent one was dropped.
    assert_eq!(take_all(&mut p.worker, id), vec![Value::Int(0)]);
    assert!(p.host.channel(id).is_none() && p.worker.channel(id).is_none());
    assert_eq!(p.host_error, None);
    assert_eq!(p.worker_error, None);
}

#[test]
fn terminate_host_initiated() {
    let mut p = connected(small());
    let exec = p
        .host
        .exec(ExecRequest {
            source: "x".into(),
            call: None,
        })
        .unwrap();
    let other = p.host.open_channel().unwrap();
    p.pump();
    let now = Instant::now();
    p.host.terminate(Some("stop"), now, Duration::from_secs(5));
    assert_eq!(p.host.poll_timeout(), Some(now + Duration::from_secs(5)));
    assert_eq!(p.host.open_channel(), Err(LocalError::Terminated));
    p.pump();
    assert!(p.worker_events.contains(&Event::TerminateRequested {
        reason: Some("stop".into())
    }));
    // the worker interrupts its exec, then answers
    p.worker
        .channel(exec)
        .unwrap()
        .close_with_error("KeyboardInterrupt")
        .unwrap();
    p.worker.terminate(None, now, Duration::from_secs(5));
    p.pump();
    assert!(p.host_events.contains(&Event::ChannelEnded {
        channel: exec,
        how: ChannelEnd::RemoteError("KeyboardInterrupt".into())
    }));
    assert!(p.host_events.contains(&Event::ChannelEnded {
        channel: other,
        how: ChannelEnd::Terminated
    }));
    assert_eq!(
        p.host_events.last(),
        Some(&Event::Terminated {
            reason: TerminateReason::Clean
        })
    );
    assert_eq!(
        p.worker_events.last(),
        Some(&Event::Terminated {
            reason: TerminateReason::PeerInitiated(Some("stop".into()))
        })
    );
    assert!(p.host.is_terminated() && p.worker.is_terminated());
    assert_eq!(p.host.poll_timeout(), None);
    p.host.handle_eof();
    p.worker.handle_eof();
    assert_eq!(p.host.error(), None);
    assert_eq!(p.worker.error(), None);
}

#[test]
fn terminate_worker_initiated() {
    let mut p = connected(small());
    let id = p.worker.open_channel().unwrap();
    p.worker
        .terminate(Some("exiting"), Instant::now(), Duration::from_secs(1));
    p.pump();
    assert_eq!(
        p.host_events.last(),
        Some(&Event::Terminated {
            reason: TerminateReason::PeerInitiated(Some("exiting".into()))
        })
    );
    assert_eq!(
        p.worker_events,
        vec![
            Event::ChannelEnded {
                channel: id,
                how: ChannelEnd::Terminated
            },
            Event::Terminated {
                reason: TerminateReason::Clean
            }
        ]
    );
}

#[test]
fn terminate_times_out() {
    let mut p = connected(small());
    let now = Instant::now();
    p.host.terminate(None, now, Duration::from_millis(100));
    p.transmit(); // the worker never answers
    p.host.handle_timeout(now + Duration::from_millis(50));
    assert!(!p.host.is_terminated());
    p.host.handle_timeout(now + Duration::from_millis(100));
    assert!(p.host.is_terminated());
    p.collect_events();
    assert_eq!(
        p.host_events.last(),
        Some(&Event::Terminated {
            reason: TerminateReason::TimedOut
        })
    );
}

// ---- flow control ----

#[test]
fn would_block_then_window_opened() {
    let mut p = connected(Config {
        window: 1000,
        max_frame: 1000,
        ..Config::default()
    });
    let id = p.host.open_channel().unwrap();
    let item = Value::Bytes(vec![7; 300]);
    let mut sent = 0;
    loop {
        match p.host.channel(id).unwrap().send(&item) {
            Ok(()) => sent += 1,
            Err(LocalError::WouldBlock) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(sent, 4, "accepted until a window's worth is buffered");
    assert!(!p.host.channel(id).unwrap().can_send());
    // transmitting (within the credit) drains the buffer below a window
    p.pump();
    assert!(p.host_events.contains(&Event::WindowOpened { channel: id }));
    p.host_events.clear();
    // fill it again: now the credit is used up until the receiver consumes
    while p.host.channel(id).unwrap().send(&item).is_ok() {}
    p.pump();
    assert!(!p.host_events.contains(&Event::WindowOpened { channel: id }));
    p.pump_consuming();
    assert!(p.host_events.contains(&Event::WindowOpened { channel: id }));
    assert!(p.host.channel(id).unwrap().can_send());
    p.host.channel(id).unwrap().send(&item).unwrap();
}

#[test]
fn poll_send_ready_registers_for_window_opened() {
    // A driver that asks before it sends never sees WouldBlock from `send`;
    // asking must be enough to be woken when room returns.
    let mut p = connected(Config {
        window: 1000,
        max_frame: 1000,
        ..Config::default()
    });
    let id = p.host.open_channel().unwrap();
    let item = Value::Bytes(vec![7; 300]);
    while p.host.channel(id).unwrap().poll_send_ready() {
        p.host.channel(id).unwrap().send(&item).unwrap();
    }
    p.pump();
    assert!(p.host_events.contains(&Event::WindowOpened { channel: id }));
    // a pure query registers nothing
    p.host_events.clear();
    while p.host.channel(id).unwrap().can_send() {
        p.host.channel(id).unwrap().send(&item).unwrap();
    }
    p.pump_consuming();
    assert!(p.host.channel(id).unwrap().can_send());
}

#[test]
fn a_slow_channel_does_not_stall_another() {
    let mut p = connected(Config {
        window: 2000,
        max_frame: 500,
        ..Config::default()
    });
    let slow = p.host.open_channel().unwrap();
    let fast = p.host.open_channel().unwrap();
    for _ in 0..10 {
        let _ = p
            .host
            .channel(slow)
            .unwrap()
            .send(&Value::Bytes(vec![0; 300]));
    }
    let mut got_fast = 0;
    for round in 0..100 {
        if p.host
            .channel(fast)
            .unwrap()
            .send(&Value::Int(round))
            .is_err()
        {
            panic!("fast channel blocked");
        }
        p.pump();
        // consume only the fast channel
        p.worker_events.clear();
        got_fast += take_all(&mut p.worker, fast).len();
    }
    assert_eq!(got_fast, 100);
}

#[test]
fn a_64_mib_item_through_a_1_mib_window() {
    let mut p = connected(Config {
        window: 1 << 20,
        max_frame: 256 << 10,
        ..Config::default()
    });
    let id = p.host.open_channel().unwrap();
    let payload: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    p.host
        .channel(id)
        .unwrap()
        .send(&Value::Bytes(payload.clone()))
        .unwrap();
    let mut max_in_flight = 0;
    let mut received = None;
    for _ in 0..10_000 {
        p.transmit();
        max_in_flight = max_in_flight.max(p.to_worker.len());
        p.deliver(Role::Worker, usize::MAX);
        p.transmit();
        p.deliver(Role::Host, usize::MAX);
        if let Some(Event::Readable { channel }) = p.worker_events.pop() {
            received = p.worker.channel(channel).unwrap().recv();
            break;
        }
    }
    assert!(max_in_flight <= (1 << 20) + 64 * 9, "{max_in_flight}");
    assert_eq!(received, Some(Value::Bytes(payload)));
}

#[test]
fn round_robin_interleaves_channels() {
    let mut p = connected(small());
    let a = p.host.open_channel().unwrap();
    let b = p.host.open_channel().unwrap();
    for _ in 0..3 {
        p.host
            .channel(a)
            .unwrap()
            .send(&Value::Bytes(vec![0; 1000]))
            .unwrap();
        p.host
            .channel(b)
            .unwrap()
            .send(&Value::Bytes(vec![0; 1000]))
            .unwrap();
    }
    let mut buf = Vec::new();
    let _ = p.host.poll_transmit(&mut buf, 100_000);
    // the first frames alternate between the channels
    let channel_of = |at: usize| u32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap());
    let mut at = 0;
    let mut order = Vec::new();
    while at < buf.len() {
        order.push(channel_of(at));
        at += 9 + u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap()) as usize;
    }
    assert!(order.contains(&a.0) && order.contains(&b.0));
    assert!(order.windows(2).any(|w| w[0] != w[1]));
}

/// Regression: with a little room left under `limit` (less than a frame),
/// poll_transmit looped forever instead of returning.
#[test]
fn poll_transmit_returns_when_the_limit_leaves_a_little_room() {
    for limit in [1, 9, 10, 55, 61, 1000, 4099] {
        let mut p = connected(small());
        let id = p.host.open_channel().unwrap();
        for i in 0..300 {
            p.host.channel(id).unwrap().send(&Value::Int(i)).unwrap();
        }
        let mut wire = Vec::new();
        let mut calls = 0;
        loop {
            let before = wire.len();
            let n = p.host.poll_transmit(&mut wire, limit);
            assert_eq!(n, wire.len() - before);
            if n == 0 {
                break;
            }
            calls += 1;
            assert!(calls < 10_000);
        }
        p.worker.handle_input(&wire).unwrap();
        let n = take_all(&mut p.worker, id).len();
        assert_eq!(n, 300, "limit {limit}");
    }
}

#[test]
fn poll_transmit_respects_the_limit_roughly() {
    let mut p = connected(small());
    let id = p.host.open_channel().unwrap();
    for i in 0..100 {
        p.host.channel(id).unwrap().send(&Value::Int(i)).unwrap();
    }
    let mut buf = Vec::new();
    let n = p.host.poll_transmit(&mut buf, 50);
    assert!(n > 0 && n <= 50 + 9 + 512, "{n}");
    // many small frames go into one buffer
    let mut all = Vec::new();
    let n = p.host.poll_transmit(&mut all, usize::MAX);
    assert!(n > 500);
}

// ---- local errors and gateway commands ----

#[test]
fn local_errors_leave_the_channel_usable() {
    let mut p = connected(small());
    let id = p.host.open_channel().unwrap();
    let mut ch = p.host.channel(id).unwrap();
    let bad = Value::Dict(vec![(Value::List(vec![]), Value::Null)]);
    assert_eq!(
        ch.send(&bad),
        Err(LocalError::Unrepresentable {
            type_name: "list",
            error: ValueError::Unhashable {
                type_name: "list",
                context: "dict key"
            }
        })
    );
    assert_eq!(ch.send_encoded(Vec::new()), Err(LocalError::EmptyItem));
    ch.send(&Value::Int(1)).unwrap();
    ch.send_encoded(vec![0x02]).unwrap();
    assert_eq!(ch.queued_bytes(), 2);
    p.pump();
    assert_eq!(
        take_all(&mut p.worker, id),
        vec![Value::Int(1), Value::Int(2)]
    );
    assert!(p.host.channel(ChannelId(99)).is_none());
    assert_eq!(
        p.worker.exec(ExecRequest {
            source: String::new(),
            call: None
        }),
        Err(LocalError::WrongRole)
    );
    assert_eq!(p.worker.request_status(), Err(LocalError::WrongRole));
    assert_eq!(
        p.host.reply_status(1, &Default::default()),
        Err(LocalError::WrongRole)
    );
    assert_eq!(p.host.send_output(1, b"x"), Err(LocalError::WrongRole));
    assert!(matches!(
        p.worker.send_output(3, b"x"),
        Err(LocalError::InvalidArgument(_))
    ));
    assert!(matches!(
        p.host.exec(ExecRequest {
            source: String::new(),
            call: Some(("f".into(), Value::Int(1)))
        }),
        Err(LocalError::InvalidArgument(_))
    ));
}

#[test]
fn max_channels() {
    let mut p = connected(Config {
        max_channels: 2,
        ..small()
    });
    p.host.open_channel().unwrap();
    p.host.open_channel().unwrap();
    assert_eq!(p.host.open_channel(), Err(LocalError::TooManyChannels));
    let mut h = host();
    let mut bytes = Vec::new();
    for id in (2..=200_002u32).step_by(2) {
        bytes.extend(frame(FrameKind::LastMessage, id, &[]));
    }
    assert_eq!(
        h.handle_input(&bytes),
        Err(ProtocolError::TooManyChannels { max: 65_536 })
    );
}

#[test]
fn channel_references_open_the_channel_on_the_receiver() {
    let mut p = connected(small());
    let carrier = p.host.open_channel().unwrap();
    let passed = p.host.open_channel().unwrap();
    let value = Value::Tuple(vec![Value::str("take"), Value::Channel(ChannelRef(passed))]);
    p.host.channel(carrier).unwrap().send(&value).unwrap();
    p.pump();
    assert!(p.worker.channel(passed).is_some());
    p.worker
        .channel(passed)
        .unwrap()
        .send(&Value::Int(5))
        .unwrap();
    p.pump();
    assert!(p.host_events.contains(&Event::Readable { channel: passed }));
    assert_eq!(take_all(&mut p.host, passed), vec![Value::Int(5)]);
}

#[test]
fn large_output_is_split_into_frames() {
    let mut p = connected(Config {
        max_frame: 100,
        ..small()
    });
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    p.worker.send_output(2, &data).unwrap();
    p.pump();
    let mut got = Vec::new();
    for e in &p.host_events {
        if let Event::Output { fd: 2, bytes } = e {
            got.extend_from_slice(bytes);
        }
    }
    assert_eq!(got, data);
    assert!(p.host_events.len() > 10);
}

#[test]
fn worker_adopts_the_host_limits() {
    let mut p = Pair::new(Config::default());
    p.host = Session::new_host(
        Config {
            window: 777,
            max_frame: 333,
            max_item: 5000,
            ..Config::default()
        },
        Value::Dict(vec![]),
    );
    p.connect();
    assert_eq!(p.worker.config().window, 777);
    assert_eq!(p.worker.config().max_frame, 333);
    assert_eq!(p.worker.config().max_item, 5000);
    assert_eq!(p.host.remote_info(), Some(&sample_worker_info()));
}

/// protocol.md §6.2: while items wait unconsumed, DATA_MORE credit is held,
/// so multi-chunk items cannot pile up beyond a window (plus the one item
/// reassembled while the application kept up).
#[test]
fn waiting_items_hold_data_more_credit() {
    let mut p = connected(Config {
        window: 256,
        max_frame: 64,
        ..Config::default()
    });
    let id = p.host.open_channel().unwrap();
    let mut sent = 0;
    for _ in 0..200 {
        if p.host
            .channel(id)
            .unwrap()
            .send(&Value::Bytes(vec![1; 150]))
            .is_ok()
        {
            sent += 1;
        }
        p.pump();
    }
    let ch = p.worker.channel(id).unwrap();
    // 152-byte items: the first one flowed while nothing waited, the next
    // one is fully held, then the window is used up.
    assert_eq!(ch.received(), 2);
    assert!(ch.received_credit() <= 256, "{}", ch.received_credit());
    assert!(sent > 2);
    // consuming releases everything
    p.pump_consuming();
    for _ in 0..50 {
        p.pump_consuming();
    }
    assert_eq!(p.host.channel(id).unwrap().queued_bytes(), 0);
}
