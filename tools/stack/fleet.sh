#!/usr/bin/env bash
# Network plumbing of a stack with several host agents on one machine (`npm run up -- --agents N`, and the e2e
# harness's fleet stacks): each agent runs in a network namespace of its own, as if it were a machine of its own.
# Sourced by apps.sh, and run as a script by tools/e2e/harness/stack-harness.ts (see the commands at the bottom).
#
# Layout of a fleet (names from FLEET_NETNS_PREFIX, FLEET_LINK_PREFIX and FLEET_NET; defaults: the dev stack's):
#   control address  <net>.0.1/32 on the root namespace's loopback (label lo:<link>ctl): what the agents reach the
#                    control plane at (the stack's NATS listens there), from every agent namespace, via its uplink.
#                    Loopback rather than a dummy interface: not every kernel has the dummy driver.
#   agent i (1..)    netns <netns><i>; veth <link><i>h (root namespace, <net>.<i>.1/30) <-> <link><i>a (agent
#                    namespace, <net>.<i>.2/30, default route via .1). The control plane reaches the agent's gRPC,
#                    proxy and HTTP ports at <net>.<i>.2.
#   egress           nft table `ip <link>fleet`: the agents' traffic (their sandboxes', masqueraded by each agent to
#                    its uplink address) leaving the machine through any other interface is masqueraded again;
#                    net.ipv4.ip_forward=1 (a single agent in the root namespace sets it too).
# Nothing listens on 0.0.0.0 for the agents: the control address exists only on this machine.
#
# An agent process enters its namespace with fleet_exec: nsenter into the netns, then a private mount namespace in
# which /sys/class/net and /sys/devices/virtual/net show the agent namespace's interfaces (the agent lists its slot
# veths there). `ip netns exec` is not used: its mount namespace is a slave of the root one, so the per-slot
# namespaces the agent creates under /run/netns would not be visible outside it (and a teardown after a kill -9
# could not find them). Here every other mount, /run/netns included, keeps its propagation: a namespace the agent
# adds is the host's, and the cgroup mounts under /sys/fs/cgroup stay as they are.

FLEET_NETNS_PREFIX=${FLEET_NETNS_PREFIX:-kilnfl}
FLEET_LINK_PREFIX=${FLEET_LINK_PREFIX:-kfl}
FLEET_NET=${FLEET_NET:-10.239}
# Agent i's KILN_NETWORK_PREFIX is <agent prefix><i>: its slot namespaces (<prefix>-slot-<n>, global names under
# /run/netns), firewall table and VMM cgroup parent are named after it.
FLEET_AGENT_PREFIX=${FLEET_AGENT_PREFIX:-kf}
# Agents per fleet: <net>.<i>.0/30 links and, in the dev stack, slot blocks 10.(240+i).0.0/16 (apps.sh).
FLEET_MAX_AGENTS=9

fleet_log() { printf '\033[1;34m[kiln]\033[0m %s\n' "$*" >&2; }
fleet_die() { printf '\033[1;31m[kiln]\033[0m %s\n' "$*" >&2; exit 1; }

fleet_check_index() {
  [[ "$1" =~ ^[1-9][0-9]*$ ]] && [ "$1" -le "$FLEET_MAX_AGENTS" ] || fleet_die "fleet: agent index must be 1..$FLEET_MAX_AGENTS, got '$1'"
}

fleet_netns() { echo "$FLEET_NETNS_PREFIX$1"; }
fleet_host_link() { echo "$FLEET_LINK_PREFIX${1}h"; }
fleet_agent_link() { echo "$FLEET_LINK_PREFIX${1}a"; }
fleet_control_label() { echo "lo:${FLEET_LINK_PREFIX}ctl"; }
fleet_control_address() { echo "$FLEET_NET.0.1"; }
fleet_agent_address() { echo "$FLEET_NET.$1.2"; }
fleet_gateway_address() { echo "$FLEET_NET.$1.1"; }
fleet_nft_table() { echo "${FLEET_LINK_PREFIX}fleet"; }

# fleet_has_address DEV ADDRESS/LEN [NETNS]: whether the interface has that address. (Not `ip … | grep -q`: grep
# leaving early makes ip fail with SIGPIPE, which pipefail reports as "absent".)
fleet_has_address() {
  local listing
  listing=$(ip ${3:+-n "$3"} -o -4 addr show dev "$1" 2>/dev/null) || return 1
  [[ "$listing" == *" inet $2 "* ]]
}

# The control address, on loopback: it exists whatever the machine's other interfaces do.
fleet_ensure_control() {
  local address
  address=$(fleet_control_address)
  fleet_has_address lo "$address/32" || ip addr add "$address/32" dev lo label "$(fleet_control_label)"
}

# Forwarding and the second masquerade for the agents' internet traffic (sandbox egress, template builds).
fleet_ensure_egress() {
  local table
  table=$(fleet_nft_table)
  echo 1 > /proc/sys/net/ipv4/ip_forward
  nft -f - <<NFT
add table ip $table
delete table ip $table
table ip $table {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $FLEET_NET.0.0/16 oifname != "$FLEET_LINK_PREFIX*" masquerade
  }
}
NFT
}

