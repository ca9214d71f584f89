#!/usr/bin/env bash
# A simulated cluster on one machine, for failure tests (run as root; needs iproute2).
#
# Hosts are network namespaces cnnd-h0 .. cnnd-h(N-1), each with one veth
# link into the bridge cnnd-br, addresses 10.77.0.10+i/24 (only the
# namespaces have addresses), names in /etc/hosts (marked, removed by down).
# Each link is shaped with tc tbf in both directions (netem is not available
# on every kernel). OpenMPI starts its daemons on the hosts through
# launch/netns-rsh.sh (plm_rsh_agent), which runs them under `ip netns exec`
# with the host's own UTS name, so MPI_Get_processor_name says cnnd-hI.
#
#   launch/netns-cluster.sh up N [RATE]        create N hosts (default RATE 1gbit)
#   launch/netns-cluster.sh run MPIRUN-ARGS... mpirun from cnnd-h0 over the hosts, TCP only
#   launch/netns-cluster.sh link HOST down|up  pull or restore a host's cable
#   launch/netns-cluster.sh kill HOST          SIGKILL every process of a host
#   launch/netns-cluster.sh pids HOST          the processes of a host
#   launch/netns-cluster.sh down               remove everything (safe to repeat)
#   launch/netns-cluster.sh with N -- CMD...   up N, run CMD, down (also on failure or ^C)
#
# Example: launch/netns-cluster.sh with 3 -- launch/netns-cluster.sh run -n 3 .build/release/cnn-dist selftest
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
prefix=cnnd
bridge=cnnd-br
subnet=10.77.0
state=/run/cnnd-cluster
marker="# cnnd-cluster"

die() { echo "netns-cluster: $*" >&2; exit 1; }
host_name() { echo "$prefix-h$1"; }
host_ip() { echo "$subnet.$((10 + $1))"; }

down() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-h[0-9]+$" || true); do
        # Processes first (a namespace with live processes survives `ip netns del`).
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    local link
    for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^$prefix-h[0-9]+-br$" || true); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
    if grep -q "$marker" /etc/hosts 2>/dev/null; then
        # Rewrite in place: /etc/hosts is often a bind mount that cannot be renamed over.
        local kept
        kept="$(grep -v "$marker" /etc/hosts)"
        printf '%s\n' "$kept" > /etc/hosts
    fi
    rm -rf "$state"
}

up() {
    local n="${1:?usage: netns-cluster.sh up N [RATE]}" rate="${2:-1gbit}"
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    [ "$n" -ge 1 ] && [ "$n" -le 16 ] || die "N must be 1..16"
    down
    trap 'echo "netns-cluster: setup failed, tearing down" >&2; down' ERR
    mkdir -p "$state"
    ip link add "$bridge" type bridge
    ip link set "$bridge" up
    : > "$state/hostfile"
    local i ns ip
    for ((i = 0; i < n; i++)); do
        ns="$(host_name "$i")"
        ip="$(host_ip "$i")"
        ip netns add "$ns"
        ip link add "$ns-br" type veth peer name "$ns-eth"
        ip link set "$ns-eth" netns "$ns"
        ip link set "$ns-br" master "$bridge"
        ip link set "$ns-br" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip link set "$ns-eth" name eth0
        ip netns exec "$ns" ip addr add "$ip/24" dev eth0
        ip netns exec "$ns" ip link set eth0 up
        # Bandwidth: token bucket on the host's egress and on its ingress (the bridge side's egress).
        ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 50ms
        tc qdisc add dev "$ns-br" root tbf rate "$rate" burst 256kb latency 50ms
        echo "$ip $ns $marker" >> /etc/hosts
        echo "$ns slots=1" >> "$state/hostfile"
    done
    echo "$n" > "$state/size"
    trap - ERR
    echo "netns-cluster: $n hosts up ($(host_name 0)..$(host_name $((n - 1))), $subnet.0/24, $rate links); hostfile $state/hostfile"
}

run_mpi() {
    [ -f "$state/hostfile" ] || die "no cluster; run: netns-cluster.sh up N"

    [ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    # mpirun itself runs on host 0 with host 0's name; daemons reach it directly (routed=direct), so losing
    # one host does not cut the others off; short oob keepalives let mpirun notice a host whose cable is pulled.
    exec ip netns exec "$(host_name 0)" unshare --uts /bin/sh -c 'hostname "$0"; exec "$@"' "$(host_name 0)" \
        mpirun --hostfile "$state/hostfile" \
        --mca plm_rsh_agent "$here/netns-rsh.sh" --mca plm_rsh_no_tree_spawn 1 --mca routed direct \
        --mca btl tcp,self --mca btl_tcp_if_include "$subnet.0/24" --mca oob_tcp_if_include "$subnet.0/24" \
        --mca oob_tcp_keepalive_time 2 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3 \
        "$@"
}

cmd="${1:-}"
shift || true
case "$cmd" in
    up) up "$@" ;;
    down) down ;;
    run) run_mpi "$@" ;;
    link)
        host="${1:?usage: netns-cluster.sh link HOST down|up}"; how="${2:?down or up}"
        ip link set "$host-br" "$how"
        ip netns exec "$host" ip link set eth0 "$how"
        ;;
    kill) ip netns pids "${1:?usage: netns-cluster.sh kill HOST}" | xargs -r kill -9 ;;
    pids) ip netns pids "${1:?usage: netns-cluster.sh pids HOST}" ;;
    with)
        n="${1:?usage: netns-cluster.sh with N -- COMMAND...}"; shift
        [ "${1:-}" = "--" ] && shift
        trap down EXIT INT TERM
        up "$n"
        "$@"
        ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
