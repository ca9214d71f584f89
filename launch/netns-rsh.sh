#!/usr/bin/env bash
# OpenMPI's plm_rsh_agent for launch/netns-cluster.sh: called like ssh,
#   netns-rsh.sh [ssh-options] HOST COMMAND...
# it runs COMMAND (a shell command line, as ssh would) in HOST's network
# namespace, under its own UTS namespace named HOST.
set -euo pipefail
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
host="${1:?usage: netns-rsh.sh HOST COMMAND...}"
shift
ns="${host%%.*}"
case "$ns" in
    cnnd-h[0-9]*) ;;
    *) echo "netns-rsh: $host is not a netns-cluster host" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$0"; eval "$1"' "$ns" "$*"
