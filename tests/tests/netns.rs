//! ssh across network namespaces: sshd runs in namespace h1; it is reached
//! directly from here, and from a gateway living in namespace h2 (which
//! only h1 can reach) with `ssh=…//via=GWID`.

use execnet::blocking::{makegateway, Gateway};
use execnet::Error;
use execnet_tests::netns::Topology;
use execnet_tests::sshd::Sshd;
use execnet_tests::{bounded, skip, suite, LIMIT};

#[test]
fn sshd_in_a_namespace_reached_directly_and_via_another() {
    bounded(LIMIT, || {
        let topo = match Topology::create() {
            Ok(t) => t,
            Err(e) => return skip(&format!("cannot create network namespaces: {e}")),
        };
        let (a2, a5) = (topo.addr(2), topo.addr(5));
        let sshd = match Sshd::start_in(Some(&topo.h1), &[&a2, &a5]) {
            Ok(s) => s,
            Err(e) => return skip(&format!("cannot start sshd in {}: {e}", topo.h1)),
        };
        let cfg = sshd.ssh_config().display().to_string();

        // Directly: from our namespace to h1.
        let direct = makegateway(&format!("ssh=sshd-root//ssh_config={cfg}")).unwrap();
        suite::echo(&direct);
        suite::big_item(&direct);

        // A gateway inside h2, and through it ssh to h1's other address.
        let inner = Gateway::builder(&format!(
            "popen//id=inh2//python={}",
            Topology::exec_in(&topo.h2, "/usr/bin/python3")
        ))
        .unwrap()
        .start()
        .unwrap();
        let addrs: String = inner
            .remote_exec(
                "import subprocess; channel.send(subprocess.check_output(['ip', '-4', '-o', 'addr']).decode())",
            )
            .unwrap()
            .receive()
            .unwrap();
        assert!(addrs.contains(&topo.addr(6)), "not in h2: {addrs}");
        let via = Gateway::builder(&format!("ssh=sshd-root-1//ssh_config={cfg}//via=inh2"))
            .unwrap()
            .via_gateway(inner.clone())
            .start()
            .unwrap();
        suite::run(&via);

        let log = sshd.log();
        assert!(
            log.contains(&format!("from {} port", topo.addr(1))),
            "no login from our namespace:\n{log}"
        );
        assert!(
            log.contains(&format!("from {} port", topo.addr(6))),
            "no login from h2:\n{log}"
        );
        via.exit().unwrap();
        inner.exit().unwrap();
        direct.exit().unwrap();

        // An address with no route: a specific error, at once.
        let nowhere = topo.addr(129);
        let e = makegateway(&format!("ssh=root@{nowhere}//ssh_config={cfg}")).unwrap_err();
        assert!(matches!(e, Error::HostUnreachable { .. }), "{e:?}");
        let e = makegateway(&format!("socket={nowhere}:8888//token=x")).unwrap_err();
        assert!(matches!(e, Error::HostUnreachable { .. }), "{e:?}");
    })
}