# Agent i's namespace and uplink; idempotent (an existing one is completed, not rebuilt).
fleet_ensure_agent() {
  local i=$1 netns host_link agent_link
  fleet_check_index "$i"
  netns=$(fleet_netns "$i")
  host_link=$(fleet_host_link "$i")
  agent_link=$(fleet_agent_link "$i")
  [ -e "/run/netns/$netns" ] || ip netns add "$netns"
  if ! ip link show "$host_link" >/dev/null 2>&1; then
    ip -n "$netns" link del "$agent_link" 2>/dev/null || true
    ip link add "$host_link" type veth peer name "$agent_link" netns "$netns"
  fi
  fleet_has_address "$host_link" "$(fleet_gateway_address "$i")/30" || ip addr add "$(fleet_gateway_address "$i")/30" dev "$host_link"
  ip link set "$host_link" up
  ip -n "$netns" link set lo up
  fleet_has_address "$agent_link" "$(fleet_agent_address "$i")/30" "$netns" || ip -n "$netns" addr add "$(fleet_agent_address "$i")/30" dev "$agent_link"
  ip -n "$netns" link set "$agent_link" up
  ip -n "$netns" route replace default via "$(fleet_gateway_address "$i")" dev "$agent_link"
}

# ensure N: the control address, agents 1..N and egress.
fleet_ensure() {
  local count=$1 i
  [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -le "$FLEET_MAX_AGENTS" ] || fleet_die "fleet: at most $FLEET_MAX_AGENTS agents, got '$count'"
  fleet_ensure_control
  for ((i = 1; i <= count; i++)); do fleet_ensure_agent "$i"; done
  fleet_ensure_egress
}

# Indexes of this fleet's agent namespaces that exist.
fleet_existing_agents() {
  local name
  for name in $(ip netns list 2>/dev/null | awk '{ print $1 }'); do
    [[ "$name" =~ ^${FLEET_NETNS_PREFIX}([1-9][0-9]*)$ ]] && echo "${BASH_REMATCH[1]}"
  done | sort -n
}

# Agent i's namespace and uplink (its processes must have stopped: a namespace lives on while one is in it).
fleet_remove_agent() {
  local i=$1
  ip link del "$(fleet_host_link "$i")" 2>/dev/null || true
  [ -e "/run/netns/$(fleet_netns "$i")" ] && ip netns del "$(fleet_netns "$i")" 2>/dev/null
  return 0
}

# Everything of this fleet: every agent namespace, uplink, the control address and the nft table.
fleet_remove() {
  local i link
  for i in $(fleet_existing_agents); do fleet_remove_agent "$i"; done
  # Uplinks whose namespace is already gone.
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
    [[ "$link" =~ ^${FLEET_LINK_PREFIX}[1-9][0-9]*h$ ]] && ip link del "$link" 2>/dev/null
  done
  ip addr del "$(fleet_control_address)/32" dev lo 2>/dev/null || true
  nft delete table ip "$(fleet_nft_table)" 2>/dev/null || true
  return 0
}

# Partition and heal: the agent's uplink down / up on the host side (the agent sees its carrier go).
fleet_link() { ip link set "$(fleet_host_link "$1")" "$2"; }

# The mount namespace setup of fleet_exec (see the header): sysfs of the agent's netns, staged over /sys/kernel (a
# directory every sysfs has) to bind its two network directories, then unmounted. /sys is a slave first, so none of
# this propagates back to the host.
# shellcheck disable=SC2016
FLEET_SYSFS_SETUP='set -e
mount --make-rslave /sys
mount -t sysfs kiln-fleet-sysfs /sys/kernel
mount --bind /sys/kernel/class/net /sys/class/net
mount --bind /sys/kernel/devices/virtual/net /sys/devices/virtual/net
umount /sys/kernel
set +e
exec "$@"'

# exec I CMD...: replaces this process with CMD in agent i's network namespace (its pid stays CMD's: every step
# execs, so a caller's pid file names the agent process itself).
fleet_exec() {
  local i=$1 netns
  shift
  [ "${1:-}" = -- ] && shift
  fleet_check_index "$i"
  netns=$(fleet_netns "$i")
  [ -e "/run/netns/$netns" ] || fleet_die "fleet: no network namespace $netns"
  exec nsenter --net="/run/netns/$netns" unshare --mount --propagation unchanged bash -c "$FLEET_SYSFS_SETUP" fleet-exec "$@"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  usage="usage: $0 ensure N | ensure-agent I | remove | remove-agent I | exec I -- CMD... | partition I | heal I | agents
  Environment: FLEET_NETNS_PREFIX (default kilnfl), FLEET_LINK_PREFIX (kfl), FLEET_NET (10.239: links <net>.<i>.0/30)"
  [ "$(id -u)" = 0 ] || fleet_die "fleet: must run as root"
  command=${1:-}
  shift || true
  case $command in
    ensure) fleet_ensure "${1:?$usage}" ;;
    ensure-agent) fleet_ensure_control && fleet_ensure_agent "${1:?$usage}" && fleet_ensure_egress ;;
    remove) fleet_remove ;;
    remove-agent) fleet_remove_agent "${1:?$usage}" ;;
    exec) fleet_exec "$@" ;;
    partition) fleet_link "${1:?$usage}" down ;;
    heal) fleet_link "${1:?$usage}" up ;;
    agents) fleet_existing_agents ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
fi
