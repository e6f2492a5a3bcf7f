#!/usr/bin/env bash
# A real one-node Kubernetes cluster inside network namespaces, offline:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd
# and the kubelet run in the node's namespace; pods sit behind a CNI bridge.
#
#   pods 10.244.1.0/24 --cni0-- node (172.31.0.2, eth0) --- router --- internet 203.0.113.10 (drops pod sources)
#                                                                  \-- vpc      10.100.0.10  (routes pods back)
#
#   test/k8s/cluster.sh up      build it (state in $IPM_K8S_STATE, default /tmp/ipm-k8s)
#   test/k8s/cluster.sh down    remove everything it made
#
# `up` leaves "$IPM_K8S_STATE/kubectl", a kubectl that talks to the cluster
# from the node's namespace, and "$IPM_K8S_STATE/env" for the Go tests.
# Needs root, the binaries of test/k8s/build-components.sh, Debian's
# etcd-server, containerd, runc and containernetworking-plugins, buildah, and
# the agent image of `make image` (bin/ip-masq-agent-image.tar).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
K8S_VERSION=${K8S_VERSION:-v1.34.4}
k8sbin=${IPM_K8S_CACHE:-/var/cache/ipm-k8s/$K8S_VERSION}/bin
state=${IPM_K8S_STATE:-/tmp/ipm-k8s}
agent_archive=${IPM_K8S_AGENT_ARCHIVE:-$repo/bin/ip-masq-agent-image.tar}
# One cluster per machine: fixed names, so `down` finds them after a crash.
p=ipmk8s
node_name=ipm-node
# Every container's cgroup is under this, in every hierarchy: `down` kills
# what is in it and removes it.
cgroup_root=ipm-k8s
# Kernel settings the kubelet changes for the whole host; `down` puts them back.
host_sysctls=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# The images the cluster knows, fully qualified: CRI finds an image imported
# with ctr only by such a name.
PAUSE_IMAGE=localhost/ipm-k8s/pause:v1
PROBE_IMAGE=localhost/ipm-k8s/probe:v1
AGENT_IMAGE=localhost/ip-masq-agent
AGENT_TAGS=(k8s-a k8s-b)

log() { printf '%s cluster: %s\n' "$(date -u +%T)" "$*" >&2; }
die() {
	log "$*"
	exit 1
}
ns() { ip netns exec "$p-$1" "${@:2}"; }
# In the node: its network namespace and the private mount namespace the
# holder process keeps (ip netns exec would remount /sys without the cgroup
# v1 hierarchies that the kubelet and runc need).
innode() { nsenter -t "$(cat "$state/holder.pid")" -m -n -- "$@"; }
ctr_() { innode ctr --address "$state/containerd/containerd.sock" -n k8s.io "$@"; }
kubectl_() { nsenter -t "$(cat "$state/holder.pid")" -n -- "$k8sbin/kubectl" --kubeconfig "$state/pki/admin.kubeconfig" "$@"; }

# daemon NAME CMD...: start a process in the node, its output in log/NAME.log.
daemon() {
	local name=$1
	shift
	setsid nsenter -t "$(cat "$state/holder.pid")" -m -n -- "$@" >"$state/log/$name.log" 2>&1 </dev/null &
	echo $! >"$state/pid/$name"
}

