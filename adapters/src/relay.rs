//! The relay behind `via=` and `installvia=`: how a [`Gateway`] serves as
//! the [`Through`] of another gateway's start.
//!
//! A small relay ([`RELAY`]) runs in the intermediate worker: it starts the
//! target process there, in a session of its own, and its threads pump the
//! target's stdout to a data channel (made here) as bytes items, its stderr
//! as str items, and finally its exit status as an int. Bytes items from us
//! go to the target's stdin; the end of the channel closes it. A second
//! channel carries kill requests, so that [`PeerControl::kill`] never waits
//! behind data. The relay's exec returns as soon as the target runs: an
//! intermediate worker with `execmodel=main_thread_only` (pytest-xdist's
//! `--px`) relays any number of targets, where a relay that held its exec
//! would let only one start at a time (execnet refuses the second with a
//! deadlock error). The host side is an
//! ordinary [`Transport`]: the bootstrap and the whole protocol session go
//! through the relay, and a via gateway can itself be the intermediate of
//! //! another one (chains). What runs there is decided by `transport::via`;
//! `installvia=` runs `bootstrap/socketserver.py` in the intermediate
//! worker instead (`transport::socket`).
//!
//! This module sits above both the transports and the gateways (it uses
//! channels to make a transport), which keeps `transport` free of
//! gateways: the modules form no import cycle.
//!
//! The control and data channels travel as the exec channel's first two
//! items rather than in the call's kwargs: a channel inside
//! `remote_exec_call` kwargs currently ends the intermediate gateway's
//! session (a worker bug, reported separately).

use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

use execnet_core::Value;

use crate::channel::Channel;
use crate::error::{Error, ExitStatus, Result};
use crate::gateway::Gateway;
use crate::sync::lock;
use crate::transport::process::Shared;
use crate::transport::{socket, PeerControl, Through, ThroughFuture, Transport, STARTUP_TIMEOUT};

/// How many bytes of the target's stderr are kept.
const STDERR_TAIL: usize = 8 * 1024;

/// The relay, run in the intermediate worker with `relay(channel, argv,
/// env)`; the first item it receives is the control channel (sent as an
/// item rather than in the call's kwargs: see the module docs). `argv[0] is
/// None`: that worker's own interpreter.
pub(crate) const RELAY: &str = r#"
import os, signal, subprocess, sys, threading

def relay(channel, argv, env):
    # Both channels come as items (see the module docs). `data` carries the
    # target's bytes; this exec returns as soon as the target runs, so the
    # intermediate worker's main thread (execmodel=main_thread_only) is
    # free for the next relay: its threads do the pumping.
    ctl = channel.receive()
    data = channel.receive()
    if argv[0] is None:
        argv = [sys.executable] + list(argv[1:])
    environ = dict(os.environ)
    environ.update(env)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=environ, bufsize=0,
                                start_new_session=True)
    except OSError as e:
        data.send("relay: cannot start %s: %s\n" % (argv[0], e))
        data.send(127)
        return

    def kill(_item=None):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    ctl.setcallback(kill)

    def pump(f, wrap):
        fd = f.fileno()
        while True:
            try:
                got = os.read(fd, 65536)
            except OSError:
                got = b""
            if not got:
                return
            try:
                data.send(wrap(got))
            except Exception:
                kill()
                return

    def feed():
        fd = proc.stdin.fileno()
        try:
            while True:
                item = data.receive()
                while item:
                    item = item[os.write(fd, item):]
        except Exception:
            pass  # the end of the channel, or the target stopped reading
        try:
            proc.stdin.close()
        except OSError:
            pass

    pumps = [threading.Thread(target=pump, args=(proc.stdout, bytes)),
             threading.Thread(target=pump, args=(proc.stderr,
                                                 lambda b: b.decode("utf-8", "replace")))]

    def finish():
        for t in pumps:
            t.join()
        rc = proc.wait()
        try:
            data.send(rc)
        except Exception:
            pass
    for t in pumps + [threading.Thread(target=feed), threading.Thread(target=finish)]:
        t.daemon = True
        t.start()
"#;

#[derive(Serialize)]
struct RelayArgs<'a> {
    argv: Vec<Option<String>>,
    env: std::collections::BTreeMap<&'a str, &'a str>,
}

/// What the relay reported, shared by the reader and the control.
#[derive(Default)]
struct RelayState {
    inner: Mutex<RelayInner>,
    cv: Condvar,
}

#[derive(Default)]
struct RelayInner {
    status: Option<ExitStatus>,
    ended: bool,
    /// Why the relay channel ended, if not with the target's exit status.
    lost: Option<String>,
    stderr: Vec<u8>,
}

impl Through for Gateway {
    fn id(&self) -> &str {
        Gateway::id(self)
    }

    fn relay_process(
        &self,
        argv: Vec<Option<String>>,
        env: Vec<(String, String)>,
        description: String,
    ) -> ThroughFuture<'_, (Transport, Arc<dyn PeerControl>)> {
        Box::pin(async move {
            let (transport, control) = relay(self, argv, &env, description).await?;
            Ok((transport, control as Arc<dyn PeerControl>))
        })
    }

    fn install_socket_server(&self, bind: String, token: String) -> ThroughFuture<'_, String> {
        Box::pin(async move {
            let ch = self
                .remote_exec_call(
                    execnet_bootstrap::SOCKETSERVER_SOURCE,
                    "installvia",
                    &serde_json::json!({ "bind": bind, "token": token }),
                )
                .await?;
            let served: String = ch.receive().await?;
            let _ = ch.waitclose(Some(socket::CONNECT_TIMEOUT)).await;
            Ok(served)
        })
    }
}

