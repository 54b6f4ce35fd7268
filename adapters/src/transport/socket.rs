//! `socket`: a worker started by `bootstrap/socketserver.py` for a TCP
//! connection.
//!
//! [`connect`] resolves `host:port` (IPv4 and IPv6 literals, `[v6]:port`,
//! names), connects with `TCP_NODELAY`, runs the token handshake of
//! docs/protocol.md §12 (each side proves with HMAC-SHA256 that it knows the
//! token; the token never crosses the wire; nothing runs before both proofs
//! are checked), then sends the length-prefixed worker. A wrong token ends
//! in [`Error::AuthenticationFailed`] before any code runs on the server.
//!
//! `install_via` starts a server inside another gateway's worker
//! (`socket//installvia=GWID`): it binds where asked (loopback and a free
//! port by default), answers with its address, and is reached with a fresh
//! random token that only this process and that worker know.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    off_thread, Connect, ConnectFuture, Connected, PeerControl, Request, Through, Transport,
    WorkerSetup,
};
use crate::error::{Error, ExitStatus, Result};
use crate::sync::lock;
use crate::xspec::XSpec;

/// The server's greeting (protocol.md §12).
const MAGIC: &[u8; 17] = b"EXECNET-SOCKET/1\n";
/// How long connecting and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The environment variable the server also reads its token from.
pub const TOKEN_ENV: &str = "EXECNET_SOCKET_TOKEN";

/// The token a spec names: `token=`, else the content of `token_file=`
/// (surrounding whitespace stripped, as the server does), else
/// `$EXECNET_SOCKET_TOKEN`.
pub fn token_from_spec(spec: &XSpec) -> Result<Option<Vec<u8>>> {
    if let Some(t) = spec.token() {
        return Ok(Some(t.as_bytes().to_vec()));
    }
    if let Some(path) = spec.token_file() {
        let raw = std::fs::read(path)
            .map_err(|e| Error::Spec(format!("token_file={path}: cannot read: {e}")))?;
        let keep = |b: &u8| !b.is_ascii_whitespace();
        let start = raw.iter().position(keep).unwrap_or(raw.len());
        let end = raw.iter().rposition(keep).map_or(start, |i| i + 1);
        return Ok(Some(raw[start..end].to_vec()));
    }
    Ok(std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
        .map(String::into_bytes))
}

