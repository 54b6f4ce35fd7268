//! The host driver tested without Python: an in-memory transport pairs the
//! real driver (reader thread, flusher, leader/follower, waits) with a
//! worker-role `Session` from the core, driven by a small scripted worker on
//! a thread of its own. Ordering, flow control, termination and error paths
//! run deterministically, in milliseconds (issue 15, item 6).
//!
//! The scripted worker understands these exec "sources" (not Python):
//! - `echo`: sends every item back, in order.
//! - `send N`: sends the ints 0..N, then closes.
//! - `sum`: adds the ints it receives until a `None`, then sends the sum.
//! - `hold`: never consumes what it receives (the host's window fills).
//! - `fail`: closes the channel with the error text `boom`.
//! - `die`: the worker's end of the stream goes away, without TERMINATE.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use execnet::blocking::{Channel, Gateway};
use execnet::transport::{PeerControl, Transport};
use execnet::{Error, ExitStatus, Value};
use execnet_core::{Config, Event, Session, WorkerInfo};

// ---------------------------------------------------------------- the pipe

/// One direction of an in-memory byte stream: unbounded (the protocol's
/// windows bound what is in flight), closed when the writer goes.
#[derive(Default)]
struct Pipe {
    state: Mutex<(VecDeque<u8>, bool)>,
    cv: Condvar,
}

struct PipeReader(Arc<Pipe>);
struct PipeWriter(Arc<Pipe>);

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut st = self.0.state.lock().unwrap();
        while st.0.is_empty() && !st.1 {
            st = self.0.cv.wait(st).unwrap();
        }
        let n = buf.len().min(st.0.len());
        for (i, b) in st.0.drain(..n).enumerate() {
            buf[i] = b;
        }
        Ok(n)
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.0.state.lock().unwrap();
        if st.1 {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        st.0.extend(buf);
        self.0.cv.notify_all();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().1 = true;
        self.0.cv.notify_all();
    }
}

fn pipe() -> (PipeReader, PipeWriter) {
    let p = Arc::new(Pipe::default());
    (PipeReader(p.clone()), PipeWriter(p))
}

// ---------------------------------------------------------- scripted worker

/// What the worker does with one channel.
enum Script {
    Echo,
    Sum(i64),
    Hold,
}