# wait_for WHAT SECONDS CMD...: poll until CMD succeeds.
wait_for() {
	local what=$1 end=$((SECONDS + $2))
	shift 2
	while ((SECONDS < end)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	die "$what not there in time (logs in $state/log)"
}

# --- down ---------------------------------------------------------------------

# pids_of: every process of the cluster: in the node's network or mount
# namespace (daemons, shims, host-network containers) or in a cgroup under
# cgroup_root (every container).
pids_of() {
	local netns mntns pid
	[ -e "/run/netns/$p-node" ] && ip netns pids "$p-node" 2>/dev/null
	if [ -f "$state/holder.mnt" ]; then
		mntns=$(cat "$state/holder.mnt")
		for pid in /proc/[0-9]*; do
			[ "$(readlink "$pid/ns/mnt" 2>/dev/null)" = "$mntns" ] && echo "${pid#/proc/}"
		done
	fi
	for netns in internet vpc router; do
		[ -e "/run/netns/$p-$netns" ] && ip netns pids "$p-$netns" 2>/dev/null
	done
	find /sys/fs/cgroup/*/"$cgroup_root" -name cgroup.procs -exec cat {} + 2>/dev/null
	true
}

down() {
	local i pids d
	# The kubelet first, so that it restarts nothing while the rest goes.
	for d in kubelet kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
		[ -f "$state/pid/$d" ] && kill "$(cat "$state/pid/$d")" 2>/dev/null || true
	done
	for ((i = 0; i < 50; i++)); do
		pids=$(pids_of | sort -u)
		[ -z "$pids" ] && break
		# Polite first, then not.
		if ((i < 10)); then kill $pids 2>/dev/null || true; else kill -9 $pids 2>/dev/null || true; fi
		sleep 0.2
	done
	[ -z "$(pids_of)" ] || log "processes left: $(pids_of | sort -u | tr '\n' ' ')"
	for ((i = 0; i < 10; i++)); do
		find /sys/fs/cgroup/*/"$cgroup_root" -depth -type d -exec rmdir {} + 2>/dev/null || true
		ls -d /sys/fs/cgroup/*/"$cgroup_root" >/dev/null 2>&1 || break
		sleep 0.3
	done
	ls -d /sys/fs/cgroup/*/"$cgroup_root" 2>/dev/null && log "cgroups left (above)"
	for d in node router internet vpc; do
		[ -e "/run/netns/$p-$d" ] && ip netns del "$p-$d"
	done
	if [ -f "$state/sysctls" ]; then
		while read -r k v; do sysctl -qw "$k=$v" || log "cannot restore $k=$v"; done <"$state/sysctls"
	fi
	# Everything was mounted in the node's mount namespace, which is gone with
	# its last process; a mount left here would make rm fail, not delete through it.
	if grep -q " $state" /proc/mounts; then
		die "mounts under $state left in the host's namespace; not removing it"
	fi
	rm -rf "$state"
}

# --- up -----------------------------------------------------------------------

topology() {
	local n l
	for n in node router internet vpc; do
		ip netns add "$p-$n"
		ns "$n" ip link set lo up
	done
	ip link add eth0 netns "$p-node" type veth peer name rnode netns "$p-router"
	ip link add rinet netns "$p-router" type veth peer name eth0 netns "$p-internet"
	ip link add rvpc netns "$p-router" type veth peer name eth0 netns "$p-vpc"
	ns node ip addr add 172.31.0.2/24 dev eth0
	ns router ip addr add 172.31.0.1/24 dev rnode
	ns router ip addr add 203.0.113.1/24 dev rinet
	ns router ip addr add 10.100.0.1/24 dev rvpc
	ns internet ip addr add 203.0.113.10/24 dev eth0
	ns vpc ip addr add 10.100.0.10/24 dev eth0
	for l in "node eth0" "router rnode" "router rinet" "router rvpc" "internet eth0" "vpc eth0"; do
		set -- $l
		ns "$1" ip link set "$2" up
	done
	ns node ip route add default via 172.31.0.1
	ns router ip route add 10.244.0.0/16 via 172.31.0.2
	ns vpc ip route add default via 10.100.0.1
	ns node sysctl -qw net.ipv4.ip_forward=1
	ns router sysctl -qw net.ipv4.ip_forward=1
	# The internet drops private sources: no route back to them, and
	# rp_filter drops what arrives from them.
	ns internet sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.eth0.rp_filter=1
	ns internet ip route add 172.31.0.0/16 via 203.0.113.1
	# Receivers verify the checksums the NAT touched (as in test/e2e).
	for l in rnode rinet rvpc; do ns router ethtool -K "$l" tx off >/dev/null; done
}

# holder: a process in the node's network namespace with a private mount
# namespace, where every daemon of the node runs. Inside it: / is rshared
# (Bidirectional mount propagation), its own bpffs at /sys/fs/bpf and tmpfs
# on /run, and an overlay on /var that keeps the kubelet's fixed paths
# (/var/lib/kubelet, /var/log/pods) off the host.
holder() {
	mkdir -p "$state/var/upper" "$state/var/work"
	setsid nsenter --net="/run/netns/$p-node" unshare --mount --propagation private \
		sh -c 'echo $$ >"$1"; exec sleep infinity' sh "$state/holder.pid" </dev/null >/dev/null 2>&1 &
	wait_for "holder" 10 test -s "$state/holder.pid"
	readlink "/proc/$(cat "$state/holder.pid")/ns/mnt" >"$state/holder.mnt"
	innode sh -euc '
		mount --make-rshared /
		mount -t tmpfs -o mode=755 tmpfs /run
		mount -t bpf bpf /sys/fs/bpf
		mount -t overlay overlay -o lowerdir=/var,upperdir="$1/var/upper",workdir="$1/var/work" /var
	' sh "$state"
}

pki() {
	local d=$state/pki
	mkdir -p "$d"
	(
		cd "$d"
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=ipm-k8s-ca 2>/dev/null
		# cert NAME SUBJECT [SAN]
		cert() {
			openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
			openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -out "$1.crt" \
				${3:+-extfile <(printf 'subjectAltName=%s' "$3")} 2>/dev/null
		}
		cert apiserver /CN=kube-apiserver \
			"IP:127.0.0.1,IP:172.31.0.2,IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost"
		# One client identity for every component and the tests: the cluster
		# is throwaway, the tests are about the agent, not RBAC.
		cert admin /O=system:masters/CN=admin
		openssl genrsa -out sa.key 2048 2>/dev/null
		openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
		cat >admin.kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: ipm-k8s
    cluster:
      server: https://172.31.0.2:6443
      certificate-authority: $d/ca.crt
users:
  - name: admin
    user:
      client-certificate: $d/admin.crt
      client-key: $d/admin.key
contexts:
  - name: ipm-k8s
    context: {cluster: ipm-k8s, user: admin}
current-context: ipm-k8s
EOF
	)
}

containerd_config() {
	mkdir -p "$state/containerd" "$state/cni"
	cat >"$state/containerd/config.toml" <<EOF
version = 2
root = "$state/containerd/root"
state = "$state/containerd/state"
[grpc]
  address = "$state/containerd/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  # No registry: the pause image is built locally.
  sandbox_image = "$PAUSE_IMAGE"
  # This host cannot lower oom_score_adj; without this every sandbox fails in
  # runc with an unhelpful EOF.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni"
EOF
	# A bridge without masquerading: masquerading is the agent's job.
	cat >"$state/cni/10-ipm-k8s.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "ipm-k8s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$state/cni-ipam"
      }
    }
  ]
}
EOF
}

