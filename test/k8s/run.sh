#!/usr/bin/env bash
# `make test-k8s`: build the one-node cluster (cluster.sh up), run the Go
# tests of test/k8s against it, remove it (also when a test fails or on
# Ctrl-C). KEEP=1 leaves it up afterwards and prints how to use it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export IPM_K8S_STATE=${IPM_K8S_STATE:-/tmp/ipm-k8s}
GO=${GO:-go}

finish() {
	local rc=$?
	trap - EXIT INT TERM
	if [ "${KEEP:-}" = 1 ] && [ -x "$IPM_K8S_STATE/kubectl" ]; then
		cat <<EOF

The cluster is up (KEEP=1). Its kubectl runs in the node's network namespace:
  $IPM_K8S_STATE/kubectl get nodes,pods -A -o wide
  $IPM_K8S_STATE/kubectl apply -k test/k8s/overlay      # the agent with the local image
  $IPM_K8S_STATE/kubectl run probe --image=localhost/ipm-k8s/probe:v1 --image-pull-policy=Never
  ip netns exec ipmk8s-internet $IPM_K8S_STATE/images/probe serve &   # servers on 203.0.113.10
  $IPM_K8S_STATE/kubectl exec probe -- /entry tcp 203.0.113.10:8080   # the source the server saw
  $IPM_K8S_STATE/kubectl exec probe -- /entry ping 203.0.113.10
Logs: $IPM_K8S_STATE/log/. Remove it all: test/k8s/cluster.sh down
EOF
	else
		"$here/cluster.sh" down
	fi
	exit "$rc"
}

"$here/cluster.sh" up
trap finish EXIT INT TERM
cd "$repo"
# shellcheck disable=SC2086 # extra go test flags, e.g. IPM_K8S_TESTFLAGS='-run TestDaemonSet/Install'
$GO test -count=1 -v -timeout 20m ./test/k8s/ ${IPM_K8S_TESTFLAGS:-}
