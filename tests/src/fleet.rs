//! A fleet of test hosts on this machine: `n` network namespaces on one
//! bridge, each with its own address and a real OpenSSH server
//! ([`crate::sshd`]). Host 0 is the jump host: the generated client config
//! reaches every other host through it (OpenSSH `ProxyJump`), so a login on
//! host `i > 0` comes from host 0's address.
//!
//! ```text
//! root ns: bridge 10.201.X.1/25 ──veth── fh0 10.201.X.10   (jump host)
//!                               ──veth── fh1 10.201.X.11   (ProxyJump fh0)
//!                               ...      fhN 10.201.X.(10+N)
//! ```
//!
//! As in [`crate::netns`], a blackhole route for `10.201.X.0/24` is added
//! in the root namespace before anything else (no address of the range may
//! leave through the default route), and each address is checked to route
//! over the bridge. `X` comes from our pid. Everything is removed on drop,
//! after every process left in a host's namespace is killed.
//!
//! By hand: `tests/fleet/run.sh` (the fleet tests with `EXECNET_FLEET_HOSTS`
//! hosts).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::sshd::Sshd;

/// One host of the fleet.
#[derive(Debug)]
pub struct Host {
    /// The ssh alias in [`Fleet::ssh_config`]: `fh<i>`.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the bridge.
    pub addr: String,
    sshd: Option<Sshd>,
}

impl Host {
    /// The daemon's log so far.
    pub fn sshd_log(&self) -> String {
        self.sshd.as_ref().map(Sshd::log).unwrap_or_default()
    }
}

