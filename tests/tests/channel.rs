//! Channel behaviour, ported from execnet's `testing/test_channel.py` and
//! `test_basics.py`, over popen gateways to the default `python3`.

use std::io::{BufRead, Read, Write};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use execnet::blocking::Channel;
use execnet::{Error, Value};
use execnet_tests::{bounded, gw, LIMIT};

const T: Duration = Duration::from_secs(10);

#[test]
fn echo() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec("for x in channel:\n    channel.send(x)")
            .unwrap();
        for i in 0..10i64 {
            ch.send(&i).unwrap();
            assert_eq!(ch.receive::<i64>().unwrap(), i);
        }
        ch.send("hello").unwrap();
        assert_eq!(ch.receive::<String>().unwrap(), "hello");
        ch.close().unwrap();
        ch.waitclose(Some(T)).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn name_is_channelexec() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.send(__name__)").unwrap();
        assert_eq!(ch.receive::<String>().unwrap(), "__channelexec__");
    })
}

#[test]
fn remote_name_error_traceback() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec("def foo():\n  return foobar()\nfoo()\n")
            .unwrap();
        match ch.receive::<Value>() {
            Err(Error::Remote(e)) => {
                assert!(
                    e.formatted()
                        .starts_with("Traceback (most recent call last):"),
                    "{e}"
                );
                assert!(e.formatted().contains("foobar"), "{e}");
                assert_eq!(e.exception_type(), Some("NameError"));
                assert!(e.message().contains("foobar"), "{}", e.message());
                assert_eq!(e.to_string(), e.formatted());
            }
            other => panic!("expected a remote NameError, got {other:?}"),
        }
        // Reported once, then the channel reads as ended.
        assert!(matches!(ch.receive::<Value>(), Err(Error::EndOfChannel)));
    })
}

#[test]
fn remote_syntax_error() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("def foo()\n return 1\nfoo()\n").unwrap();
        match ch.receive::<Value>() {
            Err(Error::Remote(e)) => {
                assert!(e.formatted().contains("SyntaxError"), "{e}");
                assert_eq!(e.exception_type(), Some("SyntaxError"));
            }
            other => panic!("expected a remote SyntaxError, got {other:?}"),
        }
    })
}

#[test]
fn close_and_then_receive_error() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("raise ValueError('boom')").unwrap();
        let e = ch.receive::<Value>().unwrap_err();
        let r = e.as_remote().expect("remote error");
        assert_eq!(r.exception_type(), Some("ValueError"));
        assert_eq!(r.message(), "boom");
    })
}

#[test]
fn end_of_channel_repeatedly() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.send(42)").unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 42);
        for _ in 0..3 {
            assert!(matches!(ch.receive::<Value>(), Err(Error::EndOfChannel)));
        }
        assert!(ch.is_closed());
    })
}

#[test]
fn items_before_an_error_arrive_first() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec("channel.send(42); channel.send(43); raise ValueError")
            .unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 42);
        assert_eq!(ch.receive::<i64>().unwrap(), 43);
        assert!(matches!(ch.receive::<Value>(), Err(Error::Remote(_))));
        assert!(matches!(ch.receive::<Value>(), Err(Error::EndOfChannel)));
    })
}

#[test]
fn waitclose_timeout() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.receive()").unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            ch.waitclose(Some(Duration::from_millis(50))),
            Err(Error::Timeout)
        ));
        assert!(t0.elapsed() < Duration::from_secs(2));
        ch.send(&1).unwrap();
        ch.waitclose(Some(T)).unwrap();
    })
}

#[test]
fn waitclose_reraises_remote_error() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("raise KeyError('k')").unwrap();
        let e = ch.waitclose(Some(T)).unwrap_err();
        assert_eq!(e.as_remote().unwrap().exception_type(), Some("KeyError"));
    })
}

#[test]
fn receive_timeout() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.send(channel.receive())").unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            ch.receive_timeout::<Value>(Duration::from_millis(200)),
            Err(Error::Timeout)
        ));
        let el = t0.elapsed();
        assert!(
            el >= Duration::from_millis(190) && el < Duration::from_secs(3),
            "{el:?}"
        );
        ch.send(&1).unwrap();
        assert_eq!(ch.receive_timeout::<i64>(T).unwrap(), 1);
    })
}

