//! Test and fuzz support (feature `fuzzing`): the [`Pair`] harness wiring a
//! host and a worker session back to back in memory, the model checker
//! [`run_ops`] used by the property tests and the `session_ops` fuzz target,
//! and the bodies of the fuzz targets (`fuzz/fuzz_targets/*.rs` are one-line
//! wrappers), so `cargo test` replays the committed corpus on stable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;

use crate::codec;
use crate::frame::Deframer;
use crate::{
    ChannelEnd, ChannelId, Config, Event, ExecRequest, LocalError, ProtocolError, Role, Session,
    Status, TerminateReason, Value, WorkerInfo,
};

/// How the harness splits bytes in flight before handing them to
/// `handle_input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunking {
    /// Everything available in one call.
    Whole,
    /// Chunks of exactly this many bytes (1: byte by byte).
    Fixed(usize),
    /// Chunks of random length in `1..=max`, from a seeded generator.
    Random {
        /// Seed of the generator.
        seed: u64,
        /// Largest chunk.
        max: usize,
    },
}

/// A small deterministic generator (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A number in `1..=max` (`max` >= 1).
    pub fn chunk(&mut self, max: usize) -> usize {
        1 + (self.next_u64() % max.max(1) as u64) as usize
    }
}

/// The worker info the harness's worker announces.
pub fn sample_worker_info() -> WorkerInfo {
    WorkerInfo {
        version: 1,
        implementation: "cpython".into(),
        version_info: vec![
            Value::Int(3),
            Value::Int(12),
            Value::Int(1),
            Value::str("final"),
            Value::Int(0),
        ],
        executable: "/usr/bin/python3".into(),
        platform: "linux".into(),
        pid: 4242,
        cwd: "/home/user".into(),
        execmodel: "thread".into(),
    }
}

/// A host and a worker session wired back to back in memory.
///
/// Bytes each side transmits wait in a pipe until delivered (all of them by
/// [`pump`](Pair::pump), or a given number by [`deliver`](Pair::deliver)),
/// split according to the [`Chunking`]. Events are collected per side.
#[derive(Debug)]
pub struct Pair {
    /// The host session.
    pub host: Session,
    /// The worker session.
    pub worker: Session,
    /// How deliveries are split.
    pub chunking: Chunking,
    /// `poll_transmit` limit used when draining a side.
    pub transmit_limit: usize,
    /// Bytes from the host not yet delivered to the worker.
    pub to_worker: Vec<u8>,
    /// Bytes from the worker not yet delivered to the host.
    pub to_host: Vec<u8>,
    /// Events the host emitted, in order (drained by the test).
    pub host_events: Vec<Event>,
    /// Events the worker emitted, in order (drained by the test).
    pub worker_events: Vec<Event>,
    /// The first error `handle_input` returned on the host.
    pub host_error: Option<ProtocolError>,
    /// The first error `handle_input` returned on the worker.
    pub worker_error: Option<ProtocolError>,
    rng: Rng,
}

impl Pair {
    /// A pair with the given config on both sides, delivering whole.
    pub fn new(config: Config) -> Pair {
        Pair::with_chunking(config, Chunking::Whole)
    }

    /// A pair with the given config and chunking.
    pub fn with_chunking(config: Config, chunking: Chunking) -> Pair {
        let options = Value::Dict(vec![
            (Value::str("execmodel"), Value::str("thread")),
            (Value::str("output"), Value::str("forward")),
            (Value::str("debug"), Value::Bool(false)),
        ]);
        let seed = match chunking {
            Chunking::Random { seed, .. } => seed,
            _ => 1,
        };
        Pair {
            host: Session::new_host(config.clone(), options),
            worker: Session::new_worker(config, sample_worker_info()),
            chunking,
            transmit_limit: 256 * 1024,
            to_worker: Vec::new(),
            to_host: Vec::new(),
            host_events: Vec::new(),
            worker_events: Vec::new(),
            host_error: None,
            worker_error: None,
            rng: Rng::new(seed),
        }
    }

    /// The session of `role`.
    pub fn side(&mut self, role: Role) -> &mut Session {
        match role {
            Role::Host => &mut self.host,
            Role::Worker => &mut self.worker,
        }
    }

    /// Drains both sides' transmit output into the pipes and their events
    /// into the event lists.
    pub fn transmit(&mut self) {
        loop {
            let a = self
                .host
                .poll_transmit(&mut self.to_worker, self.transmit_limit);
            let b = self
                .worker
                .poll_transmit(&mut self.to_host, self.transmit_limit);
            if a == 0 && b == 0 {
                break;
            }
        }
        self.collect_events();
    }

