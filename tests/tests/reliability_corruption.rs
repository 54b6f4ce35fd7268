//! Stream corruption, seen by the host (fake workers speaking a broken
//! protocol after a valid HELLO) and by the worker (a transport whose writer
//! breaks the stream towards a real worker). Every case must end the
//! gateway's channels with a typed error within a second, never panic and
//! never disturb another gateway. See docs/reliability.md.

use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Gateway};
use execnet::{Error, Value};
use execnet_core::frame::FrameKind;
use execnet_core::ProtocolError;
use execnet_tests::faults::{
    cbor, frame, raw_frame, worker_hello, CorruptWriter, FakeWorker, Step, WriteFault,
};
use execnet_tests::{assert_reaped, bounded, LIMIT};

/// How long a channel may take to report the fault.
const TO_ERROR: Duration = Duration::from_secs(1);

/// The host allocates odd ids in order (protocol.md §6): the idle channel
/// `fault_after_exec` opens first is 1, its exec is 3.
const IDLE_CH: u32 = 1;
const EXEC_CH: u32 = 3;

fn echo_works(gw: &Gateway) {
    let ch = gw.remote_exec("channel.send(channel.receive())").unwrap();
    ch.send(&42).unwrap();
    assert_eq!(ch.receive_timeout::<i64>(LIMIT).unwrap(), 42);
}

/// Opens a gateway to `fake`, starts one exec (the fake reads its EXEC
/// frame, then sends the fault) and returns the error the channel ends with
/// and how long that took.
fn fault_after_exec(fake: &FakeWorker) -> (Error, Duration) {
    let gw = makegateway(&fake.spec()).unwrap_or_else(|e| panic!("fake worker start: {e}"));
    // A channel nobody reads (its credit is never returned).
    let idle = gw.newchannel().unwrap();
    assert_eq!(idle.id(), IDLE_CH);
    let t0 = Instant::now();
    let ch = gw.remote_exec("pass").unwrap();
    assert_eq!(ch.id(), EXEC_CH);
    let e = match ch.receive_timeout::<Value>(Duration::from_secs(10)) {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    };
    let took = t0.elapsed();
    // Sticky: the gateway is dead and says why.
    assert!(gw.remote_exec("pass").is_err());
    assert!(gw.is_terminated());
    drop((ch, idle));
    gw.terminate(Some(Duration::from_millis(200)));
    (e, took)
}

fn protocol(e: &Error) -> &ProtocolError {
    match e {
        Error::Protocol(p) => p,
        other => panic!("expected Error::Protocol, got {other:?}"),
    }
}