#[test]
fn receive_waits_for_a_slow_sender() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec("import time; time.sleep(0.5); channel.send(1)")
            .unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1);
    })
}

#[test]
fn iteration() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                for x in range(3):
                    channel.send(x)
                "#,
            )
            .unwrap();
        let items: Vec<i64> = ch.iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(items, vec![0, 1, 2]);
        // Iteration over an erroring channel yields the error last.
        let ch = gw.remote_exec("channel.send(1); 1/0").unwrap();
        let all: Vec<Result<i64, Error>> = ch.iter().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(*all[0].as_ref().unwrap(), 1);
        assert_eq!(
            all[1]
                .as_ref()
                .unwrap_err()
                .as_remote()
                .unwrap()
                .exception_type(),
            Some("ZeroDivisionError")
        );
    })
}

#[test]
fn channels_in_structures_host_to_remote() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                ch1, ch2 = channel.receive()
                data = ch1.receive()
                ch2.send(data + 1)
                "#,
            )
            .unwrap();
        let c1 = gw.newchannel().unwrap();
        let c2 = gw.newchannel().unwrap();
        ch.send(&(c1.clone(), c2.clone())).unwrap();
        c1.send(&1).unwrap();
        assert_eq!(c2.receive::<i64>().unwrap(), 2);
        ch.waitclose(Some(T)).unwrap();
    })
}

#[test]
fn channel_multipass() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                channel.send(channel)
                xchan = channel.receive()
                assert xchan == channel
                "#,
            )
            .unwrap();
        let same: Channel = ch.receive().unwrap();
        assert_eq!(same.id(), ch.id());
        ch.send(&same).unwrap();
        ch.waitclose(Some(T)).unwrap();
    })
}

#[test]
fn channels_in_structures_remote_to_host() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                c = channel.gateway.newchannel()
                d = channel.gateway.newchannel()
                channel.send({"c": c, "list": [d]})
                c.send(42)
                d.send(43)
                "#,
            )
            .unwrap();
        #[derive(serde::Deserialize)]
        struct Msg {
            c: Channel,
            list: Vec<Channel>,
        }
        let m: Msg = ch.receive().unwrap();
        assert_eq!(m.c.id() % 2, 0, "worker-allocated ids are even");
        assert_eq!(m.c.receive::<i64>().unwrap(), 42);
        assert_eq!(m.list[0].receive::<i64>().unwrap(), 43);
        ch.waitclose(Some(T)).unwrap();
    })
}

/// `waitclose` returns only after every item and the endmarker went through
/// the callback (execnet's receiver runs them before it processes the close);
/// looped, because the callbacks run on another thread than the waiter.
#[test]
fn waitclose_returns_after_the_callbacks_ran() {
    bounded(LIMIT, || {
        let gw = gw();
        for round in 0..200 {
            let ch = gw
                .remote_exec("channel.send(1)\nchannel.send(2)\nchannel.send(3)\n")
                .unwrap();
            let items = Arc::new(Mutex::new(Vec::new()));
            let i2 = items.clone();
            ch.set_callback(move |v| i2.lock().unwrap().push(v), Some(Value::Null))
                .unwrap();
            ch.waitclose(Some(T)).unwrap();
            let got = items.lock().unwrap().clone();
            assert_eq!(
                got,
                vec![Value::Int(1), Value::Int(2), Value::Int(3), Value::Null],
                "round {round}"
            );
        }
    })
}

#[test]
fn callback_gets_queued_then_new_items() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                channel.send(42)
                channel.send(13)
                channel.send(channel.gateway.newchannel())
                "#,
            )
            .unwrap();
        let items = Arc::new(Mutex::new(Vec::new()));
        let i2 = items.clone();
        ch.set_callback(move |v| i2.lock().unwrap().push(v), None)
            .unwrap();
        assert!(matches!(ch.receive::<Value>(), Err(Error::CallbackSet)));
        ch.waitclose(Some(T)).unwrap();
        let items = items.lock().unwrap();
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[0], Value::Int(42));
        assert_eq!(items[1], Value::Int(13));
        assert!(matches!(items[2], Value::Channel(_)));
    })
}