    /// Moves pending events into `host_events` / `worker_events`.
    pub fn collect_events(&mut self) {
        while let Some(e) = self.host.poll_event() {
            self.host_events.push(e);
        }
        while let Some(e) = self.worker.poll_event() {
            self.worker_events.push(e);
        }
    }

    /// Delivers up to `max` bytes in flight towards `to` (chunked); returns
    /// how many were delivered.
    pub fn deliver(&mut self, to: Role, max: usize) -> usize {
        let pipe = match to {
            Role::Worker => &mut self.to_worker,
            Role::Host => &mut self.to_host,
        };
        let n = max.min(pipe.len());
        let bytes: Vec<u8> = pipe.drain(..n).collect();
        let mut offset = 0;
        while offset < bytes.len() {
            let len = match self.chunking {
                Chunking::Whole => bytes.len() - offset,
                Chunking::Fixed(k) => k.max(1),
                Chunking::Random { max, .. } => self.rng.chunk(max),
            };
            let end = (offset + len).min(bytes.len());
            let (session, error) = match to {
                Role::Worker => (&mut self.worker, &mut self.worker_error),
                Role::Host => (&mut self.host, &mut self.host_error),
            };
            if let Err(e) = session.handle_input(&bytes[offset..end]) {
                error.get_or_insert(e);
            }
            offset = end;
        }
        self.collect_events();
        n
    }

    /// Transmits and delivers in both directions until nothing moves.
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            self.transmit();
            if self.to_worker.is_empty() && self.to_host.is_empty() {
                return;
            }
            self.deliver(Role::Worker, usize::MAX);
            self.deliver(Role::Host, usize::MAX);
        }
    }

    /// Pumps, returning every item credit as soon as it is delivered.
    pub fn pump_consuming(&mut self) {
        for _ in 0..100_000 {
            self.transmit();
            let mut consumed = false;
            for role in [Role::Host, Role::Worker] {
                let session = self.side(role);
                for (id, _, _) in session.waiting() {
                    if let Some(mut ch) = session.channel(ChannelId(id)) {
                        while ch.recv().is_some() {
                            consumed = true;
                        }
                    }
                }
            }
            self.transmit();
            if self.to_worker.is_empty() && self.to_host.is_empty() && !consumed {
                return;
            }
            self.deliver(Role::Worker, usize::MAX);
            self.deliver(Role::Host, usize::MAX);
        }
    }

    /// Completes the handshake (pump) and clears the handshake events.
    pub fn connect(&mut self) {
        self.pump();
        self.host_events.retain(|e| !matches!(e, Event::Ready(_)));
        self.worker_events
            .retain(|e| !matches!(e, Event::HostHello { .. }));
    }
}

// ---- structured operations (the session_ops target and the proptests) ----

/// A side, for operations.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The host.
    Host,
    /// The worker.
    Worker,
}

impl Side {
    fn role(self) -> Role {
        match self {
            Side::Host => Role::Host,
            Side::Worker => Role::Worker,
        }
    }
}

/// One step of a random scenario.
#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    /// Open a channel on a side.
    Open(Side),
    /// Host: exec on a new channel.
    Exec,
    /// Send an item of about `size` bytes on the `channel`-th known channel.
    Send {
        /// Sending side.
        side: Side,
        /// Index into the side's known channels (modulo).
        channel: u8,
        /// Payload size of the item.
        size: u16,
    },
    /// Close the channel (with an error text if `error`).
    Close {
        /// Closing side.
        side: Side,
        /// Index into the side's known channels (modulo).
        channel: u8,
        /// Close with an error.
        error: bool,
    },
    /// Half-close the channel.
    HalfClose {
        /// Side.
        side: Side,
        /// Index into the side's known channels (modulo).
        channel: u8,
    },
    /// Consume up to `count` delivered items on a side (oldest first).
    Consume {
        /// Consuming side.
        side: Side,
        /// How many.
        count: u8,
    },
    /// Deliver up to `bytes` bytes in flight towards a side.
    Deliver {
        /// Receiving side.
        to: Side,
        /// How many bytes.
        bytes: u16,
    },
    /// Deliver everything in both directions (consuming nothing).
    Pump,
    /// Host: status request.
    Status,
    /// Worker: forward some output.
    Output(u8),
    /// Start a termination from a side.
    Terminate(Side),
}

