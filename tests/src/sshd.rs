//! A real OpenSSH server on 127.0.0.1 for the tests, with throwaway keys.
//!
//! Each [`Sshd`] owns a private directory (host key, client key,
//! `authorized_keys`, `sshd_config`, `known_hosts`, an `ssh_config` for the
//! client) and an `sshd -D` child on a free port. Dropping it kills that child
//! by pid and reaps it, so no test leaks a daemon. Clients keep strict host
//! key checking: the generated `known_hosts` names the server's key.
//!
//! Recipe and gotchas: `../shared/ENVIRONMENT.md` ("A real OpenSSH server on
//! loopback").

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `openssh-server` puts the daemon.
pub const SSHD: &str = "/usr/sbin/sshd";

/// The unprivileged account the tests log in as (its `python3` is Debian's).
pub const TEST_USER: &str = "execnet-u";

/// A running `sshd` on 127.0.0.1 that accepts the generated client key for
/// root and for [`TEST_USER`].
#[derive(Debug)]
pub struct Sshd {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Sshd {
    /// Starts a daemon, or says why it cannot (no sshd installed, keygen
    /// failed, the port never opened). The caller decides whether that skips
    /// or fails the test (see `require_all`).
    pub fn start() -> io::Result<Sshd> {
        Sshd::start_in(None, &["127.0.0.1"])
    }

