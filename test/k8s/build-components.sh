#!/usr/bin/env bash
# Builds the Kubernetes binaries the one-node test cluster runs
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl)
# from the Go module proxy into $IPM_K8S_CACHE/bin, and reuses them when they
# are there. Cold: about 15 minutes on 2 cores; warm: nothing to do.
#
# k8s.io/kubernetes is not meant to be required as a module: its go.mod
# replaces every staging module (k8s.io/api, k8s.io/client-go, ...) with
# ./staging/..., which a dependent module cannot see. A throwaway module
# requires it and replaces each of those with the matching v0 release.
# Each command is pinned to the version: unpinned, `go build` resolves a newer
# release. Without cgo, with the version in the ldflags (kubectl version
# fails without them).
#
# Why 1.34: Debian 12's containerd 1.6 lacks the CRI RuntimeConfig call and
# the test hosts have cgroup v1, which newer kubelets drop or refuse.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
cache=${IPM_K8S_CACHE:-/var/cache/ipm-k8s/$K8S_VERSION}
bin=$cache/bin
mod=$cache/module
commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

if [ -f "$bin/.complete" ]; then
	echo "build-components: $K8S_VERSION already in $bin"
	exit 0
fi

staging_version=v0.${K8S_VERSION#v1.}
mkdir -p "$mod" "$bin"
cd "$mod"
export GOFLAGS=-mod=mod CGO_ENABLED=0

if [ ! -f go.mod ]; then
	go mod init ipm.local/k8s-components
	cat >tools.go <<'EOF'
package tools
EOF
	# The staging modules are the `=> ./staging/...` lines of kubernetes' own go.mod.
	go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >download.json
	gomod=$(sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p' download.json)
	staging=$(sed -n 's#^\t*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod")
	[ -n "$staging" ] || {
		echo "build-components: no staging replaces found in $gomod" >&2
		exit 1
	}
	for m in $staging; do
		go mod edit -replace "$m=$m@$staging_version"
	done
	go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
fi

# The values a release build stamps (the commit is not known offline).
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1"
	ldflags+=" -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

for c in "${commands[@]}"; do
	echo "build-components: $c $K8S_VERSION"
	# `go get` resolves the module graph of the pinned command into go.mod first.
	go get "k8s.io/kubernetes/cmd/$c@$K8S_VERSION"
	go build -trimpath -ldflags "$ldflags" -o "$bin/$c" "k8s.io/kubernetes/cmd/$c"
done
touch "$bin/.complete"
echo "build-components: done, $bin"