#[test]
fn callback_after_receive() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec("channel.send(42); channel.send(13)")
            .unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 42);
        let items = Arc::new(Mutex::new(Vec::new()));
        let i2 = items.clone();
        ch.set_callback(move |v| i2.lock().unwrap().push(v), Some(Value::Int(999)))
            .unwrap();
        ch.waitclose(Some(T)).unwrap();
        assert!(execnet_tests::wait_until(T, || items.lock().unwrap().len() == 2));
        assert_eq!(
            *items.lock().unwrap(),
            vec![Value::Int(13), Value::Int(999)]
        );
    })
}

#[test]
fn endmarker_after_items() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec("channel.send(42); channel.send(13)")
            .unwrap();
        let (tx, rx) = mpsc::channel();
        ch.set_callback(move |v| tx.send(v).unwrap(), Some(Value::Int(999)))
            .unwrap();
        let got: Vec<Value> = (0..3).map(|_| rx.recv_timeout(T).unwrap()).collect();
        assert_eq!(got, vec![Value::Int(42), Value::Int(13), Value::Int(999)]);
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "endmarker once"
        );
    })
}

#[test]
fn endmarker_on_remote_error() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("raise ValueError()").unwrap();
        let (tx, rx) = mpsc::channel();
        ch.set_callback(move |v| tx.send(v).unwrap(), Some(Value::Int(999)))
            .unwrap();
        assert_eq!(rx.recv_timeout(T).unwrap(), Value::Int(999));
        let e = ch.waitclose(Some(T)).unwrap_err();
        assert!(e.to_string().contains("ValueError"), "{e}");
    })
}

#[test]
fn endmarker_on_worker_death() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.receive()").unwrap();
        let (tx, rx) = mpsc::channel();
        ch.set_callback(move |v| tx.send(v).unwrap(), Some(Value::str("end")))
            .unwrap();
        gw.kill();
        assert_eq!(rx.recv_timeout(T).unwrap(), Value::str("end"));
    })
}

#[test]
fn callback_on_a_new_channel_stays_active() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                import threading, time
                def producer(subchannel):
                    for i in range(5):
                        time.sleep(0.02)
                        subchannel.send(i * 100)
                channel2 = channel.receive()
                threading.Thread(target=producer, args=(channel2,)).start()
                del channel2
                "#,
            )
            .unwrap();
        let sub = gw.newchannel().unwrap();
        let (tx, rx) = mpsc::channel();
        sub.set_callback(move |v| tx.send(v).unwrap(), None)
            .unwrap();
        ch.send(&sub).unwrap();
        // Dropping our handle half-closes: the callback keeps consuming.
        drop(sub);
        let got: Vec<Value> = (0..5).map(|_| rx.recv_timeout(T).unwrap()).collect();
        assert_eq!(got, [0, 100, 200, 300, 400].map(Value::Int).to_vec());
    })
}

#[test]
fn remote_callback_error_closes_channel_with_error() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                def f(item):
                    raise ValueError(42)
                ch = channel.gateway.newchannel()
                ch.setcallback(f)
                channel.send(ch)
                channel.receive()
                assert ch.isclosed()
                "#,
            )
            .unwrap();
        let sub: Channel = ch.receive().unwrap();
        sub.send(&1).unwrap();
        let e = sub.waitclose(Some(T)).unwrap_err();
        assert!(e.as_remote().unwrap().formatted().contains("42"), "{e}");
        ch.send(&1).unwrap();
        ch.waitclose(Some(T)).unwrap();
    })
}

#[test]
fn makefile_remote_writes() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                f = channel.makefile()
                f.write("hello world\n")
                f.close()
                channel.send(42)
                "#,
            )
            .unwrap();
        let first: Value = ch.receive().unwrap();
        let text = match first {
            Value::Str(s) => s,
            Value::Bytes(b) => String::from_utf8(b).unwrap(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(text.trim(), "hello world");
        assert_eq!(ch.receive::<i64>().unwrap(), 42);
    })
}