/// Starts `argv` through `via`'s relay (see the module docs).
async fn relay(
    via: &Gateway,
    argv: Vec<Option<String>>,
    env: &[(String, String)],
    description: String,
) -> Result<(Transport, Arc<RelayControl>)> {
    let ctl = via.newchannel()?;
    let args = RelayArgs {
        argv,
        env: env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
    };
    let ch = via.newchannel()?;
    let exec = via.remote_exec_call(RELAY, "relay", &args).await?;
    exec.send(&ctl).await?;
    exec.send(&ch).await?;
    // The relay returns once the target runs; an error there (a bug, or a
    // worker that cannot run threads) ends the exec channel with it.
    exec.waitclose(Some(STARTUP_TIMEOUT)).await?;
    match ch
        .send_value(&Value::Bytes(
            execnet_bootstrap::worker_compressed().to_vec(),
        ))
        .await
    {
        // The target could not start: the relay reported why and its
        // status, and ended the data channel. The reader below takes both
        // and the start's probe turns them into the error
        // (InterpreterNotFound, ...), not this send.
        Err(Error::ChannelClosed) => {}
        r => r?,
    }
    let state = Arc::new(RelayState::default());
    let control = Arc::new(RelayControl {
        ctl,
        state: state.clone(),
        via: via.id().to_string(),
    });
    let transport = Transport {
        reader: Box::new(RelayReader {
            ch: ch.clone(),
            state: state.clone(),
            pending: Vec::new(),
            pos: 0,
        }),
        writer: Box::new(RelayWriter { ch }),
        control: Some(Box::new(Shared(control.clone()))),
        description,
    };
    Ok((transport, control))
}

/// The target's stdout, from the relay channel.
struct RelayReader {
    ch: Channel,
    state: Arc<RelayState>,
    pending: Vec<u8>,
    pos: usize,
}

impl Read for RelayReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pos);
                buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match crate::driver::block_on(self.ch.receive_value(None)) {
                Ok(Value::Bytes(b)) => {
                    self.pending = b;
                    self.pos = 0;
                }
                Ok(Value::Str(s)) => {
                    let mut g = lock(&self.state.inner);
                    g.stderr.extend_from_slice(s.as_bytes());
                    let excess = g.stderr.len().saturating_sub(STDERR_TAIL);
                    g.stderr.drain(..excess);
                }
                Ok(v) => {
                    let status = match v.as_i64().and_then(|c| i32::try_from(c).ok()) {
                        Some(c) if c < 0 => ExitStatus::Signal(-c),
                        Some(c) => ExitStatus::Code(c),
                        None => ExitStatus::Unknown,
                    };
                    // The target is gone: close our side, so the relay ends.
                    let _ = self.ch.close();
                    self.end(Some(status), None);
                    return Ok(0);
                }
                Err(e) => {
                    let lost = if !e.is_eof() {
                        Some(e.to_string())
                    } else if self.ch.gateway().is_terminated() {
                        Some("it was terminated".to_string())
                    } else {
                        None
                    };
                    self.end(None, lost);
                    return Ok(0);
                }
            }
        }
    }
}

impl RelayReader {
    fn end(&self, status: Option<ExitStatus>, lost: Option<String>) {
        let mut g = lock(&self.state.inner);
        if g.ended {
            return;
        }
        g.ended = true;
        g.status = status;
        g.lost = lost;
        self.state.cv.notify_all();
    }
}

/// Bytes to the target's stdin, as items on the relay channel.
struct RelayWriter {
    ch: Channel,
}

impl Write for RelayWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::driver::block_on(self.ch.send_value(&Value::Bytes(buf.to_vec())))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RelayWriter {
    fn drop(&mut self) {
        // The end of our stream: the relay closes the target's stdin.
        let _ = self.ch.close();
    }
}

/// Kill requests go through their own channel; the status is what the relay
/// reported.
struct RelayControl {
    ctl: Channel,
    state: Arc<RelayState>,
    via: String,
}

impl PeerControl for RelayControl {
    fn kill(&self) {
        if lock(&self.state.inner).ended {
            return;
        }
        // The control channel never carries data, so its window is open and
        // this send does not wait for the peer.
        let _ = crate::driver::block_on(self.ctl.send_timeout(&"kill", Duration::from_secs(1)));
    }
    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let g = lock(&self.state.inner);
        let (g, _) = self
            .state
            .cv
            .wait_timeout_while(g, timeout, |s| !s.ended)
            .unwrap_or_else(|e| e.into_inner());
        g.ended.then(|| g.status.unwrap_or(ExitStatus::Unknown))
    }
    fn stderr_tail(&self, _timeout: Duration) -> String {
        let g = lock(&self.state.inner);
        let mut text = String::from_utf8_lossy(&g.stderr).into_owned();
        if let Some(lost) = &g.lost {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "(the gateway {} that relayed this one ended: {lost})",
                self.via
            ));
        }
        text
    }
}