/// The namespaces, the bridge, the daemons; removed on drop.
#[derive(Debug)]
pub struct Fleet {
    /// The hosts; `hosts[0]` is the jump host.
    pub hosts: Vec<Host>,
    bridge: String,
    route: Option<String>,
    ssh_config: PathBuf,
    _dir: crate::TempDir,
    // One fleet per process at a time: names and addresses come from the
    // pid, and two fleets would only compete for the two cores anyway.
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

use crate::netns::ip;

/// The pids of every process in namespace `ns`.
fn pids_in(ns: &str) -> Vec<u32> {
    ip(&["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Fleet {
    /// How many hosts the fleet tests use: `EXECNET_FLEET_HOSTS`, else
    /// `default`.
    pub fn size(default: usize) -> usize {
        std::env::var("EXECNET_FLEET_HOSTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// Creates `n` hosts (1..=100), or says why it cannot (not root, no
    /// `ip`, no bridge support, no sshd).
    pub fn create(n: usize) -> io::Result<Fleet> {
        if crate::made_absent("netns") {
            return Err(io::Error::other(
                "network namespaces made absent by EXECNET_TEST_ABSENT",
            ));
        }
        if !(1..=100).contains(&n) {
            return Err(io::Error::other(format!("{n} hosts: 1 to 100 only")));
        }
        // (a test that panicked while holding it left nothing behind: its
        // fleet was dropped during the unwinding)
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        let prefix = format!("10.201.{}", 20 + pid % 200);
        let range = format!("{prefix}.0/24");
        // First of all: nothing in the range may take the default route.
        ip(&["route", "add", "blackhole", &range])?;
        let dir = crate::TempDir::new("fleet");
        let mut fleet = Fleet {
            hosts: Vec::new(),
            bridge: format!("flb{pid}"),
            route: Some(range),
            ssh_config: dir.path().join("ssh_config"),
            _dir: dir,
            _one_at_a_time: guard,
        };
        let br = fleet.bridge.clone();
        ip(&["link", "add", "name", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{prefix}.1/25"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..n {
            let ns = format!("fl{pid}h{i}");
            let addr = format!("{prefix}.{}", 10 + i);
            let (outer, inner) = (format!("fl{pid}v{i}"), format!("fl{pid}w{i}"));
            ip(&["netns", "add", &ns])?;
            fleet.hosts.push(Host {
                name: format!("fh{i}"),
                netns: ns.clone(),
                addr: addr.clone(),
                sshd: None,
            });
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ])?;
            ip(&["link", "set", &outer, "master", &br])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/25"),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        // Our addresses go over the bridge, never via a gateway.
        for h in &fleet.hosts {
            let route = ip(&["route", "get", &h.addr])?;
            if !route.contains(&format!("dev {br}")) || route.contains(" via ") {
                return Err(io::Error::other(format!("unexpected route: {route}")));
            }
        }
        // The daemons, started a few at a time (keygen and start-up cost
        // CPU; the machine has two cores).
        let mut started = Vec::new();
        for chunk in fleet.hosts.chunks(4) {
            let batch: Vec<io::Result<Sshd>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|h| s.spawn(|| Sshd::start_in(Some(&h.netns), &[&h.addr])))
                    .collect();
                handles
                    .into_iter()
                    .map(|t| {
                        t.join()
                            .unwrap_or_else(|_| Err(io::Error::other("panicked")))
                    })
                    .collect()
            });
            started.extend(batch);
        }
        for (h, sshd) in fleet.hosts.iter_mut().zip(started) {
            h.sshd = Some(sshd.map_err(|e| io::Error::other(format!("sshd in {}: {e}", h.name)))?);
        }
        fleet.write_ssh_config()?;
        Ok(fleet)
    }

    /// The client config: `fh<i>` for each host, `fh<i>` (i > 0) through
    /// `fh0` with `ProxyJump`, keepalives every 2 s (a silent host is
    /// given up after 3 unanswered: ~6 s); `fh<i>-direct` without the jump
    /// (for clients inside the fleet).
    pub fn ssh_config(&self) -> &Path {
        &self.ssh_config
    }

    /// A spec for host `i`: `ssh=fh<i>//id=fh<i>//ssh_config=…//python=/usr/bin/python3`
    /// (Debian's python: the pyenv shim costs ~80 ms a start).
    pub fn spec(&self, i: usize) -> String {
        format!(
            "ssh={name}//id={name}//ssh_config={}//python=/usr/bin/python3",
            self.ssh_config.display(),
            name = self.hosts[i].name
        )
    }

    /// Kills every process in host `i`'s namespace -- the sshd daemon, its
    /// sessions, the workers -- as if the host went down, and waits (up to
    /// 5 s) until none is left.
    pub fn kill_host(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if let Some(mut sshd) = h.sshd.take() {
            sshd.kill();
            // (its directory goes with the drop; the client config no
            // longer works for this host, as for a dead host)
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let pids = pids_in(&h.netns);
            if pids.is_empty() || std::time::Instant::now() > deadline {
                return;
            }
            for p in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the Python processes (the workers) on host `i`, leaving
    /// its sshd and sessions up; returns how many it killed.
    pub fn kill_workers(&self, i: usize) -> usize {
        let mut killed = 0;
        for p in pids_in(&self.hosts[i].netns) {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if comm.starts_with("python") {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
                killed += 1;
            }
        }
        killed
    }

    /// Makes host `i`'s link silent: its interface goes down inside its
    /// namespace, so whatever is sent to it is dropped without an answer
    /// (no reset, no ICMP): only keepalives can tell.
    pub fn silence(&self, i: usize) -> io::Result<()> {
        let pid = std::process::id();
        ip(&[
            "-n",
            &self.hosts[i].netns,
            "link",
            "set",
            &format!("fl{pid}w{i}"),
            "down",
        ])
        .map(|_| ())
    }

    /// Makes `/usr/bin/python3` unusable on host `i` for every session
    /// its sshd starts from now on: an empty, non-executable file is
    /// bind-mounted over it in the daemon's own mount namespace (`ip netns
    /// exec` gave each daemon one, and no mount there propagates to ours;
    /// both are checked before anything is mounted).
    pub fn remove_python(&self, i: usize) -> io::Result<()> {
        let pid = self.hosts[i]
            .sshd
            .as_ref()
            .and_then(Sshd::pid)
            .ok_or_else(|| io::Error::other("no sshd on that host"))?;
        let ours = std::fs::read_link("/proc/self/ns/mnt")?;
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))?;
        if ours == theirs {
            return Err(io::Error::other(
                "the host's sshd shares our mount namespace: not mounting anything",
            ));
        }
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        if let Some(root) = mountinfo.lines().find(|l| l.split(' ').nth(4) == Some("/")) {
            if root.contains(" shared:") {
                return Err(io::Error::other(format!(
                    "the host's root mount propagates (shared): {root}"
                )));
            }
        }
        let empty = self._dir.path().join("no-python");
        std::fs::write(&empty, b"")?;
        let out = Command::new("nsenter")
            .arg(format!("--target={pid}"))
            .args(["--mount", "mount", "--bind"])
            .arg(&empty)
            .arg("/usr/bin/python3")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "nsenter mount: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    fn write_ssh_config(&self) -> io::Result<()> {
        let mut cfg = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            let sshd = h.sshd.as_ref().expect("started");
            let dir = sshd.dir().display();
            let _ = write!(
                cfg,
                "Host {name}\n  HostName {addr}\n  Port {port}\n  User root\n  \
                 IdentityFile {dir}/client_key\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {dir}/known_hosts\n  StrictHostKeyChecking yes\n  \
                 BatchMode yes\n  KexAlgorithms curve25519-sha256\n  LogLevel ERROR\n  \
                 ConnectTimeout 10\n  ServerAliveInterval 2\n  ServerAliveCountMax 3\n",
                name = h.name,
                addr = h.addr,
                port = sshd.port(),
            );
            if i > 0 {
                let _ = writeln!(cfg, "  ProxyJump {}", self.hosts[0].name);
            }
            // The same host without the jump, for clients inside the fleet
            // (a `via=` gateway on the jump host).
            let _ = write!(
                cfg,
                "Host {name}-direct\n  HostName {addr}\n  Port {port}\n  User root\n  \
                 IdentityFile {dir}/client_key\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {dir}/known_hosts\n  StrictHostKeyChecking yes\n  \
                 BatchMode yes\n  KexAlgorithms curve25519-sha256\n  LogLevel ERROR\n",
                name = h.name,
                addr = h.addr,
                port = sshd.port(),
            );
        }
        std::fs::write(&self.ssh_config, cfg)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.kill_host(i);
        }
        let pid = std::process::id();
        for (i, h) in self.hosts.iter().enumerate() {
            // Deleting our end deletes the pair at once. Deleting the
            // namespace alone would not: a namespace lives on while an
            // orphaned TCP socket in it still retransmits (to a silenced
            // host: minutes), and our end would stay behind with it.
            let _ = ip(&["link", "del", &format!("fl{pid}v{i}")]);
            let _ = ip(&["netns", "del", &h.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
        if let Some(range) = self.route.take() {
            let _ = ip(&["route", "del", "blackhole", &range]);
        }
    }
}