#[test]
fn makefile_remote_reads() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                f = channel.makefile(mode='r')
                s = f.read(2)
                channel.send(s)
                s = f.read(5)
                channel.send(s)
                "#,
            )
            .unwrap();
        ch.send("xyabcde").unwrap();
        let a: Value = ch.receive().unwrap();
        let b: Value = ch.receive().unwrap();
        let s = |v: Value| match v {
            Value::Str(s) => s,
            Value::Bytes(b) => String::from_utf8(b).unwrap(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(s(a), "xy");
        assert_eq!(s(b), "abcde");
    })
}

#[test]
fn makefile_host_reader_and_writer() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                data = b""
                for item in channel:
                    if item == b"":
                        break
                    data += item
                channel.send(data.upper())
                channel.send("123\n45")
                "#,
            )
            .unwrap();
        let mut w = ch.makefile_writer();
        w.write_all(b"hello ").unwrap();
        write!(w, "world").unwrap();
        ch.send_value(&Value::Bytes(Vec::new())).unwrap();
        let mut r = ch.makefile_reader();
        let mut first = vec![0u8; 11];
        r.read_exact(&mut first).unwrap();
        assert_eq!(first, b"HELLO WORLD");
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "123\n");
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "45");
        // At the end of the channel a reader reads nothing, repeatedly.
        assert_eq!(r.read(&mut [0u8; 3]).unwrap(), 0);
        assert_eq!(r.read(&mut [0u8; 3]).unwrap(), 0);
    })
}

#[test]
fn send_after_close_is_an_error() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.receive()").unwrap();
        ch.close().unwrap();
        ch.close().unwrap();
        assert!(ch.is_closed());
        assert!(matches!(ch.send(&1), Err(Error::ChannelClosed)));
        // A channel the remote closed refuses sends as well.
        let ch = gw.remote_exec("pass").unwrap();
        ch.waitclose(Some(T)).unwrap();
        assert!(matches!(ch.send(&1), Err(Error::ChannelClosed)));
    })
}

#[test]
fn remote_receives_error_text_from_close_with_error() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("sub = channel.receive()\ntry:\n    sub.receive()\nexcept sub.RemoteError as e:\n    channel.send(str(e))\n").unwrap();
        let sub = gw.newchannel().unwrap();
        ch.send(&sub).unwrap();
        sub.close_with_error("host says no").unwrap();
        let text: String = ch.receive().unwrap();
        assert!(text.contains("host says no"), "{text}");
    })
}

#[test]
fn unserializable_remote_value() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.send(ValueError(42))").unwrap();
        let e = ch.receive::<Value>().unwrap_err();
        assert!(matches!(e, Error::Remote(_)), "{e:?}");
        // The gateway stays usable.
        let ch = gw.remote_exec("channel.send(1)").unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 1);
    })
}

#[test]
fn unserializable_local_value() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("channel.send(channel.receive())").unwrap();
        // A list as a dict key cannot be hashed in Python: refused locally.
        let bad = Value::Dict(vec![(Value::List(vec![]), Value::Int(1))]);
        let e = ch.send_value(&bad).unwrap_err();
        assert!(e.to_string().contains("list"), "{e}");
        // Nothing was half-sent: the channel still works.
        ch.send(&5).unwrap();
        assert_eq!(ch.receive::<i64>().unwrap(), 5);
    })
}

#[test]
fn remote_exec_call_with_kwargs() {
    bounded(LIMIT, || {
        let gw = gw();
        #[derive(serde::Serialize)]
        struct Args {
            a: i64,
            b: String,
        }
        let ch = gw
            .remote_exec_call(
                r#"
                def f(channel, a, b):
                    channel.send((a * 2, b.upper()))
                "#,
                "f",
                &Args {
                    a: 21,
                    b: "xy".into(),
                },
            )
            .unwrap();
        let (a, b): (i64, String) = ch.receive().unwrap();
        assert_eq!((a, b.as_str()), (42, "XY"));
        ch.waitclose(Some(T)).unwrap();
        // No kwargs at all.
        let ch = gw
            .remote_exec_call("def g(channel):\n    channel.send('ok')\n", "g", &())
            .unwrap();
        assert_eq!(ch.receive::<String>().unwrap(), "ok");
    })
}