#[test]
fn host_side_corruption_gives_typed_protocol_errors() {
    bounded(LIMIT, || {
        // A healthy gateway lives through every fault below.
        let healthy = makegateway("popen").unwrap();
        let item = cbor(&Value::Int(7));
        type Check = fn(&ProtocolError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Check)> = vec![
            (
                "garbage bytes",
                b"\xff\xfe garbage garbage garbage".to_vec(),
                |p| matches!(p, ProtocolError::UnknownKind(0xff)),
            ),
            (
                "frame over the size limit",
                raw_frame(FrameKind::Data as u8, EXEC_CH, 64 << 20, b""),
                |p| matches!(p, ProtocolError::FrameTooLarge { length, .. } if *length == 64 << 20),
            ),
            (
                "bad CBOR payload",
                frame(FrameKind::Data, EXEC_CH, b"\x1f\xff\x00"),
                |p| {
                    matches!(
                        p,
                        ProtocolError::BadItem {
                            channel: EXEC_CH,
                            ..
                        }
                    )
                },
            ),
            (
                "two values in one item",
                frame(
                    FrameKind::Data,
                    EXEC_CH,
                    &[item.clone(), item.clone()].concat(),
                ),
                |p| {
                    matches!(
                        p,
                        ProtocolError::BadItem {
                            channel: EXEC_CH,
                            ..
                        }
                    )
                },
            ),
            (
                "unknown frame kind",
                raw_frame(0x42, EXEC_CH, 0, b""),
                |p| matches!(p, ProtocolError::UnknownKind(0x42)),
            ),
            (
                "unknown channel id (host parity, never allocated)",
                frame(FrameKind::Data, 99, &item),
                |p| matches!(p, ProtocolError::UnknownChannel(99)),
            ),
            (
                "EXEC sent to the host",
                frame(FrameKind::Exec, 2, &item),
                |p| matches!(p, ProtocolError::WrongDirection { .. }),
            ),
            (
                "channel frame on channel 0",
                frame(FrameKind::Data, 0, &item),
                |p| matches!(p, ProtocolError::WrongChannel { .. }),
            ),
            (
                "more data than the credit granted",
                {
                    // Five whole items of ~1 MiB on a channel nobody reads,
                    // with a 4 MiB window.
                    let item = cbor(&Value::Bytes(vec![0; (1 << 20) - 64]));
                    frame(FrameKind::Data, IDLE_CH, &item).repeat(5)
                },
                |p| {
                    matches!(
                        p,
                        ProtocolError::CreditExceeded {
                            channel: IDLE_CH,
                            ..
                        }
                    )
                },
            ),
            ("a second HELLO", worker_hello(1), |p| {
                matches!(p, ProtocolError::UnexpectedFrame { .. })
            }),
            (
                "bad WINDOW payload",
                frame(FrameKind::Window, EXEC_CH, b"\x63abc"),
                |p| matches!(p, ProtocolError::BadPayload { .. }),
            ),
        ];
        for (name, bytes, check) in cases {
            let fake = FakeWorker::after_hello(1, bytes);
            let (e, took) = fault_after_exec(&fake);
            let p = protocol(&e);
            assert!(check(p), "{name}: unexpected error {p:?}");
            assert!(took < TO_ERROR, "{name}: error after {took:?}");
            assert!(
                e.to_string().starts_with("protocol violation"),
                "{name}: {e}"
            );
            eprintln!("{name}: {e} after {took:?}");
            echo_works(&healthy);
        }
        healthy.exit().unwrap();
    })
}

