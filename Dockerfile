# The ip-masq-agent image: one static binary on an empty base.
#
#   docker build --build-arg VERSION=v0.1.0 -t REGISTRY/ip-masq-agent:v0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 ... --push .
#
# Offline (no base image can be pulled), `make image` builds the binary on
# the host the same way and runs only the final stage around it:
#
#   buildah build --build-arg BINARY=prebuilt ...
#
# The eBPF object is embedded in the binary (loader/ipmasq_bpfel.o is
# committed), so building needs Go only, no clang.

# Where the final stage takes the binary from: "build" (compiled in the Go
# image below) or "prebuilt" (bin/ip-masq-agent, or $PREBUILT, from the
# build context).
ARG BINARY=build

# The compiler runs on the builder's platform and cross-compiles for the
# image's (docker buildx build --platform linux/amd64,linux/arm64): the Go
# toolchain needs no emulation, and the embedded BPF objects are the same.
FROM --platform=${BUILDPLATFORM} docker.io/library/golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The same command as `make build`: static (no cgo), no paths of this
# machine, version stamped.
ARG TARGETARCH
RUN CGO_ENABLED=0 GOARCH=${TARGETARCH} go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
	-o /out/ip-masq-agent ./cmd/ip-masq-agent

FROM scratch AS prebuilt
# A path in the build context: make image passes its $(BIN).
ARG PREBUILT=bin/ip-masq-agent
COPY ${PREBUILT} /out/ip-masq-agent

FROM ${BINARY} AS binary

# The final stage: the binary alone. It runs as root (uid 0) in the host's
# network namespace; the DaemonSet grants it privileges or capabilities.
FROM scratch
COPY --from=binary /out/ip-masq-agent /ip-masq-agent
ENTRYPOINT ["/ip-masq-agent"]