#[test]
fn concurrent_execs_in_threads() {
    bounded(LIMIT, || {
        let gw = gw();
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let gw = gw.clone();
                std::thread::spawn(move || {
                    let ch = gw
                        .remote_exec("x = channel.receive()\nchannel.send(x * x)")
                        .unwrap();
                    ch.send(&(i as i64)).unwrap();
                    ch.receive::<i64>().unwrap()
                })
            })
            .collect();
        let mut results: Vec<i64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        results.sort();
        assert_eq!(results, (0..8).map(|i| i * i).collect::<Vec<i64>>());
        // Execs really run at the same time in the thread model.
        // (8 x 0.5 s would take 4 s one after the other.)
        let t0 = Instant::now();
        let chans: Vec<_> = (0..8)
            .map(|_| {
                gw.remote_exec("import time; time.sleep(0.5); channel.send(1)")
                    .unwrap()
            })
            .collect();
        for c in &chans {
            assert_eq!(c.receive::<i64>().unwrap(), 1);
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    })
}

#[test]
fn dropped_handle_closes_channel() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                r#"
                sub = channel.receive()
                try:
                    sub.receive()
                    channel.send("item")
                except EOFError:
                    channel.send("eof")
                "#,
            )
            .unwrap();
        let sub = gw.newchannel().unwrap();
        ch.send(&sub).unwrap();
        drop(sub);
        assert_eq!(ch.receive::<String>().unwrap(), "eof");
    })
}

#[test]
fn receive_after_local_close_ends_at_once() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw.remote_exec("import time; time.sleep(30)").unwrap();
        ch.close().unwrap();
        let t0 = Instant::now();
        assert!(matches!(ch.receive::<Value>(), Err(Error::EndOfChannel)));
        ch.waitclose(Some(T)).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    })
}

