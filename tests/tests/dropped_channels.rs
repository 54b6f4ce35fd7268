//! Channels that remote code drops are closed, as in execnet
//! (`Channel.__del__`): the host sees the end of such a channel instead of
//! waiting until the gateway ends.

use std::time::Duration;

use execnet::blocking::Channel;
use execnet::Error;
use execnet_tests::{bounded, gw, LIMIT};

const T: Duration = Duration::from_secs(10);

/// A channel created, sent to the host, used and then dropped when the
/// exec ends: its items arrive, then its end.
#[test]
fn dropped_at_exec_end_is_closed() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                "sub = channel.gateway.newchannel()\nchannel.send(sub)\n\
                 for i in range(3):\n    sub.send(i)\n",
            )
            .unwrap();
        let sub: Channel = ch.receive().unwrap();
        ch.waitclose(Some(T)).unwrap();
        sub.waitclose(Some(T)).unwrap();
        for i in 0..3i64 {
            assert_eq!(sub.receive::<i64>().unwrap(), i);
        }
        assert!(matches!(sub.receive::<i64>(), Err(Error::EndOfChannel)));
        gw.exit().unwrap();
    })
}

/// A channel dropped while its exec still runs is closed then too, not at the
/// exec's end.
#[test]
fn dropped_mid_exec_is_closed() {
    bounded(LIMIT, || {
        let gw = gw();
        let ch = gw
            .remote_exec(
                "sub = channel.gateway.newchannel()\nchannel.send(sub)\nsub.send('last')\n\
                 del sub\nchannel.send('dropped')\nchannel.receive()\n",
            )
            .unwrap();
        let sub: Channel = ch.receive().unwrap();
        assert_eq!(ch.receive::<String>().unwrap(), "dropped");
        sub.waitclose(Some(T)).unwrap();
        assert_eq!(sub.receive::<String>().unwrap(), "last");
        assert!(matches!(sub.receive::<String>(), Err(Error::EndOfChannel)));
        ch.send(&0i64).unwrap();
        ch.waitclose(Some(T)).unwrap();
        gw.exit().unwrap();
    })
}
