#!/bin/sh
# The fleet test bed by hand: runs the fleet tests (tests/tests/fleet.rs)
# with N hosts (network namespaces, each with its own sshd; host 0 is the
# jump host), printing the figures. Needs root (CAP_NET_ADMIN), iproute2 and
# openssh-server. Usage: sh tests/fleet/run.sh [N]   (default 4)
cd "$(dirname "$0")/../.." || exit 2
EXECNET_FLEET_HOSTS="${1:-4}" exec cargo test --release -p execnet-tests --test fleet -- --nocapture