/// Splits `host:port`, `[v6]:port` or `v6:port` (the last colon separates
/// the port).
pub fn split_address(address: &str) -> Result<(String, u16)> {
    let bad = || Error::Spec(format!("socket={address}: expected HOST:PORT"));
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The spec's gateway type this module serves.
const KIND: &str = "socket";

/// The socket transport: a running socket server (`socket=HOST:PORT`), or
/// one installed in another gateway's worker first (`installvia=GWID`).
struct SocketConnect {
    target: Target,
    /// `chdir=`, `nice=`, `env:`, `dont_write_bytecode`, applied by
    /// statements in front of the worker source (the server starts the
    /// interpreter).
    setup: WorkerSetup,
}

/// Where the socket server is.
enum Target {
    Direct { address: String, token: Vec<u8> },
    InstallVia { via: String, bind: String },
}

/// Claims `socket=` specs (see [`super::TRANSPORTS`]).
pub(crate) fn claim(request: &Request<'_>) -> Option<Result<Box<dyn Connect>>> {
    let spec = request.spec;
    if spec.gateway_type() != Some(KIND) {
        return None;
    }
    if spec.via().is_some() {
        return Some(Err(Error::Spec(
            "socket= does not go via= a gateway; use socket//installvia=GWID".into(),
        )));
    }
    let target = match spec.installvia() {
        Some(via) => Target::InstallVia {
            via: via.to_string(),
            bind: spec
                .socket()
                .filter(|b| !b.is_empty())
                .unwrap_or("127.0.0.1:0")
                .to_string(),
        },
        None => {
            let token = match request.token.clone() {
                Some(t) => Some(t),
                None => match token_from_spec(spec) {
                    Ok(t) => t,
                    Err(e) => return Some(Err(e)),
                },
            };
            Target::Direct {
                address: spec.socket().unwrap_or("").to_string(),
                token: token.unwrap_or_default(),
            }
        }
    };
    if let Err(e) = super::jail::refuse_unsupported(spec, "socket", &[]) {
        return Some(Err(e));
    }
    Some(Ok(Box::new(SocketConnect {
        target,
        setup: WorkerSetup::from_spec(spec),
    })))
}

impl Connect for SocketConnect {
    fn through(&self) -> Option<&str> {
        match &self.target {
            Target::InstallVia { via, .. } => Some(via),
            Target::Direct { .. } => None,
        }
    }

    fn connect(self: Box<Self>, through: Option<Box<dyn Through>>) -> ConnectFuture {
        Box::pin(async move {
            let setup = self.setup;
            let (transport, address) = match (self.target, through) {
                (Target::InstallVia { bind, .. }, Some(gw)) => {
                    install_via(gw.as_ref(), bind, setup).await?
                }
                (Target::InstallVia { via, .. }, None) => {
                    return Err(Error::Spec(format!("no gateway {via:?} to install via")))
                }
                (Target::Direct { address, token }, _) => {
                    let a = address.clone();
                    let t = off_thread(move || connect_with(&a, &token, &setup)).await?;
                    (t, address)
                }
            };
            Ok(Connected {
                transport,
                probe: None,
                remoteaddress: Some(address),
            })
        })
    }
}

/// Connects to a socket server, proves the token, sends the worker and
/// returns the byte stream. Errors: [`Error::Spec`] (no token, a malformed
/// address), [`Error::HostNotFound`], [`Error::ConnectionRefused`],
/// [`Error::HostUnreachable`], [`Error::AuthenticationFailed`] (the server
/// refused the token or is not ours), [`Error::BootstrapFailed`].
pub fn connect(address: &str, token: &[u8]) -> Result<Transport> {
    connect_with(address, token, &WorkerSetup::default())
}

/// [`connect`], with the worker set up as `setup` says before it runs.
pub fn connect_with(address: &str, token: &[u8], setup: &WorkerSetup) -> Result<Transport> {
    if token.is_empty() {
        return Err(Error::Spec(format!(
            "socket={address}: a token is needed (token=, token_file=, \
             GatewayBuilder::token or ${TOKEN_ENV})"
        )));
    }
    let (host, port) = split_address(address)?;
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| Error::HostNotFound {
            host: host.clone(),
            detail: e.to_string(),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(Error::HostNotFound {
            host,
            detail: "no address".into(),
        });
    }
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        let e = last.unwrap_or_else(|| std::io::Error::other("no address"));
        let (host, detail) = (address.to_string(), e.to_string());
        use rustix::io::Errno;
        let unreachable = [Errno::TIMEDOUT, Errno::HOSTUNREACH, Errno::NETUNREACH];
        return Err(match e.raw_os_error() {
            _ if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                Error::ConnectionRefused { host, detail }
            }
            _ if e.kind() == std::io::ErrorKind::TimedOut => {
                Error::HostUnreachable { host, detail }
            }
            Some(n) if unreachable.iter().any(|u| u.raw_os_error() == n) => {
                Error::HostUnreachable { host, detail }
            }
            _ => Error::from(e),
        });
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
    handshake(&mut stream, address, token)?;
    let with_setup = setup
        .worker_source(execnet_bootstrap::WORKER_SOURCE)
        .map(|source| execnet_bootstrap::compress(&source));
    let compressed = with_setup
        .as_deref()
        .unwrap_or_else(|| execnet_bootstrap::worker_compressed());
    let len = u32::try_from(compressed.len())
        .map_err(|_| Error::Spec("worker source too large".into()))?;
    let mut msg = Vec::with_capacity(4 + compressed.len());
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(compressed);
    stream.write_all(&msg).map_err(|e| Error::BootstrapFailed {
        reason: format!("sending the worker to {address}: {e}"),
        stderr_tail: String::new(),
    })?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    let state = Arc::new(SocketState {
        stream: stream.try_clone()?,
        ended: Mutex::new(false),
        cv: Condvar::new(),
        address: address.to_string(),
    });
    Ok(Transport {
        reader: Box::new(EndWatch {
            stream: stream.try_clone()?,
            state: state.clone(),
        }),
        writer: Box::new(stream),
        control: Some(Box::new(SocketControl(state))),
        description: format!("socket {address}"),
    })
}

