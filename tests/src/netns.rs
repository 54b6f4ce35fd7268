//! Two network namespaces as extra test hosts (see ENVIRONMENT.md, "Network
//! namespaces as extra test hosts").
//!
//! ```text
//! root ns 10.200.X.1 ──veth A── 10.200.X.2  h1  10.200.X.5 ──veth B── 10.200.X.6  h2
//! ```
//!
//! h2 is reachable only from h1. Before anything else a blackhole route
//! for `10.200.X.0/24` is added in the root namespace, so that no address
//! of the range can leave the machine through the default route; each
//! address used is then checked to go through our veth (`ip route get`).
//! `10.200.X.128/25` is an `unreachable` route (connecting there fails
//! at once with "No route to host", for unreachable-host tests).
//! Everything (namespaces, veths, the routes) is removed on drop. `X` comes
//! from our pid, so concurrent test processes do not collide.

use std::io;
use std::process::{Command, Stdio};

/// The two namespaces and their links; removed on drop.
#[derive(Debug)]
pub struct Topology {
    /// The namespace next to ours.
    pub h1: String,
    /// The namespace behind h1.
    pub h2: String,
    /// `10.200.X`: the first three octets of every address.
    pub prefix: String,
    route: Option<String>,
    unreachable: Option<String>,
    veth_root: String,
}

/// Runs `ip ARGS`, failing with its stderr (the fleet test bed uses it too).
pub(crate) fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Topology {
    /// Creates the namespaces, or says why it cannot (not root, no `ip`,
    /// no CAP_NET_ADMIN).
    pub fn create() -> io::Result<Topology> {
        if crate::made_absent("netns") {
            return Err(io::Error::other(
                "network namespaces made absent by EXECNET_TEST_ABSENT",
            ));
        }
        let pid = std::process::id();
        let x = 20 + pid % 200;
        let prefix = format!("10.200.{x}");
        let range = format!("{prefix}.0/24");
        // First of all: nothing in the range may take the default route.
        ip(&["route", "add", "blackhole", &range])?;
        let mut t = Topology {
            h1: format!("exn{pid}a"),
            h2: format!("exn{pid}b"),
            prefix: prefix.clone(),
            route: Some(range),
            unreachable: None,
            veth_root: format!("xa0-{pid}"),
        };
        let (a1, b0, b1) = (
            format!("xa1-{pid}"),
            format!("xb0-{pid}"),
            format!("xb1-{pid}"),
        );
        let unreachable = format!("{prefix}.128/25");
        ip(&["route", "add", "unreachable", &unreachable])?;
        t.unreachable = Some(unreachable);
        let (h1, h2, va0) = (t.h1.clone(), t.h2.clone(), t.veth_root.clone());
        ip(&["netns", "add", &h1])?;
        ip(&["netns", "add", &h2])?;
        ip(&[
            "link", "add", &va0, "type", "veth", "peer", "name", &a1, "netns", &h1,
        ])?;
        ip(&["addr", "add", &format!("{prefix}.1/30"), "dev", &va0])?;
        ip(&["link", "set", &va0, "up"])?;
        ip(&[
            "-n",
            &h1,
            "addr",
            "add",
            &format!("{prefix}.2/30"),
            "dev",
            &a1,
        ])?;
        ip(&["-n", &h1, "link", "set", &a1, "up"])?;
        ip(&["-n", &h1, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &h1, "link", "add", &b0, "type", "veth", "peer", "name", &b1, "netns", &h2,
        ])?;
        ip(&[
            "-n",
            &h1,
            "addr",
            "add",
            &format!("{prefix}.5/30"),
            "dev",
            &b0,
        ])?;
        ip(&["-n", &h1, "link", "set", &b0, "up"])?;
        ip(&[
            "-n",
            &h2,
            "addr",
            "add",
            &format!("{prefix}.6/30"),
            "dev",
            &b1,
        ])?;
        ip(&["-n", &h2, "link", "set", &b1, "up"])?;
        ip(&["-n", &h2, "link", "set", "lo", "up"])?;
        // Our address goes through our veth, never via a gateway.
        let route = ip(&["route", "get", &format!("{prefix}.2")])?;
        if !route.contains(&format!("dev {va0}")) || route.contains(" via ") {
            return Err(io::Error::other(format!("unexpected route: {route}")));
        }
        let route = ip(&["-n", &h2, "route", "get", &format!("{prefix}.5")])?;
        if !route.contains(&format!("dev {b1}")) || route.contains(" via ") {
            return Err(io::Error::other(format!("unexpected route: {route}")));
        }
        Ok(t)
    }

    /// `10.200.X.n`.
    pub fn addr(&self, n: u8) -> String {
        format!("{}.{n}", self.prefix)
    }

    /// A command line that runs `argv` inside namespace `ns`.
    pub fn exec_in(ns: &str, argv: &str) -> String {
        format!("ip netns exec {ns} {argv}")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veths in it, and their peers.
        let _ = ip(&["netns", "del", &self.h2]);
        let _ = ip(&["netns", "del", &self.h1]);
        let _ = ip(&["link", "del", &self.veth_root]);
        if let Some(range) = self.unreachable.take() {
            let _ = ip(&["route", "del", "unreachable", &range]);
        }
        if let Some(range) = self.route.take() {
            let _ = ip(&["route", "del", "blackhole", &range]);
        }
    }
}