#[test]
fn truncated_frame_then_end_of_stream() {
    bounded(LIMIT, || {
        // Half a DATA frame, then the worker exits: the channel names the
        // worker's death (the stream ended because of it).
        let full = frame(FrameKind::Data, EXEC_CH, &cbor(&Value::Bytes(vec![1; 100])));
        let fake = FakeWorker::new(&[
            Step::ReadBootstrap,
            Step::ReadFrames(1),
            Step::Send(worker_hello(1)),
            Step::ReadFrames(1),
            Step::Send(full[..50].to_vec()),
            Step::Exit(4),
        ]);
        let (e, took) = fault_after_exec(&fake);
        assert!(
            matches!(
                e,
                Error::WorkerDied {
                    status: execnet::ExitStatus::Code(4),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(took < TO_ERROR, "{took:?}");
        // Half a frame and stdout closed under a live worker: the stream is
        // cut, and the host kills the worker.
        let fake = FakeWorker::new(&[
            Step::ReadBootstrap,
            Step::ReadFrames(1),
            Step::Send(worker_hello(1)),
            Step::ReadFrames(1),
            Step::Send(full[..50].to_vec()),
            Step::CloseStdout,
            Step::Drain,
        ]);
        let (e, took) = fault_after_exec(&fake);
        assert!(
            matches!(e, Error::ConnectionLost(_) | Error::WorkerDied { .. }),
            "{e:?}"
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        eprintln!("truncated, stdout closed: {e} after {took:?}");
    })
}

#[test]
fn faults_before_hello_are_bootstrap_errors() {
    bounded(LIMIT, || {
        let cases: Vec<(&str, Vec<Step>, &str)> = vec![
            (
                "wrong protocol version",
                vec![
                    Step::ReadBootstrap,
                    Step::ReadFrames(1),
                    Step::Send(worker_hello(2)),
                    Step::Drain,
                ],
                "version mismatch: ours 1, theirs 2",
            ),
            (
                "a data frame before HELLO",
                vec![
                    Step::ReadBootstrap,
                    Step::Send(frame(FrameKind::Data, 2, &cbor(&Value::Null))),
                    Step::Drain,
                ],
                "protocol violation before HELLO",
            ),
            (
                "HELLO with a bad payload",
                vec![
                    Step::ReadBootstrap,
                    Step::Send(frame(FrameKind::Hello, 0, &cbor(&Value::Int(1)))),
                    Step::Drain,
                ],
                "protocol violation before HELLO",
            ),
            (
                "half a HELLO, then exit",
                vec![
                    Step::ReadBootstrap,
                    Step::Send(worker_hello(1)[..20].to_vec()),
                    Step::Exit(0),
                ],
                "before HELLO",
            ),
        ];
        for (name, steps, want) in cases {
            let fake = FakeWorker::new(&steps);
            let t0 = Instant::now();
            let e = makegateway(&fake.spec()).unwrap_err();
            let took = t0.elapsed();
            match &e {
                Error::BootstrapFailed { reason, .. } => {
                    assert!(reason.contains(want), "{name}: {e}")
                }
                other => panic!("{name}: expected BootstrapFailed, got {other:?}"),
            }
            assert!(took < Duration::from_secs(2), "{name}: {took:?}");
            eprintln!("{name}: {e} after {took:?}");
        }
    })
}

/// A popen transport to a real worker whose writer breaks after `after`
/// bytes.
fn corrupted_gateway(after: usize, fault: WriteFault) -> (Gateway, u32) {
    let mut t =
        execnet::transport::popen::connect(&execnet::transport::popen::PopenOptions::default())
            .unwrap();
    let pid = t.control.as_ref().unwrap().pid().unwrap();
    t.writer = Box::new(CorruptWriter::new(t.writer, after, fault));
    let gw = Gateway::builder("popen")
        .unwrap()
        .start_with_transport(t)
        .unwrap();
    (gw, pid)
}

/// The worker detects the corruption, reports it (stderr, TERMINATE with
/// the reason) and exits; the host ends the channel with an error that names
/// the violation.
#[test]
fn worker_side_corruption_ends_the_gateway_with_an_error() {
    bounded(LIMIT, || {
        let healthy = makegateway("popen").unwrap();
        let cases: Vec<(&str, WriteFault)> = vec![
            ("garbage", WriteFault::Insert(b"\xee garbage".to_vec())),
            (
                "oversized frame",
                WriteFault::Insert(raw_frame(FrameKind::Data as u8, EXEC_CH, 64 << 20, b"")),
            ),
            (
                "bad CBOR",
                WriteFault::Insert(frame(FrameKind::Data, EXEC_CH, b"\x1f\xff")),
            ),
            (
                "unknown kind",
                WriteFault::Insert(raw_frame(0x42, 1, 0, b"")),
            ),
            (
                "unknown channel (worker parity)",
                WriteFault::Insert(frame(FrameKind::Data, 98, &cbor(&Value::Null))),
            ),
            ("truncated frame", WriteFault::Cut { keep: 5 }),
        ];
        for (name, fault) in cases {
            // The first write is the host HELLO; the fault comes before the
            // first write after it (the EXEC below or the item after it).
            let (gw, pid) = corrupted_gateway(1, fault);
            let ch = gw.remote_exec("channel.send(channel.receive())").unwrap();
            let _ = ch.send(&1);
            let t0 = Instant::now();
            let e = match ch.receive_timeout::<Value>(Duration::from_secs(10)) {
                Ok(v) => panic!("{name}: expected an error, got {v:?}"),
                Err(e) => e,
            };
            let took = t0.elapsed();
            eprintln!("{name}: {e:?} after {took:?}");
            assert!(took < TO_ERROR, "{name}: {took:?}");
            assert!(
                !matches!(e, Error::EndOfChannel),
                "{name}: the channel ended as if the worker had finished normally"
            );
            assert!(gw.is_terminated(), "{name}");
            assert_reaped(pid, Duration::from_secs(5));
            echo_works(&healthy);
        }
        healthy.exit().unwrap();
    })
}