    /// Starts a daemon inside network namespace `netns` (if given),
    /// listening on `addresses` (IPv4 literals). The client config's
    /// `sshd-root`/`sshd-user` reach the first address; `sshd-root-N`
    /// reaches address `N` (as root).
    pub fn start_in(netns: Option<&str>, addresses: &[&str]) -> io::Result<Sshd> {
        if crate::made_absent("sshd") {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{SSHD} made absent by EXECNET_TEST_ABSENT"),
            ));
        }
        if !Path::new(SSHD).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{SSHD} is not installed (apt-get install openssh-server)"),
            ));
        }
        // sshd refuses to start as root without its privilege separation dir.
        fs::create_dir_all("/run/sshd")?;
        ensure_test_user()?;

        let dir = unique_dir()?;
        // sshd reads authorized_keys as the target user: the directory must be
        // traversable and the file readable by everyone (StrictModes is off).
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        keygen(&dir.join("host_key"))?;
        keygen(&dir.join("client_key"))?;
        let client_pub = fs::read_to_string(dir.join("client_key.pub"))?;
        let auth = dir.join("authorized_keys");
        fs::write(&auth, client_pub)?;
        fs::set_permissions(&auth, fs::Permissions::from_mode(0o644))?;

        // A port below the ephemeral range (which bind(0) and every outgoing
        // connection draw from, so a port found free with bind(0) could be
        // taken before sshd binds it); if sshd still finds it taken it
        // exits at once, and the next candidate is tried.
        let mut last = None;
        for attempt in 0..8 {
            let port = candidate_port(attempt, netns.is_none());
            match launch(&dir, netns, addresses, port) {
                Ok(child) => {
                    return Ok(Sshd {
                        dir,
                        port,
                        child: Some(child),
                    })
                }
                Err(Launch::PortTaken(e)) => last = Some(e),
                Err(Launch::Failed(e)) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(last.unwrap_or_else(|| io::Error::other("no port for sshd")))
    }

    /// The port the daemon listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The client config to pass as `ssh_config=`; it defines the hosts
    /// `sshd-root` and `sshd-user`.
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The private directory of this daemon (keys, configs, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's log so far, for assertion messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// Kills the daemon now (for "sshd died mid-session" tests) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Why one launch of sshd failed.
enum Launch {
    /// sshd exited before listening (the port was taken): try another.
    PortTaken(io::Error),
    Failed(io::Error),
}

/// Writes the configs for `port` into `dir`, starts sshd and waits until it
/// greets on the first address.
fn launch(dir: &Path, netns: Option<&str>, addresses: &[&str], port: u16) -> Result<Child, Launch> {
    (|| -> io::Result<Child> {
        // The log tells this attempt's readiness and failure: none of an
        // earlier attempt's lines may count.
        let _ = fs::remove_file(dir.join("sshd.log"));
        let listen: String = addresses
            .iter()
            .map(|a| format!("ListenAddress {a}\n"))
            .collect();
        let config = format!(
            "{listen}\
                 Port {port}\n\
                 HostKey {dir}/host_key\n\
                 PidFile {dir}/sshd.pid\n\
                 AuthorizedKeysFile {dir}/authorized_keys\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 MaxSessions 64\n\
                 MaxStartups 64:30:128\n\
                 PrintMotd no\n\
                 AcceptEnv EXECNET_*\n\
                 LogLevel VERBOSE\n",
            dir = dir.display()
        );
        fs::write(dir.join("sshd_config"), config)?;

        let host_pub = fs::read_to_string(dir.join("host_key.pub"))?;
        let mut fields = host_pub.split_whitespace();
        let (kind, key) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let names: Vec<String> = addresses.iter().map(|a| format!("[{a}]:{port}")).collect();
        fs::write(
            dir.join("known_hosts"),
            format!("{} {kind} {key}\n", names.join(",")),
        )?;
        let mut client = String::new();
        let mut hosts = vec![
            ("sshd-root".to_string(), "root", addresses[0]),
            ("sshd-user".to_string(), TEST_USER, addresses[0]),
        ];
        for (i, a) in addresses.iter().enumerate().skip(1) {
            hosts.push((format!("sshd-root-{i}"), "root", a));
        }
        for (alias, user, address) in hosts {
            let _ = write!(
                client,
                "Host {alias}\n  HostName {address}\n  Port {port}\n  User {user}\n  \
                     IdentityFile {dir}/client_key\n  IdentitiesOnly yes\n  \
                     UserKnownHostsFile {dir}/known_hosts\n  StrictHostKeyChecking yes\n  \
                     BatchMode yes\n  KexAlgorithms curve25519-sha256\n  LogLevel ERROR\n",
                dir = dir.display()
            );
        }
        fs::write(dir.join("ssh_config"), client)?;

        // In the foreground (-D) the daemon is our child: we kill it by pid
        // and reap it ourselves instead of chasing a daemonized process.
        let mut cmd = match netns {
            Some(ns) => {
                // `ip netns exec` execs the daemon: the child is sshd itself.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        let child = cmd
            .arg("-D")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(child)
    })()
    .map_err(Launch::Failed)
    .and_then(|mut child| {
        wait_listening(&mut child, dir, addresses[0], port, Duration::from_secs(10)).map_err(
            |e| {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                if log.contains("Address already in use") {
                    Launch::PortTaken(e)
                } else {
                    Launch::Failed(e)
                }
            },
        )?;
        Ok(child)
    })
}

/// Waits until sshd greets on `address:port`; fails if it exits first.
fn wait_listening(
    child: &mut Child,
    dir: &Path,
    address: &str,
    port: u16,
    limit: Duration,
) -> io::Result<()> {
    let log = || fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(mut stream) = TcpStream::connect((address, port)) {
            // A real sshd greets first with its version line.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut banner = [0u8; 4];
            // ...and it is ours, not another test's daemon on the same port.
            if stream.read_exact(&mut banner).is_ok()
                && &banner == b"SSH-"
                && log().contains("Server listening on")
                && child.try_wait()?.is_none()
            {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "sshd exited with {status} before listening: {}",
                log()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("sshd did not listen within {limit:?}: {}", log()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn keygen(path: &Path) -> io::Result<()> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "execnet-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(io::Error::other(format!("ssh-keygen failed: {status}")));
    }
    Ok(())
}

/// Creates [`TEST_USER`] once; with `UsePAM no` a locked account (`!` in
/// shadow) is refused, so the password field is set to `*` (no password,
/// not locked).
fn ensure_test_user() -> io::Result<()> {
    let exists = Command::new("id")
        .arg(TEST_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !exists {
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", TEST_USER])
            .output()?;
        // Another test process may have created it in the meantime.
        if !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("exists") {
            return Err(io::Error::other(format!(
                "useradd failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Command::new("usermod")
        .args(["-p", "*", TEST_USER])
        .status()?;
    Ok(())
}

/// The `attempt`th port to try, from 20000-31999 (below the ephemeral
/// range, 32768 and up here), spread by pid; with `check`, one that is free
/// on 127.0.0.1 right now.
fn candidate_port(attempt: u32, check: bool) -> u16 {
    // Daemons started at once by one test binary get different candidates.
    static STARTS: AtomicU32 = AtomicU32::new(0);
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    let base = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(n.wrapping_mul(389))
        .wrapping_add(attempt * 1543);
    let mut port = 20000 + (base % 12000) as u16;
    for _ in 0..100 {
        if !check || TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break;
        }
        port = 20000 + ((port - 20000 + 97) % 12000);
    }
    port
}

fn unique_dir() -> io::Result<PathBuf> {
    // Short paths: ssh's ControlPath sockets live below this directory in some
    // tests and unix socket paths are limited to ~108 bytes.
    let base = std::env::temp_dir();
    for n in 0..1000u32 {
        let dir = base.join(format!("exsshd-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temp directory name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself: a daemon starts, accepts our key for both users
    /// (running the Python the worker will need) and is gone after drop.
    #[test]
    fn sshd_starts_accepts_key_and_stops() {
        let sshd = match Sshd::start() {
            Ok(s) => s,
            Err(e) => return crate::skip(&format!("cannot start sshd: {e}")),
        };
        for host in ["sshd-root", "sshd-user"] {
            let out = Command::new("ssh")
                .arg("-F")
                .arg(sshd.ssh_config())
                .arg(host)
                .arg("python3 -c 'import sys; print(sys.version_info[0])'")
                .output()
                .expect("run ssh");
            assert!(
                out.status.success(),
                "ssh {host} failed: {}\nsshd log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                sshd.log()
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
        }
        // A second daemon on the same port fails to bind, is told apart
        // from the first (which also greets there) and reported as a taken
        // port, so that start_in tries another one.
        let other = unique_dir().unwrap();
        for f in ["host_key", "host_key.pub", "client_key", "authorized_keys"] {
            fs::copy(sshd.dir.join(f), other.join(f)).unwrap();
        }
        let second = launch(&other, None, &["127.0.0.1"], sshd.port());
        let _ = fs::remove_dir_all(&other);
        match second {
            Err(Launch::PortTaken(e)) => assert!(e.to_string().contains("exited"), "{e}"),
            Err(Launch::Failed(e)) => panic!("expected a taken port, got {e}"),
            Ok(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a second sshd on port {} was taken for ready", sshd.port());
            }
        }
        let pid = sshd.pid().expect("running");
        drop(sshd);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "sshd {pid} still exists after drop"
        );
    }
}
