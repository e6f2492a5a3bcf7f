#!/usr/bin/env bash
# Builds a small cluster node out of network namespaces, runs the agent on
# its uplink and shows what a remote server sees: the node address for the
# internet, the pod address for the VPC; then the NAT table as `ip-masq-agent
# debug` prints it, and raw from bpftool. Cleans up everything on exit.
#
#   pod (10.244.1.2) --cni0-- node (172.31.0.2, eth0) --- router --- internet 203.0.113.10
#                                                                \-- vpc      10.100.0.10
set -euo pipefail
agent=${1:-bin/ip-masq-agent}
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, eBPF)" >&2; exit 1; }
[ -x "$agent" ] || { echo "demo: build the agent first (make build)" >&2; exit 1; }

p=ipmdemo$$
ns() { ip netns exec "$p-$1" "${@:2}"; }
work=$(mktemp -d)
agent_pid=
servers=()
cleanup() {
	[ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
	for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	for n in pod node router internet vpc; do ip netns del "$p-$n" 2>/dev/null || true; done
	umount "$work/bpf" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Building namespaces: pod, node, router, internet, vpc"
for n in pod node router internet vpc; do ip netns add "$p-$n"; ns "$n" ip link set lo up; done
veth() { ip link add "$2" netns "$p-$1" type veth peer name "$4" netns "$p-$3"; }
veth pod eth0 node vpod
veth node eth0 router rnode
veth router rinet internet eth0
veth router rvpc vpc eth0
ns node ip link add cni0 type bridge
ns node ip link set vpod master cni0
ns pod ip addr add 10.244.1.2/24 dev eth0
ns node ip addr add 10.244.1.1/24 dev cni0
ns node ip addr add 172.31.0.2/24 dev eth0
ns router ip addr add 172.31.0.1/24 dev rnode
ns router ip addr add 203.0.113.1/24 dev rinet
ns router ip addr add 10.100.0.1/24 dev rvpc
ns internet ip addr add 203.0.113.10/24 dev eth0
ns vpc ip addr add 10.100.0.10/24 dev eth0
for l in "pod eth0" "node vpod" "node cni0" "node eth0" "router rnode" "router rinet" "router rvpc" "internet eth0" "vpc eth0"; do
	set -- $l; ns "$1" ip link set "$2" up
done
ns pod ip route add default via 10.244.1.1
ns node ip route add default via 172.31.0.1
ns router ip route add 10.244.0.0/16 via 172.31.0.2
ns internet ip route add default via 203.0.113.1
ns vpc ip route add default via 10.100.0.1
ns node sysctl -qw net.ipv4.ip_forward=1
ns router sysctl -qw net.ipv4.ip_forward=1
# The internet drops private sources, as it does for real.
ns internet sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.eth0.rp_filter=1
ns internet ip route del default
ns internet ip route add 172.31.0.0/16 via 203.0.113.1

# Servers that answer with the source address they saw.
for n in internet vpc; do
	ip netns exec "$p-$n" socat TCP-LISTEN:8080,reuseaddr,fork SYSTEM:'echo "$SOCAT_PEERADDR"' &
	servers+=($!)
done

ask() { ns pod timeout 3 socat -T2 - "TCP:$1:8080" 2>/dev/null || echo "(no answer)"; }

step "Without the agent"
echo "pod -> internet sees: $(ask 203.0.113.10)   (the internet drops pod addresses)"
echo "pod -> vpc      sees: $(ask 10.100.0.10)"

step "Starting ip-masq-agent on the node's eth0"
mkdir -p "$work/bpf"
mount -t bpf bpf "$work/bpf"
cat >"$work/ip-masq-agent" <<CONF
nonMasqueradeCIDRs:
  - 10.0.0.0/8
resyncInterval: 60s
CONF
cat "$work/ip-masq-agent"
# Not through the ns function: $! must be the agent itself (ip netns exec execs it).
ip netns exec "$p-node" "$agent" --config="$work/ip-masq-agent" --interfaces=eth0 --pin-path="$work/bpf/ip-masq-agent" \
	--logtostderr >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 50); do grep -q "Datapath ready" "$work/agent.log" && break; sleep 0.2; done
grep -q "Datapath ready" "$work/agent.log" || { cat "$work/agent.log"; exit 1; }

step "With the agent"
echo "pod -> internet sees: $(ask 203.0.113.10)   (masqueraded to the node)"
echo "pod -> vpc      sees: $(ask 10.100.0.10)   (10.0.0.0/8 is not masqueraded)"
ns pod ping -c 2 -W 2 -q 203.0.113.10 | tail -2

step "Changing the config: masquerade everything"
echo "nonMasqueradeCIDRs: []" >"$work/ip-masq-agent.new"
mv "$work/ip-masq-agent.new" "$work/ip-masq-agent"
sleep 1
echo "pod -> vpc      sees: $(ask 10.100.0.10)"

step "What the datapath holds (ip-masq-agent debug --pin-path=$work/bpf/ip-masq-agent)"
# In the node's namespace, where the interface indexes in the maps belong.
ns node "$agent" debug --pin-path="$work/bpf/ip-masq-agent"

step "The same NAT table raw, with the field names the maps carry (bpftool map dump pinned .../ipm_nat4 | head)"
bpftool map dump pinned "$work/bpf/ip-masq-agent/ipm_nat4" >"$work/nat.json"
head -24 "$work/nat.json"

step "Agent log"
grep -v '"Flag"' "$work/agent.log"
