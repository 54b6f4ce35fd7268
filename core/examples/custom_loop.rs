//! Drives a real Python worker with nothing but `std::process` pipes and a
//! plain loop: no async runtime, no threads. This is the embedding story for
//! programs that have their own event loop: feed the session what you read,
//! write what it transmits, act on its events.
//!
//! ```text
//! cargo run -p execnet-core --example custom_loop [python3]
//! ```
//!
//! The loop here alternates between flushing everything the session wants
//! to send and one blocking read. That is fine for a conversation like this
//! one; a driver moving bulk data both ways at once must read and write
//! independently (a reader thread, or non-blocking I/O in its own poller),
//! or both sides can block writing into full pipes.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use execnet_core::{ChannelEnd, Config, Event, ExecRequest, Session, Value};

const SOURCE: &str = r#"
import sys
print("hello from", sys.implementation.name, sys.version.split()[0])
while True:
    item = channel.receive()
    if item is None:
        break
    channel.send((item, item * 2))
"#;

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    session: Session,
}

impl Worker {
    /// protocol.md §1: `python -u -c LOADER`, then the compressed worker
    /// source on stdin; frames may follow at once.
    fn spawn(python: &str) -> std::io::Result<Worker> {
        let compressed = execnet_bootstrap::worker_compressed();
        let mut child = Command::new(python)
            .arg("-u")
            .arg("-c")
            .arg(execnet_bootstrap::loader(compressed.len()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        stdin.write_all(compressed)?;
        let options = Value::Dict(vec![
            (Value::str("execmodel"), Value::str("thread")),
            (Value::str("output"), Value::str("forward")),
        ]);
        let session = Session::new_host(Config::default(), options);
        Ok(Worker {
            child,
            stdin,
            stdout,
            session,
        })
    }

    /// The run loop: transmit everything, hand every event to `on_event`
    /// (which may issue commands and returns `true` when we are done; if
    /// any event came, go round again so its commands are transmitted), then
    /// block on one read.
    fn run(
        &mut self,
        mut on_event: impl FnMut(&mut Session, Event) -> bool,
    ) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(64 * 1024);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // 1. transmit
            loop {
                out.clear();
                if self.session.poll_transmit(&mut out, 64 * 1024) == 0 {
                    break;
                }
                if let Err(e) = self.stdin.write_all(&out) {
                    // The worker may exit right after its TERMINATE.
                    if !self.session.is_terminated() {
                        return Err(e);
                    }
                }
            }
            let _ = self.stdin.flush();
            // 2. events
            let mut done = false;
            let mut handled = false;
            while let Some(event) = self.session.poll_event() {
                handled = true;
                done |= on_event(&mut self.session, event);
            }
            if done {
                // commands issued by the handler still need transmitting
                loop {
                    out.clear();
                    if self.session.poll_transmit(&mut out, 64 * 1024) == 0 {
                        break;
                    }
                    let _ = self.stdin.write_all(&out);
                }
                return Ok(());
            }
            if handled {
                // the handler may have issued commands: transmit before
                // blocking on a read
                continue;
            }
            // 3. timers
            if let Some(deadline) = self.session.poll_timeout() {
                if Instant::now() >= deadline {
                    self.session.handle_timeout(Instant::now());
                    continue;
                }
            }
            // 4. one blocking read
            match self.stdout.read(&mut buf)? {
                0 => self.session.handle_eof(),
                n => {
                    if let Err(e) = self.session.handle_input(&buf[..n]) {
                        eprintln!("protocol violation: {e}");
                    }
                }
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let python = std::env::args().nth(1).unwrap_or_else(|| "python3".into());
    let mut w = Worker::spawn(&python)?;

    // Pipelined: exec and items go out right behind the HELLO.
    let ch = w.session.exec(ExecRequest {
        source: SOURCE.into(),
        call: None,
    })?;
    for i in [1i64, 20, 300] {
        w.session.channel(ch).expect("open").send(&Value::Int(i))?;
    }
    w.session.channel(ch).expect("open").send(&Value::Null)?;

    let mut replies = 0;
    let mut status_asked = false;
    w.run(|session, event| {
        match event {
            Event::Ready(info) => println!(
                "worker ready: {} {:?} pid {} ({})",
                info.implementation, info.version_info, info.pid, info.executable
            ),
            Event::Output { fd, bytes } => {
                print!("[worker fd {fd}] {}", String::from_utf8_lossy(&bytes))
            }
            Event::Readable { channel } => {
                // Take every waiting item: their credit goes back as they
                // are taken.
                if let Some(mut c) = session.channel(channel) {
                    while let Some(value) = c.recv() {
                        println!("channel {channel}: {value:?}");
                        replies += 1;
                    }
                }
            }
            Event::ChannelEnded { channel, how } => {
                println!("channel {channel} ended: {how:?}");
                if how == ChannelEnd::Closed && !status_asked {
                    status_asked = true;
                    let _ = session.request_status();
                }
            }
            Event::StatusReply { status, .. } => {
                println!("status: {status:?}");
                session.terminate(Some("bye"), Instant::now(), Duration::from_secs(5));
            }
            Event::Terminated { reason } => {
                println!("session over: {reason:?}");
                return true;
            }
            _ => {}
        }
        false
    })?;
    drop(w.stdin);
    let status = w.child.wait()?;
    println!("worker exited: {status}");
    assert_eq!(replies, 3);
    Ok(())
}