/// The client half of protocol.md §12, steps 1–4.
fn handshake(stream: &mut TcpStream, address: &str, token: &[u8]) -> Result<()> {
    let refused = |detail: String| Error::AuthenticationFailed {
        host: address.to_string(),
        detail,
    };
    let mut head = [0u8; 17 + 32];
    stream
        .read_exact(&mut head)
        .map_err(|e| Error::BootstrapFailed {
            reason: format!("{address}: no socket server greeting: {e}"),
            stderr_tail: String::new(),
        })?;
    if &head[..17] != MAGIC {
        return Err(Error::BootstrapFailed {
            reason: format!("{address} is not an execnet socket server"),
            stderr_tail: String::new(),
        });
    }
    let ns = &head[17..];
    let nc = random_bytes::<32>()?;
    let mut answer = nc.to_vec();
    answer.extend_from_slice(&mac(token, b"execnet-client", ns, &nc));
    stream.write_all(&answer)?;
    let mut proof = [0u8; 32];
    if let Err(e) = stream.read_exact(&mut proof) {
        return Err(refused(format!(
            "the server closed the connection after our proof ({e}): it does not accept this token"
        )));
    }
    let mut m =
        Hmac::<Sha256>::new_from_slice(token).map_err(|_| Error::Spec("bad token".into()))?;
    m.update(b"execnet-server");
    m.update(&nc);
    m.update(ns);
    // Constant-time comparison.
    m.verify_slice(&proof)
        .map_err(|_| refused("the server's proof is wrong: it does not know this token".into()))
}

fn mac(token: &[u8], label: &[u8], a: &[u8], b: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut m = match Hmac::<Sha256>::new_from_slice(token) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    m.update(label);
    m.update(a);
    m.update(b);
    m.finalize().into_bytes().into()
}

/// `N` bytes from the kernel's random source.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Starts a socket server inside `via`'s worker (a thread there serves it;
/// it lives as long as that worker), bound to `bind` (`HOST:PORT`, port 0:
/// any free one), with a fresh random token; connects to it.
pub(crate) async fn install_via(
    via: &dyn Through,
    bind: String,
    setup: WorkerSetup,
) -> Result<(Transport, String)> {
    let token: String = random_bytes::<32>()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let served = via.install_socket_server(bind, token.clone()).await?;
    let (host, port) = split_address(&served)?;
    // A wildcard bind is reached over loopback from the same machine.
    let host = match host.as_str() {
        "0.0.0.0" => "127.0.0.1".to_string(),
        "::" => "[::1]".to_string(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    let address = format!("{host}:{port}");
    // Connecting blocks (TCP connect, the token exchange, the payload).
    let a = address.clone();
    let transport = off_thread(move || connect_with(&a, token.as_bytes(), &setup)).await?;
    Ok((transport, address))
}

struct SocketState {
    stream: TcpStream,
    ended: Mutex<bool>,
    cv: Condvar,
    address: String,
}

impl SocketState {
    fn end(&self) {
        *lock(&self.ended) = true;
        self.cv.notify_all();
    }
}

/// The reading half; notes the end of the stream for [`SocketControl::wait`].
struct EndWatch {
    stream: TcpStream,
    state: Arc<SocketState>,
}

impl Read for EndWatch {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let r = self.stream.read(buf);
        match &r {
            Ok(0) => self.state.end(),
            Err(e) if e.kind() != std::io::ErrorKind::Interrupted => self.state.end(),
            _ => {}
        }
        r
    }
}

/// The connection: killing shuts it down (the server's worker sees the end
/// of its stream and exits); the peer has "ended" once the stream did.
struct SocketControl(Arc<SocketState>);

impl PeerControl for SocketControl {
    fn kill(&self) {
        let _ = self.0.stream.shutdown(Shutdown::Both);
    }
    fn wait(&self, timeout: Duration) -> Option<ExitStatus> {
        let g = lock(&self.0.ended);
        let (g, _) = self
            .0
            .cv
            .wait_timeout_while(g, timeout, |ended| !*ended)
            .unwrap_or_else(|e| e.into_inner());
        g.then_some(ExitStatus::Unknown)
    }
    fn stderr_tail(&self, _timeout: Duration) -> String {
        format!(
            "(the connection to the socket server at {} ended)",
            self.0.address
        )
    }
    fn readable_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.0.stream.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses() {
        assert_eq!(split_address("h:1").unwrap(), ("h".into(), 1));
        assert_eq!(split_address("[::1]:80").unwrap(), ("::1".into(), 80));
        assert_eq!(split_address("::1:80").unwrap(), ("::1".into(), 80));
        assert!(split_address("h").is_err());
        assert!(split_address(":1").is_err());
        assert!(split_address("h:x").is_err());
    }

    #[test]
    fn mac_matches_python() {
        // hmac.new(b"k", b"execnet-client" + b"a" + b"b", hashlib.sha256).hexdigest()
        let m = mac(b"k", b"execnet-client", b"a", b"b");
        let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, PY_MAC);
    }

    const PY_MAC: &str = "6fac5cfc0a7358901ce3a366796c3554d2985f37f5f79c63ea77eb83499f89b5";
}
