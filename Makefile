# ip-masq-agent on eBPF. `make help` lists the targets.
# Targets that load programs or build namespaces need root.

GO      ?= go
BIN     ?= bin/ip-masq-agent
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# How much each fuzz target runs in `make test` (CI's short pass): a count of executions, about
# 20 s each here. A count, not a duration: Go 1.26's fuzz coordinator can fail a target with a
# bare "context deadline exceeded" when a duration runs out while a worker is mid-call
# (go.dev/issue/75804, fixed in Go 1.27), which is noise, not a finding.
FUZZTIME ?= 60000x
# prometheus: for its promtool, which deploy/ uses to check and unit-test the alerts. On a
# host booted with systemd the package also starts a Prometheus server on :9090
# (`systemctl disable --now prometheus` stops it); containers forbid that with policy-rc.d.
DEBIAN_PACKAGES := clang-19 llvm-19 clang-format-19 libbpf-dev bpftool iproute2 iptables \
	iperf3 socat tcpdump conntrack iputils-ping ethtool \
	buildah podman runc prometheus qemu-user-static \
	etcd-server containerd containernetworking-plugins

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## Install the Debian packages and Go modules everything here needs (root).
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES)
	$(GO) mod download
	cd bench && $(GO) mod download

.PHONY: generate
generate: ## Compile bpf/ with clang-19 and regenerate the Go bindings in loader/.
	$(GO) generate ./loader/

.PHONY: check-generate
check-generate: generate ## Fail when the committed BPF object or bindings differ from a fresh build.
	git diff --exit-code -- loader/

.PHONY: build
build: ## Build the agent binary (static, no cgo) into bin/.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ip-masq-agent

# The image is built offline: the binary as `make build` makes it, once per
# architecture (GOARCH; static, and the embedded BPF objects are
# little-endian, the same for both), each wrapped by the Dockerfile's final
# stage (FROM scratch) with buildah, without a daemon and without pulling
# anything, into one manifest list. `docker build .` compiles in a Go image
# instead.
IMAGE         ?= ip-masq-agent
IMAGE_ARCHIVE ?= bin/ip-masq-agent-image.tar
BUILDAH       ?= buildah --storage-driver vfs
ARCHES        ?= amd64 arm64

.PHONY: image
image: ## Build the container image for $(ARCHES) from bin/ into one OCI archive (manifest list; buildah, offline).
	@# A list or an image of the same name from an earlier run would take the builds.
	$(BUILDAH) manifest rm $(IMAGE):$(VERSION) >/dev/null 2>&1 || $(BUILDAH) rmi $(IMAGE):$(VERSION) >/dev/null 2>&1 || true
	set -e; for arch in $(ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)-$$arch ./cmd/ip-masq-agent; \
		$(BUILDAH) build --pull=never --platform linux/$$arch --manifest $(IMAGE):$(VERSION) \
			--build-arg BINARY=prebuilt --build-arg PREBUILT=$(BIN)-$$arch --build-arg VERSION=$(VERSION) -f Dockerfile .; \
	done
	rm -f $(IMAGE_ARCHIVE)
	$(BUILDAH) manifest push --all $(IMAGE):$(VERSION) oci-archive:$(IMAGE_ARCHIVE):$(IMAGE):$(VERSION)
	@echo "image $(IMAGE):$(VERSION) for $(ARCHES), also in $(IMAGE_ARCHIVE); push it with: $(BUILDAH) manifest push --all $(IMAGE):$(VERSION) docker://REGISTRY/$(IMAGE):$(VERSION)"