/// Runs a worker-role session over the pipes until its session ends or the
/// host's stream does.
fn worker(mut input: PipeReader, mut output: impl Write) {
    let info = WorkerInfo {
        implementation: "scripted".into(),
        version_info: vec![Value::Int(3), Value::Int(12), Value::Int(0)],
        executable: "in-memory".into(),
        platform: "test".into(),
        pid: 1,
        cwd: "/".into(),
        execmodel: "thread".into(),
        ..WorkerInfo::default()
    };
    let mut s = Session::new_worker(Config::default(), info);
    let mut scripts: HashMap<u32, Script> = HashMap::new();
    // Items a full window refused, per channel, to send on WindowOpened.
    let mut backlog: HashMap<u32, VecDeque<Value>> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut wire = Vec::new();
    loop {
        while s.poll_transmit(&mut wire, 64 * 1024) > 0 {}
        if !wire.is_empty() {
            let _ = output.write_all(&wire);
            wire.clear();
        }
        let mut acted = false;
        while let Some(ev) = s.poll_event() {
            acted = true;
            match ev {
                Event::ExecRequested { channel, request } => {
                    let words: Vec<&str> = request.source.split_whitespace().collect();
                    match words.as_slice() {
                        ["echo"] => {
                            scripts.insert(channel.0, Script::Echo);
                        }
                        ["sum"] => {
                            scripts.insert(channel.0, Script::Sum(0));
                        }
                        ["hold"] => {
                            scripts.insert(channel.0, Script::Hold);
                        }
                        ["send", n] => {
                            let n: i64 = n.parse().unwrap();
                            let q = backlog.entry(channel.0).or_default();
                            q.extend((0..n).map(Value::Int));
                            q.push_back(Value::Null); // marker: close after
                        }
                        ["fail"] => {
                            let _ = s.channel(channel).unwrap().close_with_error("boom");
                        }
                        ["die"] => {
                            // Both ends of the stream go, without a word.
                            return;
                        }
                        other => panic!("unknown script {other:?}"),
                    }
                }
                Event::Readable { channel } => match scripts.get_mut(&channel.0) {
                    Some(Script::Echo) => {
                        let mut c = s.channel(channel).unwrap();
                        while let Some(value) = c.recv() {
                            backlog.entry(channel.0).or_default().push_back(value);
                        }
                    }
                    Some(Script::Sum(total)) => {
                        let mut c = s.channel(channel).unwrap();
                        while let Some(value) = c.recv() {
                            match value.as_i64() {
                                Some(n) => *total += n,
                                None => backlog
                                    .entry(channel.0)
                                    .or_default()
                                    .push_back(Value::Int(*total)),
                            }
                        }
                    }
                    // Items wait in the session unconsumed.
                    Some(Script::Hold) | None => {}
                },
                Event::ChannelEnded { channel, .. } => {
                    scripts.remove(&channel.0);
                    if let Some(mut c) = s.channel(channel) {
                        let _ = c.close();
                    }
                }
                Event::TerminateRequested { .. } => {
                    s.terminate(None, Instant::now(), Duration::from_secs(5));
                }
                Event::Terminated { .. } => {}
                _ => {}
            }
        }
        // Send what waits, as far as each window allows.
        for (&id, q) in backlog.iter_mut() {
            while let Some(v) = q.front() {
                let Some(mut c) = s.channel(execnet_core::ChannelId(id)) else {
                    q.clear();
                    break;
                };
                let r = if matches!(v, Value::Null) {
                    c.close()
                } else {
                    c.send(v)
                };
                match r {
                    Err(execnet_core::LocalError::WouldBlock) => break,
                    _ => {
                        acted = true;
                        q.pop_front();
                    }
                }
            }
        }
        if s.is_terminated() {
            while s.poll_transmit(&mut wire, 64 * 1024) > 0 {}
            let _ = output.write_all(&wire);
            return;
        }
        if acted {
            continue;
        }
        let n = input.read(&mut buf).unwrap_or(0);
        if n == 0 {
            s.handle_eof();
            return;
        }
        if s.handle_input(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A gateway over the in-memory transport, and the worker's thread.
fn pair(config: Config) -> (Gateway, JoinHandle<()>) {
    let (to_worker_r, to_worker_w) = pipe();
    let (to_host_r, to_host_w) = pipe();
    let t = std::thread::spawn(move || worker(to_worker_r, to_host_w));
    let transport = Transport {
        reader: Box::new(to_host_r),
        writer: Box::new(to_worker_w),
        control: None,
        description: "in-memory".into(),
    };
    let gw = Gateway::builder("popen//id=mem")
        .unwrap()
        .config(config)
        .start_with_transport(transport)
        .unwrap();
    (gw, t)
}

/// A worker-side control over a real OS pipe: it can wait for input
/// without reading (`wait_readable`, a poll), so receives with a deadline
/// may lead; the worker is a thread, so it is "reaped" at once.
struct PollControl(std::os::fd::OwnedFd);

impl PeerControl for PollControl {
    fn kill(&self) {}
    fn wait(&self, _timeout: Duration) -> Option<ExitStatus> {
        Some(ExitStatus::Unknown)
    }
    fn wait_readable(&self, timeout: Duration) -> Option<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let ts = Timespec::try_from(timeout).ok()?;
        let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
        Some(!matches!(
            poll(&mut fds, Some(&ts)),
            Ok(0) | Err(rustix::io::Errno::INTR)
        ))
    }
}

/// Like [`pair`], with the worker-to-host direction through an OS pipe and
/// a [`PollControl`] on it.
fn polled_pair() -> (Gateway, JoinHandle<()>) {
    let (to_worker_r, to_worker_w) = pipe();
    let (host_r, worker_w) = std::io::pipe().unwrap();
    let dup = std::os::fd::AsFd::as_fd(&host_r)
        .try_clone_to_owned()
        .unwrap();
    let t = std::thread::spawn(move || worker(to_worker_r, worker_w));
    let transport = Transport {
        reader: Box::new(host_r),
        writer: Box::new(to_worker_w),
        control: Some(Box::new(PollControl(dup))),
        description: "os pipe".into(),
    };
    let gw = Gateway::builder("popen//id=polled")
        .unwrap()
        .start_with_transport(transport)
        .unwrap();
    (gw, t)
}

fn small_window() -> Config {
    Config {
        window: 64,
        ..Config::default()
    }
}

fn ints(ch: &Channel, n: usize) -> Vec<i64> {
    (0..n).map(|_| ch.receive::<i64>().unwrap()).collect()
}

// ------------------------------------------------------------------ tests

#[test]
fn handshake_gives_the_worker_info() {
    let (gw, t) = pair(Config::default());
    let info = gw.info();
    assert_eq!(info.implementation, "scripted");
    assert_eq!(info.executable, "in-memory");
    assert_eq!((info.version_info.major, info.version_info.minor), (3, 12));
    gw.exit().unwrap();
    t.join().unwrap();
}

#[test]
fn items_come_back_in_order() {
    let (gw, t) = pair(Config::default());
    let ch = gw.remote_exec("echo").unwrap();
    for i in 0..1000i64 {
        ch.send(&i).unwrap();
    }
    assert_eq!(ints(&ch, 1000), (0..1000).collect::<Vec<_>>());
    ch.close().unwrap();
    gw.exit().unwrap();
    t.join().unwrap();
}

#[test]
fn a_window_of_64_bytes_still_carries_every_item_both_ways() {
    let (gw, t) = pair(small_window());
    // Worker to host: 2000 items through a 64-byte window, so the driver
    // must return credit as items are received.
    let ch = gw.remote_exec("send 2000").unwrap();
    assert_eq!(ints(&ch, 2000), (0..2000).collect::<Vec<_>>());
    assert!(matches!(ch.receive::<i64>(), Err(Error::EndOfChannel)));
    // Host to worker: sends wait for the worker's credit.
    let ch = gw.remote_exec("sum").unwrap();
    for i in 0..2000i64 {
        ch.send(&i).unwrap();
    }
    ch.send(&()).unwrap();
    assert_eq!(ch.receive::<i64>().unwrap(), 1_999_000);
    gw.exit().unwrap();
    t.join().unwrap();
}

#[test]
fn the_sum_comes_after_every_item() {
    let (gw, t) = pair(small_window());
    let ch = gw.remote_exec("sum").unwrap();
    for i in 1..=1000i64 {
        ch.send(&i).unwrap();
    }
    ch.send(&()).unwrap();
    assert_eq!(ch.receive::<i64>().unwrap(), 500_500);
    gw.exit().unwrap();
    t.join().unwrap();
}

#[test]
fn a_full_window_makes_a_send_with_a_deadline_time_out() {
    let (gw, t) = pair(small_window());
    let ch = gw.remote_exec("hold").unwrap();
    let mut timed_out = false;
    for i in 0..1000i64 {
        match ch.send_timeout(&i, Duration::from_millis(50)) {
            Ok(()) => {}
            Err(Error::Timeout) => {
                timed_out = true;
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        timed_out,
        "a worker that never consumes never blocked a send"
    );
    // The gateway is still usable on other channels.
    let echo = gw.remote_exec("echo").unwrap();
    echo.send(&7i64).unwrap();
    assert_eq!(echo.receive::<i64>().unwrap(), 7);
    gw.exit().unwrap();
    t.join().unwrap();
}

#[test]
fn a_remote_error_is_reported_once_then_the_channel_reads_as_ended() {
    let (gw, t) = pair(Config::default());
    let ch = gw.remote_exec("fail").unwrap();
    match ch.receive::<i64>() {
        Err(Error::Remote(e)) => assert!(e.to_string().contains("boom"), "{e}"),
        other => panic!("expected the remote error, got {other:?}"),
    }
    assert!(matches!(ch.receive::<i64>(), Err(Error::EndOfChannel)));
    gw.exit().unwrap();
    t.join().unwrap();
}

#[test]
fn a_lost_stream_ends_every_channel_with_an_error() {
    let (gw, t) = pair(Config::default());
    let waiting = gw.remote_exec("echo").unwrap();
    let _die = gw.remote_exec("die").unwrap();
    match waiting.receive::<i64>() {
        Err(Error::ConnectionLost(_)) => {}
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(matches!(
        waiting.receive::<i64>(),
        Err(Error::ConnectionLost(_))
    ));
    drop(gw);
    t.join().unwrap();
}

#[test]
fn exit_is_a_clean_termination_answered_by_the_worker() {
    let (gw, t) = pair(Config::default());
    let ch = gw.remote_exec("echo").unwrap();
    ch.send(&1i64).unwrap();
    assert_eq!(ch.receive::<i64>().unwrap(), 1);
    gw.exit().unwrap();
    assert!(gw.is_terminated());
    // The channel ended with the session.
    assert!(ch.receive::<i64>().is_err());
    t.join().unwrap();
}

#[test]
fn a_callback_sees_every_item_then_the_endmarker() {
    let (gw, t) = pair(small_window());
    let ch = gw.remote_exec("send 500").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    ch.set_callback(move |v| s.lock().unwrap().push(v), Some(Value::str("end")))
        .unwrap();
    ch.waitclose(Some(Duration::from_secs(10))).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 501);
    for (i, v) in seen[..500].iter().enumerate() {
        assert_eq!(v.as_i64(), Some(i as i64));
    }
    assert_eq!(seen[500], Value::str("end"));
    drop(seen);
    gw.exit().unwrap();
    t.join().unwrap();
}

// ------------------------------------------------- leading with a deadline

#[test]
fn a_receive_with_a_deadline_leads_when_the_transport_can_poll() {
    // Items of `echo` go to a callback, which runs on whichever thread
    // reads the input. While this thread waits with a deadline on `idle`
    // (which never gets an item) it is a candidate for the read token, and
    // on a pollable transport it reads itself, its read bounded by the
    // deadline: so some echo must be run by this very thread. (Before
    // deadline-bounded leading, a receive with a deadline never read, and
    // every callback ran on the reader thread.)
    let (gw, t) = polled_pair();
    let idle = gw.remote_exec("hold").unwrap();
    let echo = gw.remote_exec("echo").unwrap();
    let me = std::thread::current().id();
    let ran_here = Arc::new(Mutex::new(0usize));
    let r = ran_here.clone();
    echo.set_callback(
        move |_| {
            if std::thread::current().id() == me {
                *r.lock().unwrap() += 1;
            }
        },
        None,
    )
    .unwrap();
    for i in 0..50i64 {
        echo.send(&i).unwrap();
        // Nothing ever arrives on `idle`: the read must end at the deadline.
        assert!(matches!(
            idle.receive_timeout::<i64>(Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
        if *ran_here.lock().unwrap() > 0 {
            break;
        }
    }
    assert!(
        *ran_here.lock().unwrap() > 0,
        "no input was read by the receiving thread"
    );
    // The gateway works on as before.
    let again = gw.remote_exec("echo").unwrap();
    again.send(&5i64).unwrap();
    assert_eq!(
        again
            .receive_timeout::<i64>(Duration::from_secs(10))
            .unwrap(),
        5
    );
    gw.exit().unwrap();
    t.join().unwrap();
}

#[test]
fn a_leading_receive_with_a_deadline_still_gets_its_item() {
    // Items that arrive while this thread leads with a deadline are taken
    // at once, in order, and a zero deadline only peeks.
    let (gw, t) = polled_pair();
    let ch = gw.remote_exec("echo").unwrap();
    assert!(matches!(
        ch.receive_timeout::<i64>(Duration::ZERO),
        Err(Error::Timeout)
    ));
    for i in 0..200i64 {
        ch.send(&i).unwrap();
        assert_eq!(
            ch.receive_timeout::<i64>(Duration::from_secs(10)).unwrap(),
            i
        );
    }
    gw.exit().unwrap();
    t.join().unwrap();
}