#[test]
fn slow_consumer_throttles_only_its_channel() {
    bounded(LIMIT, || {
        let gw = gw();
        // This remote never reads: its window fills up.
        let stalled = gw
            .remote_exec("import time\nwhile True: time.sleep(1)")
            .unwrap();
        let chunk = Value::Bytes(vec![1u8; 512 << 10]);
        let t0 = Instant::now();
        let mut sent = 0usize;
        loop {
            match stalled.send_timeout(&chunk, Duration::from_millis(300)) {
                Ok(()) => sent += 1,
                Err(Error::Timeout) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(sent < 1000, "the window never filled");
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        // Bounded. Note: not by 2 windows (8 MiB) as one might expect:
        // protocol.md §6.2 returns DATA_MORE credit on receipt, so the head
        // chunks of items split at the credit edge are credited back and
        // completed-but-unconsumed items can exceed the window (observed:
        // 16 MiB with a 4 MiB window). Reported as a protocol issue.
        assert!(sent * (512 << 10) <= 32 << 20, "sent {sent} chunks");
        // Another channel of the same gateway is not stalled.
        let ch = gw.remote_exec("channel.send(channel.receive())").unwrap();
        ch.send(&5).unwrap();
        assert_eq!(ch.receive_timeout::<i64>(T).unwrap(), 5);
        gw.terminate(Some(Duration::from_millis(200)));
    })
}

#[test]
fn panicking_callback_is_removed_and_the_gateway_lives_on() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec("for i in range(5): channel.send(i)\nchannel.receive()")
            .unwrap();
        ch.set_callback(|_| panic!("callback panics on purpose"), None)
            .unwrap();
        // The gateway (and its reader) survive.
        let other = gw.remote_exec("channel.send(7)").unwrap();
        assert_eq!(other.receive::<i64>().unwrap(), 7);
        ch.send(&1).unwrap();
        ch.waitclose(Some(T)).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn a_callback_waiting_for_input_gets_an_error_not_a_hang() {
    bounded(LIMIT, || {
        let gw = gw();
        let a = gw
            .remote_exec("import time\ntime.sleep(0.3)\nchannel.send(2)\nchannel.receive()")
            .unwrap();
        let b = gw
            .remote_exec("channel.receive()\nchannel.send('b')\nchannel.receive()")
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let (a2, b2) = (a.clone(), b.clone());
        b.set_callback(
            move |v| {
                // Both need input that only this thread could read: without
                // a deadline they waited forever, with one they timed out.
                let t0 = Instant::now();
                let r1 = a2.receive_value(None).map_err(|e| e.to_string());
                let r2 = b2.waitclose(Some(T)).map_err(|e| e.to_string());
                let _ = tx.send((v, r1, r2, t0.elapsed()));
            },
            None,
        )
        .unwrap();
        // Nothing is queued yet: the callback runs on the reader thread.
        b.send(&"go").unwrap();
        let (v, r1, r2, took) = rx.recv_timeout(T).unwrap();
        assert_eq!(v, Value::str("b"));
        for r in [r1.map(|_| ()), r2] {
            let e = r.unwrap_err();
            assert!(e.starts_with("would wait forever"), "{e}");
        }
        assert!(took < Duration::from_secs(1), "{took:?}");
        // Outside the callback both waits work, and the gateway lives on.
        assert_eq!(a.receive::<i64>().unwrap(), 2);
        a.send(&0).unwrap();
        b.send(&0).unwrap();
        b.waitclose(Some(T)).unwrap();
        a.waitclose(Some(T)).unwrap();
        gw.exit().unwrap();
    })
}

#[test]
fn callback_holding_its_channel_does_not_block_exit() {
    bounded(LIMIT, || {
        let gw = gw();
        let pid = gw.info().pid;
        let ch = gw
            .remote_exec("channel.send(1)\nchannel.receive()")
            .unwrap();
        let me = ch.clone();
        let (tx, rx) = mpsc::channel();
        ch.set_callback(
            move |v| {
                let _keep = &me;
                let _ = tx.send(v);
            },
            Some(Value::str("end")),
        )
        .unwrap();
        assert_eq!(rx.recv_timeout(T).unwrap(), Value::Int(1));
        drop(ch);
        gw.exit().unwrap();
        assert_eq!(rx.recv_timeout(T).unwrap(), Value::str("end"));
        execnet_tests::assert_reaped(pid, T);
    })
}

#[test]
fn a_channel_of_another_gateway_cannot_be_sent() {
    bounded(LIMIT, || {
        let a = gw();
        let b = gw();
        let ch = a.remote_exec("channel.receive()").unwrap();
        let foreign = b.newchannel().unwrap();
        let e = ch.send(&foreign).unwrap_err();
        assert!(e.to_string().contains("belongs to gateway"), "{e}");
        // Nothing was sent; the channel still works.
        ch.send(&1).unwrap();
        ch.waitclose(Some(T)).unwrap();
        // Outside a receive a Channel cannot be made from a bare value.
        let v = execnet::to_value(&foreign).unwrap();
        assert!(execnet::from_value::<execnet::Channel>(v).is_err());
    })
}

#[test]
fn waitclose_in_the_endmarker_callback_gives_the_channel_end() {
    // execnet records a channel's remote error before it calls the
    // endmarker; pytest-xdist's endmarker callback asks for it there
    // (`channel._getremoteerror()`), on the thread that reads the input.
    bounded(LIMIT, || {
        let gw = gw();
        let cases = [
            ("channel.receive()\nraise ValueError('boom')", "ValueError"),
            ("channel.receive()", ""),
        ];
        for (src, want) in cases {
            let ch = gw.remote_exec(src).unwrap();
            let me = ch.clone();
            let (tx, rx) = mpsc::channel();
            ch.set_callback(
                move |v| {
                    if v == Value::str("end") {
                        let first = me.waitclose(Some(T)).map_err(|e| e.to_string());
                        // reported once, as execnet's _getremoteerror
                        let second = me.waitclose(Some(T)).map_err(|e| e.to_string());
                        let _ = tx.send((first, second));
                    }
                },
                Some(Value::str("end")),
            )
            .unwrap();
            ch.send(&1).unwrap();
            let (first, second) = rx.recv_timeout(T).unwrap();
            if want.is_empty() {
                assert_eq!(first, Ok(()));
            } else {
                let e = first.unwrap_err();
                assert!(e.contains(want), "{e}");
            }
            assert_eq!(second, Ok(()));
        }
        gw.exit().unwrap();
    })
}