kubelet_config() {
	mkdir -p "$state/kubelet"
	echo "nameserver 127.0.0.1" >"$state/resolv.conf"
	cat >"$state/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$state/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /$cgroup_root
cgroupsPerQOS: true
failSwapOn: false
# Projected ConfigMap volumes are refreshed on each pod sync.
syncFrequency: 1s
nodeStatusUpdateFrequency: 2s
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
resolvConf: $state/resolv.conf
# A loaded build machine must not evict the test pods.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
localStorageCapacityIsolation: false
EOF
}

# image_archive NAME BINARY ARCHIVE: a one-file image FROM scratch, as a
# docker archive that carries NAME.
image_archive() {
	local b="buildah --storage-driver vfs" c
	c=$($b from scratch)
	$b copy "$c" "$2" /entry >/dev/null
	$b config --entrypoint '["/entry"]' --cmd '[]' "$c"
	$b commit -q "$c" "$1" >/dev/null
	$b rm "$c" >/dev/null
	$b push -q "$1" "docker-archive:$3:$1" >/dev/null
	$b rmi "$1" >/dev/null
}

images() {
	mkdir -p "$state/images"
	for i in pause probe; do
		CGO_ENABLED=0 go build -C "$repo" -trimpath -o "$state/images/$i" "./test/k8s/images/$i"
	done
	image_archive "$PAUSE_IMAGE" "$state/images/pause" "$state/images/pause.tar"
	image_archive "$PROBE_IMAGE" "$state/images/probe" "$state/images/probe.tar"
	ctr_ images import "$state/images/pause.tar" >/dev/null
	ctr_ images import "$state/images/probe.tar" >/dev/null
	# The uninstall DaemonSet's placeholder container: the same pause.
	ctr_ images tag "$PAUSE_IMAGE" registry.k8s.io/pause:3.10 >/dev/null
	# The agent's OCI archive names the image "ip-masq-agent:VERSION". CRI
	# looks an image up by its ID and takes its first name, which must be
	# fully qualified: rename it in the archive's index before the import,
	# then tag it once per "build" for the rolling upgrade test.
	local a=$state/images/agent t
	mkdir -p "$a"
	tar -xf "$agent_archive" -C "$a"
	sed -i 's#"org.opencontainers.image.ref.name":"[^"]*"#"org.opencontainers.image.ref.name":"'"$AGENT_IMAGE:${AGENT_TAGS[0]}"'"#' "$a/index.json"
	tar -cf "$a.tar" -C "$a" oci-layout index.json blobs
	ctr_ images import "$a.tar" >/dev/null
	for t in "${AGENT_TAGS[@]:1}"; do ctr_ images tag "$AGENT_IMAGE:${AGENT_TAGS[0]}" "$AGENT_IMAGE:$t" >/dev/null; done
}