/// What a run of [`run_ops`] observed: every event of each side in order
/// (after each operation), for comparisons across chunkings.
#[derive(Debug, Default, PartialEq)]
pub struct Trace {
    /// `(operation index, side, event)` in emission order.
    pub events: Vec<(usize, Role, Event)>,
}

#[derive(Default)]
struct SideModel {
    /// Channels this side knows (opened here or named by an event), in
    /// order of discovery.
    known: Vec<ChannelId>,
    known_set: BTreeSet<ChannelId>,
    /// Sequence numbers sent per channel (accepted by `send`).
    sent: BTreeMap<ChannelId, Vec<i64>>,
    /// Sequence numbers received per channel.
    received: BTreeMap<ChannelId, Vec<i64>>,
    /// Channels this side closed (close, close_with_error, half_close Ok).
    closed_by_me: BTreeSet<ChannelId>,
    /// ChannelEnded count per channel.
    ended: BTreeMap<ChannelId, u32>,
    next_seq: i64,
    terminated: bool,
}

impl SideModel {
    fn learn(&mut self, id: ChannelId) {
        if self.known_set.insert(id) {
            self.known.push(id);
        }
    }
    fn pick(&self, index: u8) -> Option<ChannelId> {
        if self.known.is_empty() {
            None
        } else {
            Some(self.known[index as usize % self.known.len()])
        }
    }
}

fn item(seq: i64, size: u16) -> Value {
    Value::Tuple(vec![
        Value::Int(seq),
        Value::Bytes(vec![0xab; size as usize]),
    ])
}

/// Runs `ops` on a [`Pair`] and checks the invariants after every step,
/// panicking on a violation:
///
/// - neither side ever reports a protocol error (both are correct peers);
/// - items of a channel arrive in order, each at most once, and all of them
///   when the sender closed the channel, the receiver did not close it, and
///   no termination intervened;
/// - each channel ends at most once per side during the run, and exactly
///   once after the final close-everything phase;
/// - a side's unconsumed items on one channel never exceed the window.
///
/// Returns the event trace.
/// `now` is the (fixed) time given to `terminate`; no deadline is ever
/// reached.
pub fn run_ops(config: &Config, ops: &[Op], chunking: Chunking, now: Instant) -> Trace {
    let mut pair = Pair::with_chunking(config.clone(), chunking);
    // A transmit limit that is not a multiple of any frame size, so that
    // poll_transmit often stops with a little room left.
    pair.transmit_limit = config.max_frame as usize * 3 + 7;
    let mut models: HashMap<Role, SideModel> = HashMap::new();
    models.insert(Role::Host, SideModel::default());
    models.insert(Role::Worker, SideModel::default());
    let mut trace = Trace::default();
    let mut terminated = false;
    let window = u64::from(config.window.max(1));

    let step = |pair: &mut Pair,
                models: &mut HashMap<Role, SideModel>,
                trace: &mut Trace,
                index: usize,
                op: &Op| {
        match op {
            Op::Open(side) => {
                if let Ok(id) = pair.side(side.role()).open_channel() {
                    model(models, side.role()).learn(id);
                }
            }
            Op::Exec => {
                let request = ExecRequest {
                    source: "pass".into(),
                    call: None,
                };
                if let Ok(id) = pair.host.exec(request) {
                    model(models, Role::Host).learn(id);
                }
            }
            Op::Send {
                side,
                channel,
                size,
            } => {
                let role = side.role();
                let m = model(models, role);
                if let Some(id) = m.pick(*channel) {
                    let seq = m.next_seq;
                    let size = size % 3000;
                    if let Some(mut ch) = pair.side(role).channel(id) {
                        match ch.send(&item(seq, size)) {
                            Ok(()) => {
                                let m = model(models, role);
                                m.next_seq += 1;
                                m.sent.entry(id).or_default().push(seq);
                            }
                            Err(LocalError::WouldBlock)
                            | Err(LocalError::Closed)
                            | Err(LocalError::Terminated)
                            | Err(LocalError::NotReady) => {}
                            Err(e) => panic!("unexpected send error {e:?}"),
                        }
                    }
                }
            }
            Op::Close {
                side,
                channel,
                error,
            } => {
                let role = side.role();
                if let Some(id) = model(models, role).pick(*channel) {
                    if let Some(mut ch) = pair.side(role).channel(id) {
                        let r = if *error {
                            ch.close_with_error("boom")
                        } else {
                            ch.close()
                        };
                        if r.is_ok() {
                            model(models, role).closed_by_me.insert(id);
                        }
                    }
                }
            }
            Op::HalfClose { side, channel } => {
                let role = side.role();
                if let Some(id) = model(models, role).pick(*channel) {
                    if let Some(mut ch) = pair.side(role).channel(id) {
                        if ch.half_close().is_ok() {
                            model(models, role).closed_by_me.insert(id);
                        }
                    }
                }
            }
            Op::Consume { side, count } => {
                take_items(pair, models, side.role(), *count as usize);
            }
            Op::Deliver { to, bytes } => {
                pair.transmit();
                pair.deliver(to.role(), *bytes as usize);
            }
            Op::Pump => pair.pump(),
            Op::Status => {
                let _ = pair.host.request_status();
            }
            Op::Output(n) => {
                let _ = pair.worker.send_output(1 + n % 2, &vec![b'x'; *n as usize]);
            }
            Op::Terminate(side) => {
                pair.side(side.role())
                    .terminate(Some("done"), now, Duration::from_secs(5));
            }
        }
        pair.transmit();
        absorb(pair, models, trace, index, window, now);
    };

    for (index, op) in ops.iter().enumerate() {
        step(&mut pair, &mut models, &mut trace, index, op);
        if matches!(op, Op::Terminate(_)) {
            terminated = true;
        }
    }
    // Final phase 1: deliver and consume everything until nothing moves
    // (items a sender closed behind must all arrive here).
    let end = ops.len();
    settle(&mut pair, &mut models, &mut trace, end, window, now, false);
    // Final phase 2: close every channel on both sides and settle again, so
    // every channel must end.
    settle(&mut pair, &mut models, &mut trace, end, window, now, true);

    assert_eq!(pair.host_error, None, "host saw a protocol error");
    assert_eq!(pair.worker_error, None, "worker saw a protocol error");
    for role in [Role::Host, Role::Worker] {
        let peer = if role == Role::Host {
            Role::Worker
        } else {
            Role::Host
        };
        let m = &models[&role];
        // Every channel a side knows ended exactly once and is forgotten.
        for id in &m.known {
            assert_eq!(
                m.ended.get(id).copied().unwrap_or(0),
                1,
                "{role:?}: channel {id} must end exactly once"
            );
        }
        // Complete delivery of items sent before a close.
        let p = &models[&peer];
        for (id, sent) in &m.sent {
            let got = p.received.get(id).cloned().unwrap_or_default();
            if m.closed_by_me.contains(id) && !p.closed_by_me.contains(id) && !terminated {
                assert_eq!(&got, sent, "{role:?}→{peer:?} channel {id}: items lost");
            }
        }
    }
    let _ = (
        models[&Role::Host].terminated,
        models[&Role::Worker].terminated,
    );
    trace
}

