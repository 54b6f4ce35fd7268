//! MultiChannel and its receive queue (ports of execnet's
//! testing/test_multi.py `TestMultiChannelAndGateway` and more).

use std::collections::HashSet;
use std::time::Duration;

use execnet::blocking::{Group, MultiChannel};
use execnet::{Error, Value};
use execnet_tests::{bounded, LIMIT};

const T: Duration = Duration::from_secs(10);

#[test]
fn send_each_receive_each() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen"]).unwrap();
        let mc = group
            .remote_exec("channel.send(channel.receive() + 1)")
            .unwrap();
        assert_eq!(mc.len(), 2);
        mc.send_each(&41).unwrap();
        let got: Vec<i64> = mc.receive_each().unwrap();
        assert_eq!(got, [42, 42]);
        mc.waitclose(Some(T)).unwrap();
    })
}

#[test]
fn receive_each_with_channel() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen"]).unwrap();
        let mc = group
            .remote_exec("import os; channel.send(os.getpid())")
            .unwrap();
        let got: Vec<(execnet::blocking::Channel, u32)> = mc.receive_each_with_channel().unwrap();
        for ((ch, pid), gw) in got.iter().zip(group.gateways()) {
            assert_eq!(ch.gateway().id(), gw.id());
            assert_eq!(*pid, gw.info().pid);
        }
    })
}

#[test]
fn receive_queue_for_two_subprocesses() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen"]).unwrap();
        let mc = group
            .remote_exec("import os; channel.send(os.getpid())")
            .unwrap();
        let q = mc.make_receive_queue(None).unwrap();
        let (ch1, item1) = q.recv_timeout(T).unwrap();
        let (ch2, item2) = q.recv_timeout(T).unwrap();
        assert_ne!(ch1.gateway().id(), ch2.gateway().id());
        assert_ne!(item1, item2);
        let pids: HashSet<i64> = group
            .gateways()
            .iter()
            .map(|g| i64::from(g.info().pid))
            .collect();
        assert!(pids.contains(&item1.as_i64().unwrap()));
        assert!(pids.contains(&item2.as_i64().unwrap()));
        mc.waitclose(Some(T)).unwrap();
        // Both channels ended without endmarkers: the queue says so.
        assert!(matches!(q.recv_timeout(T), Err(Error::EndOfChannel)));
        // Made once.
        let again = mc.make_receive_queue(Some(Value::Null)).unwrap();
        assert!(again.is_empty());
        // Receiving directly is no longer possible.
        assert!(matches!(mc.receive_each::<i64>(), Err(Error::CallbackSet)));
    })
}

#[test]
fn endmarkers_after_terminate() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen", "popen"]).unwrap();
        let mc = group.remote_exec("channel.receive()").unwrap();
        let q = mc.make_receive_queue(Some(Value::str("END"))).unwrap();
        assert!(matches!(
            q.recv_timeout(Duration::from_millis(100)),
            Err(Error::Timeout)
        ));
        group.terminate(Some(Duration::from_secs(1)));
        let mut ended = HashSet::new();
        for _ in 0..3 {
            let (ch, v) = q.recv_timeout(T).unwrap();
            assert_eq!(v, Value::str("END"));
            assert!(ended.insert(ch.gateway().id().to_string()));
        }
        assert!(matches!(q.recv_timeout(T), Err(Error::EndOfChannel)));
    })
}

#[test]
fn endmarkers_for_every_kind_of_end() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen//id=closes", "popen//id=raises", "popen//id=killed"])
            .unwrap();
        let mc = group
            .remote_exec(
                r#"
                what = channel.receive()
                if what == "raise":
                    raise ValueError("boom")
                elif what == "wait":
                    channel.receive()
                "#,
            )
            .unwrap();
        let q = mc.make_receive_queue(Some(Value::Null)).unwrap();
        mc.get(0).unwrap().send(&"close").unwrap();
        mc.get(1).unwrap().send(&"raise").unwrap();
        mc.get(2).unwrap().send(&"wait").unwrap();
        let mut seen = HashSet::new();
        for _ in 0..2 {
            let (ch, v) = q.recv_timeout(T).unwrap();
            assert_eq!(v, Value::Null);
            seen.insert(ch.gateway().id().to_string());
        }
        assert_eq!(
            seen,
            HashSet::from(["closes".to_string(), "raises".to_string()])
        );
        group.get("killed").unwrap().kill();
        let (ch, v) = q.recv_timeout(T).unwrap();
        assert_eq!((ch.gateway().id(), v), ("killed", Value::Null));
        assert!(matches!(q.recv_timeout(T), Err(Error::EndOfChannel)));
        // waitclose: the killed worker's death is returned at once.
        let e = mc.waitclose(Some(T)).unwrap_err();
        assert!(
            matches!(e, Error::Remote(_) | Error::WorkerDied { .. }),
            "{e}"
        );
    })
}

#[test]
fn waitclose_reraises_the_first_remote_error() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen", "popen", "popen"]).unwrap();
        let mc = group
            .remote_exec(
                r#"
                n = channel.receive()
                if n:
                    raise KeyError("error %d" % n)
                "#,
            )
            .unwrap();
        for (i, ch) in mc.channels().iter().enumerate() {
            ch.send(&(i as i64)).unwrap();
        }
        let e = mc.waitclose(Some(T)).unwrap_err();
        let r = e.as_remote().expect("a remote error");
        assert_eq!(r.exception_type(), Some("KeyError"));
        assert!(r.message().contains("error 1"), "{}", r.message());
        // Reported once.
        mc.waitclose(Some(T)).unwrap();
    })
}

#[test]
fn waitclose_times_out() {
    bounded(LIMIT, || {
        let group = Group::with_specs(["popen"]).unwrap();
        let mc = group.remote_exec("channel.receive()").unwrap();
        assert!(matches!(
            mc.waitclose(Some(Duration::from_millis(200))),
            Err(Error::Timeout)
        ));
        mc.send_each(&1).unwrap();
        mc.waitclose(Some(T)).unwrap();
    })
}

#[test]
fn multichannel_from_plain_channels() {
    bounded(LIMIT, || {
        let gw = execnet_tests::gw();
        let chans = (0..3)
            .map(|i| gw.remote_exec(&format!("channel.send({i})")).unwrap())
            .collect();
        let mc = MultiChannel::new(chans);
        let got: Vec<i64> = mc.receive_each().unwrap();
        assert_eq!(got, [0, 1, 2]);
    })
}

#[test]
fn async_receive_queue() {
    bounded(LIMIT, || {
        smol::block_on(async {
            let group = execnet::Group::with_specs(["popen", "popen"])
                .await
                .unwrap();
            let mc = group
                .remote_exec("for i in range(3): channel.send(i)")
                .await
                .unwrap();
            let q = mc.make_receive_queue(Some(Value::str("end"))).unwrap();
            let mut items = Vec::new();
            let mut ends = 0;
            loop {
                match q.recv().await {
                    Ok((_, v)) if v == Value::str("end") => ends += 1,
                    Ok((_, v)) => items.push(v.as_i64().unwrap()),
                    Err(Error::EndOfChannel) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            items.sort();
            assert_eq!(items, [0, 0, 1, 1, 2, 2]);
            assert_eq!(ends, 2);
        })
    })
}