up() {
	[ "$(id -u)" = 0 ] || die "needs root"
	for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
		[ -x "$k8sbin/$c" ] || die "$k8sbin/$c missing: run test/k8s/build-components.sh"
	done
	for c in etcd containerd runc ctr buildah openssl nsenter unshare /usr/lib/cni/bridge; do
		command -v "$c" >/dev/null || die "$c missing (Debian: etcd-server containerd runc containernetworking-plugins buildah)"
	done
	[ -f "$agent_archive" ] || die "$agent_archive missing: make image"
	if [ -d "$state" ] || [ -e "/run/netns/$p-node" ]; then
		log "a cluster is there: removing it first"
		down
	fi
	local t0=$SECONDS
	mkdir -p "$state/log" "$state/pid"
	for k in "${host_sysctls[@]}"; do echo "$k $(sysctl -n "$k")"; done >"$state/sysctls"

	topology
	holder
	pki
	containerd_config
	kubelet_config
	log "namespaces and certificates ready"

	daemon etcd etcd --name ipm-k8s --data-dir "$state/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster ipm-k8s=http://127.0.0.1:2380
	daemon containerd containerd --config "$state/containerd/config.toml"
	local d=$state/pki
	daemon kube-apiserver "$k8sbin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
		--advertise-address=172.31.0.2 --secure-port=6443 \
		--tls-cert-file="$d/apiserver.crt" --tls-private-key-file="$d/apiserver.key" --client-ca-file="$d/ca.crt" \
		--kubelet-client-certificate="$d/admin.crt" --kubelet-client-key="$d/admin.key" \
		--service-account-key-file="$d/sa.pub" --service-account-signing-key-file="$d/sa.key" \
		--service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/16 \
		--authorization-mode=Node,RBAC --allow-privileged=true --profiling=false \
		--kubelet-preferred-address-types=InternalIP
	wait_for "containerd" 30 test -S "$state/containerd/containerd.sock"
	images
	log "images imported"
	wait_for "kube-apiserver" 90 kubectl_ get --raw /readyz
	daemon kube-controller-manager "$k8sbin/kube-controller-manager" --kubeconfig="$d/admin.kubeconfig" \
		--service-account-private-key-file="$d/sa.key" --root-ca-file="$d/ca.crt" --leader-elect=false \
		--use-service-account-credentials=false --profiling=false
	daemon kube-scheduler "$k8sbin/kube-scheduler" --kubeconfig="$d/admin.kubeconfig" --leader-elect=false --profiling=false
	# The kubelet wants its cgroupRoot in every hierarchy; a cpuset cgroup
	# starts without CPUs and memory nodes.
	for cg in /sys/fs/cgroup/*/; do mkdir -p "$cg$cgroup_root"; done
	cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$cgroup_root/cpuset.cpus"
	cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$cgroup_root/cpuset.mems"
	log "control plane up; starting the kubelet"
	local tk=$SECONDS
	daemon kubelet "$k8sbin/kubelet" --config="$state/kubelet/config.yaml" --kubeconfig="$d/admin.kubeconfig" \
		--root-dir="$state/kubelet/root" --hostname-override="$node_name" --node-ip=172.31.0.2
	wait_for "node $node_name" 120 kubectl_ get node "$node_name"
	kubectl_ wait --for=condition=Ready "node/$node_name" --timeout=120s >/dev/null ||
		die "node not Ready (logs in $state/log)"
	log "node Ready $((SECONDS - t0))s after start, $((SECONDS - tk))s after the kubelet"
	# Pods are admitted once their namespace has its default service account.
	wait_for "service account default" 60 kubectl_ get serviceaccount default

	cat >"$state/kubectl" <<EOF
#!/bin/sh
# kubectl for the test cluster: from the node's network namespace, where the API server listens.
exec nsenter -t $(cat "$state/holder.pid") -n -- $k8sbin/kubectl --kubeconfig $state/pki/admin.kubeconfig "\$@"
EOF
	chmod +x "$state/kubectl"
	cat >"$state/env" <<EOF
IPM_K8S_STATE=$state
IPM_K8S_KUBECTL=$state/kubectl
IPM_K8S_HOLDER_PID=$(cat "$state/holder.pid")
IPM_K8S_CONTAINERD=$state/containerd/containerd.sock
IPM_K8S_NODE_NETNS=$p-node
IPM_K8S_INTERNET_NETNS=$p-internet
IPM_K8S_VPC_NETNS=$p-vpc
IPM_K8S_AGENT_IMAGE=$AGENT_IMAGE
IPM_K8S_AGENT_TAGS=${AGENT_TAGS[*]}
IPM_K8S_PROBE_IMAGE=$PROBE_IMAGE
EOF
	log "up in $((SECONDS - t0))s; kubectl: $state/kubectl get pods -A"
}

case ${1:-} in
up)
	# A failed `up` leaves nothing behind.
	trap 'rc=$?; if [ $rc != 0 ]; then rm -rf "$state-logs"; cp -r "$state/log" "$state-logs" 2>/dev/null; log "up failed, tearing down (logs in $state-logs)"; down; fi' EXIT
	up
	;;
down) down ;;
*)
	echo "usage: $0 up|down" >&2
	exit 2
	;;
esac