/// Pumps and consumes (and closes every known channel if `close`) until
/// nothing moves.
fn settle(
    pair: &mut Pair,
    models: &mut HashMap<Role, SideModel>,
    trace: &mut Trace,
    index: usize,
    window: u64,
    now: Instant,
    close: bool,
) {
    for _ in 0..10_000 {
        pair.pump();
        absorb(pair, models, trace, index, window, now);
        let mut progress = false;
        for role in [Role::Host, Role::Worker] {
            if take_items(pair, models, role, usize::MAX) {
                progress = true;
            }
            if close {
                let known = model(models, role).known.clone();
                for id in known {
                    if let Some(mut ch) = pair.side(role).channel(id) {
                        if ch.close().is_ok() {
                            progress = true;
                        }
                    }
                }
            }
        }
        pair.transmit();
        absorb(pair, models, trace, index, window, now);
        if !progress && pair.to_host.is_empty() && pair.to_worker.is_empty() {
            return;
        }
    }
    panic!("the pair never settled");
}

fn model(models: &mut HashMap<Role, SideModel>, role: Role) -> &mut SideModel {
    models.entry(role).or_default()
}

/// Takes up to `max` waiting items of `role`'s channels (lowest id first),
/// recording and checking their order. Returns whether it took any.
fn take_items(
    pair: &mut Pair,
    models: &mut HashMap<Role, SideModel>,
    role: Role,
    mut max: usize,
) -> bool {
    let mut took = false;
    let mut ids: Vec<u32> = pair.side(role).waiting().into_iter().map(|w| w.0).collect();
    ids.sort_unstable();
    for id in ids {
        let channel = ChannelId(id);
        while max > 0 {
            let Some(value) = pair
                .side(role)
                .channel(channel)
                .and_then(|mut ch| ch.recv())
            else {
                break;
            };
            max -= 1;
            took = true;
            let seq = match &value {
                Value::Tuple(items) => match items.first() {
                    Some(Value::Int(seq)) => *seq,
                    _ => panic!("unexpected item {value:?}"),
                },
                _ => panic!("unexpected item {value:?}"),
            };
            let m = model(models, role);
            m.learn(channel);
            let got = m.received.entry(channel).or_default();
            assert!(
                got.last().is_none_or(|&last| last < seq),
                "{role:?}: channel {channel}: item {seq} after {got:?}"
            );
            got.push(seq);
        }
    }
    took
}

