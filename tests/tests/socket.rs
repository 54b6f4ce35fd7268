//! socket gateways: to a standalone `bootstrap/socketserver.py` with a
//! token (IPv4, IPv6, names, many gateways at once), and to servers
//! installed through another gateway (`socket//installvia=GWID`); a wrong
//! token is refused before anything runs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use execnet::blocking::{makegateway, Gateway};
use execnet::Error;
use execnet_tests::{bounded, gw, process_alive, suite, wait_until, TempDir, LIMIT};

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bootstrap/socketserver.py");

/// A standalone socket server in its own process group (killed with its
/// workers on drop).
struct Server {
    child: Child,
    address: String,
    _dir: TempDir,
    token_file: std::path::PathBuf,
}

impl Server {
    fn start(bind: &str, token: &str) -> Server {
        let dir = TempDir::new("sockserver");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("  {token}\n")).unwrap();
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new("/usr/bin/python3")
                .arg(SERVER)
                .args(["--bind", bind, "--token-file"])
                .arg(&token_file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected server output {line:?}"))
            .to_string();
        Server {
            child,
            address,
            _dir: dir,
            token_file,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn suite_over_a_standalone_server() {
    bounded(LIMIT, || {
        let server = Server::start("127.0.0.1:0", "sesame");
        let spec = format!("socket={}//token=sesame", server.address);
        let t0 = Instant::now();
        let gw = makegateway(&spec).unwrap();
        eprintln!("socket gateway start: {:?}", t0.elapsed());
        assert_eq!(gw.remoteaddress(), Some(server.address.as_str()));
        suite::run(&gw);
        let pid = gw.info().pid;
        gw.exit().unwrap();
        assert!(wait_until(Duration::from_secs(5), || !process_alive(pid)));
    })
}

#[test]
fn token_sources_and_addresses() {
    bounded(LIMIT, || {
        let server = Server::start("127.0.0.1:0", "sesame");
        let port = server.address.rsplit_once(':').unwrap().1;
        // token_file= (whitespace stripped, like the server does), a name.
        let gw = makegateway(&format!(
            "socket=localhost:{port}//token_file={}",
            server.token_file.display()
        ))
        .unwrap();
        suite::echo(&gw);
        // The builder's token.
        let gw = Gateway::builder(&format!("socket={}", server.address))
            .unwrap()
            .token("sesame")
            .start()
            .unwrap();
        suite::echo(&gw);
        // No token at all: a clear spec error, nothing sent.
        if std::env::var_os("EXECNET_SOCKET_TOKEN").is_none() {
            assert!(matches!(
                makegateway(&format!("socket={}", server.address)),
                Err(Error::Spec(_))
            ));
        }
        // IPv6 loopback, when the machine has it.
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            let v6 = Server::start("[::1]:0", "sesame");
            let port = v6.address.rsplit_once(':').unwrap().1;
            let gw = makegateway(&format!("socket=[::1]:{port}//token=sesame")).unwrap();
            suite::echo(&gw);
        } else {
            eprintln!("SKIPPED: no IPv6 loopback here");
        }
    })
}

#[test]
fn many_gateways_to_one_server_at_once() {
    bounded(LIMIT, || {
        let server = Server::start("127.0.0.1:0", "sesame");
        let spec = format!("socket={}//token=sesame", server.address);
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let spec = spec.clone();
                std::thread::spawn(move || {
                    let gw = makegateway(&spec).unwrap();
                    suite::echo(&gw);
                    suite::many_channels(&gw);
                    gw.info().pid
                })
            })
            .collect();
        let mut pids: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), 6, "each connection has its own worker");
    })
}

/// A client that ignores the handshake's outcome and sends code right
/// away: with the right token the code runs (it creates a file), with a
/// wrong one the server runs nothing.
fn rogue_client(address: &str, token: &str, marker: &std::path::Path) {
    let script = r#"
import hashlib, hmac, os, socket, struct, sys, zlib
host, port = sys.argv[1].rsplit(":", 1)
token, marker = sys.argv[2].encode(), sys.argv[3]
s = socket.create_connection((host.strip("[]"), int(port)))
head = b""
while len(head) < 49:
    head += s.recv(49 - len(head))
ns, nc = head[17:], os.urandom(32)
code = zlib.compress(("open(%r, 'w').write('ran')" % marker).encode())
s.sendall(nc + hmac.new(token, b"execnet-client" + ns + nc, hashlib.sha256).digest()
          + struct.pack(">I", len(code)) + code)
s.settimeout(10)
try:
    while s.recv(4096):
        pass
except OSError:
    pass
"#;
    let status = Command::new("/usr/bin/python3")
        .args(["-c", script, address, token])
        .arg(marker)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn wrong_token_is_refused_before_anything_runs() {
    bounded(LIMIT, || {
        let server = Server::start("127.0.0.1:0", "sesame");
        let tmp = TempDir::new("rogue");
        // Our client: a specific error.
        match makegateway(&format!("socket={}//token=guess", server.address)) {
            Err(Error::AuthenticationFailed { host, detail }) => {
                assert_eq!(host, server.address);
                assert!(detail.contains("token"), "{detail}");
            }
            other => panic!("expected AuthenticationFailed, got {other:?}"),
        }
        // A rogue client: nothing runs with a wrong token...
        let refused = tmp.path().join("refused");
        rogue_client(&server.address, "guess", &refused);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!refused.exists(), "code ran with a wrong token");
        // ...while the same client with the right token does run code.
        let accepted = tmp.path().join("accepted");
        rogue_client(&server.address, "sesame", &accepted);
        assert!(
            wait_until(Duration::from_secs(5), || accepted.exists()),
            "the control run did not create its file"
        );
    })
}

#[test]
fn connection_failures_are_specific() {
    bounded(LIMIT, || {
        let closed = execnet_tests::refused_port();
        let e = makegateway(&format!("socket=127.0.0.1:{closed}//token=x")).unwrap_err();
        assert!(matches!(e, Error::ConnectionRefused { .. }), "{e:?}");
        let e = makegateway("socket=no-such-host.invalid:8888//token=x").unwrap_err();
        assert!(matches!(e, Error::HostNotFound { .. }), "{e:?}");
        assert!(matches!(
            makegateway("socket=nohostport//token=x"),
            Err(Error::Spec(_))
        ));
    })
}

#[test]
fn installvia_a_popen_gateway() {
    bounded(LIMIT, || {
        let via = gw();
        let t0 = Instant::now();
        let spec = format!("socket//installvia={}", via.id());
        let gw = Gateway::builder(&spec)
            .unwrap()
            .via_gateway(via.clone())
            .start()
            .unwrap();
        eprintln!("socket//installvia gateway start: {:?}", t0.elapsed());
        assert!(gw
            .remoteaddress()
            .is_some_and(|a| a.starts_with("127.0.0.1:")));
        suite::run(&gw);
        // Several at once through the same gateway.
        let more: Vec<Gateway> = (0..3)
            .map(|_| {
                Gateway::builder(&spec)
                    .unwrap()
                    .via_gateway(via.clone())
                    .start()
                    .unwrap()
            })
            .collect();
        for g in &more {
            suite::echo(g);
        }
        // An explicit bind address.
        let gw2 = Gateway::builder(&format!("socket=127.0.0.1:0//installvia={}", via.id()))
            .unwrap()
            .via_gateway(via.clone())
            .start()
            .unwrap();
        suite::echo(&gw2);
        for g in more {
            g.exit().unwrap();
        }
        gw.exit().unwrap();
        via.exit().unwrap();
    })
}