.PHONY: lint
lint: ## gofmt, go vet, clang-format, and no citations of documents outside the repository.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo 'gofmt: files above need formatting'; exit 1)
	$(GO) vet ./...
	clang-format-19 --dry-run -Werror bpf/*.c bpf/*.h
	@# The repository stands on its own: cite docs/ or give the reason, never an outside brief or a ticket number.
	@! git grep -nIE 'SPEC [0-9]|[Ii]ssue [0-9]' -- . || (echo 'lint: cite docs/ (e.g. docs/behaviour.md §4) instead of the lines above'; exit 1)

.PHONY: test
test: ## All test tiers (root): unit, BPF program runs, netns end to end in both attach modes, short fuzz pass.
	# test/k8s needs the cluster that make test-k8s starts: it runs there, not here.
	$(GO) test -count=1 -p 1 -timeout 40m $$($(GO) list ./... | grep -v /test/k8s)
	# The helpers build, which kernels before 6.2 load: program tests, end to end of the rewrite paths.
	IPM_DATAPATH_VARIANT=helpers $(GO) test -count=1 -timeout 20m ./test/prog/
	IPM_DATAPATH_VARIANT=helpers $(GO) test -count=1 -timeout 20m -run '^(TestMasquerade|TestPMTUDiscovery|TestFragments|TestExactMatchFiltering|TestRestartUnderTraffic|TestIPv6Masquerade)$$' ./test/e2e/
	cd bench && $(GO) test -mod=mod -count=1 ./...   # the bench harness's smoke pass (its own module)
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzEgress$$' -fuzztime $(FUZZTIME) ./test/prog/
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzIngress$$' -fuzztime $(FUZZTIME) ./test/prog/
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzEgress6$$' -fuzztime $(FUZZTIME) ./test/prog/
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzIngress6$$' -fuzztime $(FUZZTIME) ./test/prog/
	IPM_DATAPATH_VARIANT=helpers $(GO) test -count=1 -run '^$$' -fuzz '^FuzzEgress$$' -fuzztime $(FUZZTIME) ./test/prog/
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./config/

.PHONY: test-unit
test-unit: ## Only the tests that need no privileges.
	$(GO) test -count=1 ./config/ ./maps/ ./migrate/ ./cmd/... ./deploy/

# The Kubernetes binaries are built once into /var/cache/ipm-k8s (about 15 minutes cold).
.PHONY: test-k8s
test-k8s: image ## A real one-node Kubernetes cluster in namespaces runs the DaemonSet (root, offline, ~4 min warm; KEEP=1 leaves it up).
	test/k8s/build-components.sh
	# One cluster per machine (its namespaces have fixed names): a second run waits.
	GO=$(GO) flock /run/ipm-k8s.lock test/k8s/run.sh

.PHONY: test-kernels
test-kernels: ## Program and end-to-end tests inside qemu VMs on Debian's 5.10, 6.1, 6.12 (root, no KVM: slow; KERNELS='5.10').
	test/kernels/run.sh $(KERNELS)

.PHONY: test-kernels-load
test-kernels-load: ## Only load both builds into 5.10, 6.1, 6.12 under qemu with the verifier's figures (root, ~5 min; CI runs it).
	KERNELS_RUN=stats test/kernels/run.sh $(KERNELS)

.PHONY: demo
demo: build ## Build namespaces, run the agent, show pod traffic leaving with the node IP, clean up (root).
	./demo/demo.sh $(BIN)

# Extra flags for bin/ipm-bench, e.g. BENCHFLAGS='-rounds 9 -phases conn'. The bench is its own
# module that uses this one through a replace; -mod=mod lets it pick up a dependency added here.
BENCHFLAGS ?=

.PHONY: bench
bench: build ## Benchmarks side by side: no NAT, upstream's iptables rules, this agent (root, ~10 min); bench/out/.
	cd bench && $(GO) build -mod=mod -o ../bin/ipm-bench .
	bin/ipm-bench -agent $(BIN) -out bench/out $(BENCHFLAGS)

.PHONY: bench-smoke
bench-smoke: ## Smoke pass of the bench harness: every phase at tiny sizes, no timing checked (root, ~1 min).
	cd bench && $(GO) test -mod=mod -count=1 ./...