/// Checks the bound on what a side holds received and not taken: per
/// channel, waiting items never hold more than a window of credit, and
/// buffer at most a window plus the one item reassembled while the
/// application kept up (protocol.md §6.2).
fn check_waiting(session: &Session, role: Role, window: u64) {
    for (id, credits, sizes) in session.waiting() {
        assert!(
            credits <= window,
            "{role:?}: channel {id} holds {credits} > window {window}"
        );
        let total: u64 = sizes.iter().sum();
        let first = sizes.first().copied().unwrap_or(0);
        assert!(
            total <= window + first,
            "{role:?}: channel {id} buffers {total} > window {window} + {first}"
        );
    }
}

/// Moves the pair's events into the models and the trace, checking the
/// per-event invariants.
fn absorb(
    pair: &mut Pair,
    models: &mut HashMap<Role, SideModel>,
    trace: &mut Trace,
    index: usize,
    window: u64,
    now: Instant,
) {
    for role in [Role::Host, Role::Worker] {
        check_waiting(pair.side(role), role, window);
        let events = match role {
            Role::Host => std::mem::take(&mut pair.host_events),
            Role::Worker => std::mem::take(&mut pair.worker_events),
        };
        for event in events {
            let m = model(models, role);
            match &event {
                Event::Readable { channel } => m.learn(*channel),
                Event::ChannelEnded { channel, how } => {
                    m.learn(*channel);
                    let n = m.ended.entry(*channel).or_default();
                    *n += 1;
                    assert_eq!(*n, 1, "{role:?}: channel {channel} ended twice ({how:?})");
                    match how {
                        // A worker-initiated TERMINATE ends the host's open
                        // channels with the worker's reason (protocol.md §8).
                        ChannelEnd::ConnectionLost(ProtocolError::PeerTerminated(_))
                            if role == Role::Host => {}
                        ChannelEnd::ConnectionLost(e) => {
                            panic!("{role:?}: channel {channel} lost: {e}")
                        }
                        _ => {}
                    }
                }
                Event::ExecRequested { channel, .. } => m.learn(*channel),
                Event::StatusRequested { id } => {
                    let status = Status {
                        numchannels: 1,
                        numexecuting: 0,
                        execmodel: "thread".into(),
                    };
                    let _ = pair.worker.reply_status(*id, &status);
                }
                Event::TerminateRequested { .. } => {
                    pair.worker.terminate(None, now, Duration::from_secs(5));
                }
                Event::Terminated { reason } => {
                    assert!(
                        !matches!(reason, TerminateReason::ConnectionLost(_)),
                        "{role:?}: {reason:?}"
                    );
                    m.terminated = true;
                }
                _ => {}
            }
            trace.events.push((index, role, event));
        }
    }
    pair.transmit();
    if !pair.host_events.is_empty() || !pair.worker_events.is_empty() {
        absorb(pair, models, trace, index, window, now);
    }
}

// ---- fuzz target bodies ----

/// `deframer`: arbitrary bytes, split at arbitrary points, give the same
/// frames (or the same error) as in one piece; no frame exceeds max_frame.
pub fn deframer(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let max_frame = 1u32 << (control % 24);
    let chunk = 1 + (control as usize >> 3);
    let run = |pieces: &mut dyn Iterator<Item = &[u8]>| {
        let mut d = Deframer::new();
        let mut frames = Vec::new();
        for piece in pieces {
            let mut input = piece;
            loop {
                match d.next_frame(&mut input, max_frame) {
                    Ok(Some(f)) => {
                        assert!(f.header.length <= max_frame);
                        assert_eq!(f.payload.len(), f.header.length as usize);
                        frames.push((f.header, f.payload.to_vec()));
                    }
                    Ok(None) => break,
                    // (what stays buffered after an error is irrelevant)
                    Err(e) => return (frames, Some(e), 0),
                }
            }
        }
        (frames, None, d.buffered())
    };
    let whole = run(&mut std::iter::once(bytes));
    let split = run(&mut bytes.chunks(chunk));
    assert_eq!(whole, split);
}

