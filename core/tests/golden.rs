//! The golden vectors (`tests/vectors/golden.json`): the byte-exact contract
//! with the Python worker, which checks the same file. Every value entry is
//! decoded (and, unless `decode_only`, encoded); every frame entry is checked
//! by the real sessions in `golden_frames`.

mod support;

use execnet_core::{decode, encode, Value};
use support::golden::{load, typed_value};
use support::same_value;

#[test]
fn golden_values_encode_and_decode() {
    let golden = load();
    let values = golden["values"].as_array().expect("values");
    assert!(values.len() > 60);
    for entry in values {
        let name = entry["name"].as_str().unwrap();
        let value = typed_value(&entry["value"]);
        let bytes = support::unhex(entry["hex"].as_str().unwrap());
        let decoded = decode(&bytes, 200).unwrap_or_else(|e| panic!("{name}: decode: {e}"));
        assert!(
            same_value(&decoded, &value),
            "{name}: decoded {decoded:?}, expected {value:?}"
        );
        if !entry["decode_only"].as_bool().unwrap() {
            let mut out = Vec::new();
            encode(&value, &mut out).unwrap_or_else(|e| panic!("{name}: encode: {e}"));
            assert_eq!(
                support::hex(&out),
                entry["hex"].as_str().unwrap(),
                "{name}: encode"
            );
        }
    }
}

