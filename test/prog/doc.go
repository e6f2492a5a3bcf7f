// Package prog holds the tier-2 tests of the datapath (docs/development.md): the
// eBPF programs run on crafted Ethernet frames through BPF_PROG_TEST_RUN
// ((*ebpf.Program).Run), each against its own freshly loaded maps on a
// throwaway bpffs, and every checksum of every output is recomputed from
// scratch in the assertion. It also holds the fuzz targets and the
// per-path cost measurements (docs/performance.md).
//
// Everything here needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN for
// the bpffs mount) and skips with a message otherwise, except the checksum
// self-test, which needs no privilege.
//
//	go test ./test/prog/ -v
//	go test ./test/prog/ -run XXX -fuzz FuzzEgress -fuzztime 100000x
package prog