/// `value_decode`: decoding never panics; whatever decodes and re-encodes
/// decodes to the same value (NaN-aware).
pub fn value_decode(data: &[u8]) {
    let Ok(value) = codec::decode(data, 200) else {
        return;
    };
    let mut out = Vec::new();
    if codec::encode(&value, &mut out).is_ok() {
        let again = codec::decode(&out, 200).expect("re-encoded value decodes");
        assert!(same_value(&value, &again), "{value:?} != {again:?}");
        let through_serde: Value = crate::from_value(value.clone()).expect("from_value");
        assert!(same_value(&value, &through_serde));
    }
}

/// `session_bytes`: a session in either role fed arbitrary bytes (after a
/// valid HELLO in half the cases) never panics, and its error is sticky.
pub fn session_bytes(data: &[u8]) {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    let config = Config {
        max_frame: 1024,
        window: 2048,
        max_item: 8192,
        max_channels: 16,
        ..Config::default()
    };
    let mut session = if control & 1 == 0 {
        Session::new_host(config.clone(), Value::Dict(vec![]))
    } else {
        Session::new_worker(config.clone(), sample_worker_info())
    };
    if control & 2 != 0 {
        // A valid peer HELLO first, so the fuzzer starts past the handshake.
        let mut pair = Pair::new(config);
        pair.transmit();
        let hello = if control & 1 == 0 {
            pair.deliver(Role::Worker, usize::MAX);
            pair.transmit();
            std::mem::take(&mut pair.to_host)
        } else {
            std::mem::take(&mut pair.to_worker)
        };
        let _ = session.handle_input(&hello);
    }
    let chunk = 1 + (control as usize >> 2);
    let mut out = Vec::new();
    let mut first_error = None;
    for piece in bytes.chunks(chunk) {
        let r = session.handle_input(piece);
        if let Some(e) = &first_error {
            assert_eq!(r.as_ref().err(), Some(e), "errors are sticky");
        } else if let Err(e) = r {
            first_error = Some(e);
        }
        // Act a little, like an application would.
        while let Some(event) = session.poll_event() {
            if let Event::Readable { channel } = event {
                if let Some(mut ch) = session.channel(channel) {
                    while ch.recv().is_some() {}
                    let _ = ch.send(&Value::Int(1));
                }
            }
        }
        out.clear();
        while session.poll_transmit(&mut out, 4096) > 0 {}
    }
    session.handle_eof();
    while session.poll_event().is_some() {}
    assert!(session.is_terminated() || session.error().is_none() || first_error.is_some());
}

/// `session_ops`: structured operations on a [`Pair`] with random chunking
/// keep every invariant of [`run_ops`], and the events do not depend on the
/// chunking. `now` is any instant (the driver's clock stays outside the
/// core).
pub fn session_ops(data: &[u8], now: Instant) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(seed) = u.arbitrary::<u64>() else {
        return;
    };
    let Ok(ops) = u.arbitrary::<Vec<Op>>() else {
        return;
    };
    let config = Config {
        max_frame: 64 + (seed % 512) as u32,
        window: 128 + (seed % 4096) as u32,
        ..Config::default()
    };
    let max = 1 + (seed >> 32) as usize % 64;
    let a = run_ops(&config, &ops, Chunking::Random { seed, max }, now);
    let b = run_ops(&config, &ops, Chunking::Whole, now);
    assert!(same_trace(&a, &b), "the events depend on chunking");
}

/// Traces equal up to NaN (there are no floats in `run_ops` items, so this
/// is plain equality).
pub fn same_trace(a: &Trace, b: &Trace) -> bool {
    a == b
}

/// Structural equality of values where NaN equals NaN and `-0.0` differs
/// from `0.0`.
pub fn same_value(a: &Value, b: &Value) -> bool {
    fn f(a: f64, b: f64) -> bool {
        (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
    }
    fn all(a: &[Value], b: &[Value]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
    }
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => f(*x, *y),
        (Value::Complex(a, b), Value::Complex(c, d)) => f(*a, *c) && f(*b, *d),
        (Value::List(x), Value::List(y))
        | (Value::Tuple(x), Value::Tuple(y))
        | (Value::Set(x), Value::Set(y))
        | (Value::FrozenSet(x), Value::FrozenSet(y)) => all(x, y),
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| same_value(k1, k2) && same_value(v1, v2))
        }
        _ => a == b,
    }
}