#[test]
fn golden_depth_limit_is_exactly_200() {
    let golden = load();
    let deep = golden["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "list_depth_200")
        .unwrap();
    let bytes = support::unhex(deep["hex"].as_str().unwrap());
    assert!(decode(&bytes, 200).is_ok());
    let mut deeper = vec![0x81];
    deeper.extend_from_slice(&bytes);
    assert!(decode(&deeper, 200).is_err());
    let _ = Value::Null;
}

mod frames {
    use super::support;
    use super::support::golden::load;
    use execnet_core::frame::{write_frame, FrameKind};
    use execnet_core::fuzzing::sample_worker_info;
    use execnet_core::{
        ChannelEnd, ChannelId, Config, Event, ExecRequest, Role, Session, Status, Value,
    };
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    struct Golden(HashMap<String, (u8, u32, Vec<u8>, Vec<u8>)>);

    impl Golden {
        fn bytes(&self, name: &str) -> Vec<u8> {
            self.0[name].3.clone()
        }
        fn payload(&self, name: &str) -> Vec<u8> {
            self.0[name].2.clone()
        }
    }

    fn golden() -> Golden {
        let json = load();
        let mut map = HashMap::new();
        for f in json["frames"].as_array().unwrap() {
            let name = f["name"].as_str().unwrap().to_owned();
            let kind = f["kind"].as_u64().unwrap() as u8;
            let channel = f["channel"].as_u64().unwrap() as u32;
            let payload = support::unhex(f["payload_hex"].as_str().unwrap());
            let bytes = support::unhex(f["hex"].as_str().unwrap());
            // The frame is exactly header + payload.
            let mut expected = Vec::new();
            write_frame(
                &mut expected,
                FrameKind::try_from(kind).unwrap(),
                channel,
                &payload,
            );
            assert_eq!(expected, bytes, "{name}: header + payload");
            map.insert(name, (kind, channel, payload, bytes));
        }
        Golden(map)
    }

    fn options() -> Value {
        Value::Dict(vec![
            (Value::str("execmodel"), Value::str("thread")),
            (Value::str("output"), Value::str("forward")),
            (Value::str("debug"), Value::Bool(false)),
        ])
    }

    fn out(s: &mut Session) -> Vec<u8> {
        let mut buf = Vec::new();
        while s.poll_transmit(&mut buf, usize::MAX) > 0 {}
        buf
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn feed(s: &mut Session, bytes: &[u8]) -> Vec<Event> {
        s.handle_input(bytes).unwrap();
        events(s)
    }

    /// Drives a host and a worker through every golden frame: what they
    /// transmit must equal the vectors byte for byte, and what they receive
    /// from the vectors must mean what the vectors say.
    #[test]
    fn golden_frames_through_real_sessions() {
        let g = golden();
        let mut host = Session::new_host(Config::default(), options());
        let mut worker = Session::new_worker(Config::default(), sample_worker_info());

        assert_eq!(out(&mut host), g.bytes("hello_host"));
        assert_eq!(
            feed(&mut worker, &g.bytes("hello_host")),
            vec![Event::HostHello { options: options() }]
        );
        assert_eq!(out(&mut worker), g.bytes("hello_worker"));
        assert_eq!(
            feed(&mut host, &g.bytes("hello_worker")),
            vec![Event::Ready(sample_worker_info())]
        );

        let exec1 = ExecRequest {
            source: "channel.send(42)".into(),
            call: None,
        };
        assert_eq!(host.exec(exec1.clone()).unwrap(), ChannelId(1));
        assert_eq!(out(&mut host), g.bytes("exec_source"));
        assert_eq!(
            feed(&mut worker, &g.bytes("exec_source")),
            vec![Event::ExecRequested {
                channel: ChannelId(1),
                request: exec1
            }]
        );
        let exec3 = ExecRequest {
            source: "def f(channel, x):\n    channel.send(x)\n".into(),
            call: Some((
                "f".into(),
                Value::Dict(vec![(Value::str("x"), Value::Int(1))]),
            )),
        };
        assert_eq!(host.exec(exec3.clone()).unwrap(), ChannelId(3));
        assert_eq!(out(&mut host), g.bytes("exec_call"));
        assert_eq!(
            feed(&mut worker, &g.bytes("exec_call")),
            vec![Event::ExecRequested {
                channel: ChannelId(3),
                request: exec3
            }]
        );

        // WINDOW: decoded (the grant is accepted) and encoded as a uint.
        assert_eq!(feed(&mut worker, &g.bytes("window")), vec![]);
        let mut uint = Vec::new();
        execnet_core::encode(&Value::Int(65536), &mut uint).unwrap();
        assert_eq!(g.payload("window"), uint);

        let item = Value::List(vec![
            Value::Int(1),
            Value::str("two"),
            Value::Tuple(vec![Value::Int(3), Value::Null]),
        ]);
        host.channel(ChannelId(1)).unwrap().send(&item).unwrap();
        assert_eq!(out(&mut host), g.bytes("data"));
        let ev = feed(&mut worker, &g.bytes("data"));
        assert_eq!(
            ev,
            vec![Event::Readable {
                channel: ChannelId(1)
            }]
        );
        let mut ch = worker.channel(ChannelId(1)).unwrap();
        assert_eq!(ch.received_credit(), 12);
        assert_eq!(ch.recv(), Some(item));

        assert_eq!(worker.open_channel().unwrap(), ChannelId(2));
        worker
            .channel(ChannelId(2))
            .unwrap()
            .send(&Value::Int(42))
            .unwrap();
        assert_eq!(out(&mut worker), g.bytes("data_worker_channel"));
        let ev = feed(&mut host, &g.bytes("data_worker_channel"));
        assert_eq!(
            ev,
            vec![Event::Readable {
                channel: ChannelId(2)
            }]
        );
        assert_eq!(
            host.channel(ChannelId(2)).unwrap().recv(),
            Some(Value::Int(42))
        );
        assert_eq!(feed(&mut host, &g.bytes("window_small")), vec![]);

        // DATA_MORE, DATA_MORE, DATA reassemble one item.
        assert_eq!(feed(&mut worker, &g.bytes("data_more_1")), vec![]);
        assert_eq!(feed(&mut worker, &g.bytes("data_more_2")), vec![]);
        let ev = feed(&mut worker, &g.bytes("data_more_last"));
        assert_eq!(
            ev,
            vec![Event::Readable {
                channel: ChannelId(3)
            }]
        );
        let mut ch = worker.channel(ChannelId(3)).unwrap();
        assert_eq!(ch.received_credit(), 3);
        assert_eq!(ch.recv(), Some(Value::str("hello world")));

        host.channel(ChannelId(1)).unwrap().close().unwrap();
        assert_eq!(out(&mut host), g.bytes("close"));
        assert_eq!(
            events(&mut host),
            vec![Event::ChannelEnded {
                channel: ChannelId(1),
                how: ChannelEnd::ClosedLocally
            }]
        );
        assert_eq!(
            feed(&mut worker, &g.bytes("close")),
            vec![Event::ChannelEnded {
                channel: ChannelId(1),
                how: ChannelEnd::Closed
            }]
        );
        // The worker answers with its own CLOSE.
        let mut answer = Vec::new();
        write_frame(&mut answer, FrameKind::Close, 1, &[]);
        assert_eq!(out(&mut worker), answer);

        let text = "Traceback (most recent call last):\nValueError: boom\n";
        worker
            .channel(ChannelId(3))
            .unwrap()
            .close_with_error(text)
            .unwrap();
        assert_eq!(out(&mut worker), g.bytes("close_error"));
        assert_eq!(events(&mut worker).len(), 1);
        // (the host already ended channel 1 locally; the worker's CLOSE on 1
        // completes it)
        let ev = feed(&mut host, &answer);
        assert!(ev.is_empty(), "{ev:?}");
        let ev = feed(&mut host, &g.bytes("close_error"));
        assert_eq!(
            ev,
            vec![Event::ChannelEnded {
                channel: ChannelId(3),
                how: ChannelEnd::RemoteError(text.into())
            }]
        );
        out(&mut host); // the host's answering CLOSE on 3

        assert_eq!(host.open_channel().unwrap(), ChannelId(5));
        host.channel(ChannelId(5)).unwrap().half_close().unwrap();
        assert_eq!(out(&mut host), g.bytes("last_message"));
        assert_eq!(
            feed(&mut worker, &g.bytes("last_message")),
            vec![Event::ChannelEnded {
                channel: ChannelId(5),
                how: ChannelEnd::Closed
            }]
        );

        // STATUS_REQUEST id 7 (ids count from 1).
        for _ in 0..6 {
            host.request_status().unwrap();
        }
        out(&mut host);
        assert_eq!(host.request_status().unwrap(), 7);
        assert_eq!(out(&mut host), g.bytes("status_request"));
        assert_eq!(
            feed(&mut worker, &g.bytes("status_request")),
            vec![Event::StatusRequested { id: 7 }]
        );
        let status = Status {
            numchannels: 2,
            numexecuting: 1,
            execmodel: "thread".into(),
        };
        worker.reply_status(7, &status).unwrap();
        assert_eq!(out(&mut worker), g.bytes("status_reply"));
        assert_eq!(
            feed(&mut host, &g.bytes("status_reply")),
            vec![Event::StatusReply { id: 7, status }]
        );

        worker.send_output(1, b"hello\n").unwrap();
        assert_eq!(out(&mut worker), g.bytes("output_stdout"));
        worker.send_output(2, b"oops\n").unwrap();
        assert_eq!(out(&mut worker), g.bytes("output_stderr"));
        assert_eq!(
            feed(&mut host, &g.bytes("output_stdout")),
            vec![Event::Output {
                fd: 1,
                bytes: b"hello\n".to_vec()
            }]
        );
        assert_eq!(
            feed(&mut host, &g.bytes("output_stderr")),
            vec![Event::Output {
                fd: 2,
                bytes: b"oops\n".to_vec()
            }]
        );

        // TERMINATE without reason, host-initiated.
        let now = Instant::now();
        host.terminate(None, now, Duration::from_secs(1));
        assert_eq!(out(&mut host), g.bytes("terminate"));
        let ev = feed(&mut worker, &g.bytes("terminate"));
        assert_eq!(ev, vec![Event::TerminateRequested { reason: None }]);
        assert_eq!(worker.role(), Role::Worker);

        // TERMINATE with a reason.
        let mut host2 = Session::new_host(Config::default(), options());
        out(&mut host2);
        host2.terminate(Some("host shutting down"), now, Duration::from_secs(1));
        assert_eq!(out(&mut host2), g.bytes("terminate_reason"));
        let mut worker2 = Session::new_worker(Config::default(), sample_worker_info());
        feed(&mut worker2, &g.bytes("hello_host"));
        assert_eq!(
            feed(&mut worker2, &g.bytes("terminate_reason")),
            vec![Event::TerminateRequested {
                reason: Some("host shutting down".into())
            }]
        );
    }
}
