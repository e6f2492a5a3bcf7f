package main

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// Filling a NAT table for the scale phase: through the maps, with the maps
// package's encoding of both halves, because the datapath would need one
// new-flow packet per flow (about 1 µs each in a test run, plus building
// the packets), and a million flows written in batches take seconds.

// fillBatch is how many entries one BPF_MAP_UPDATE_BATCH call writes.
const fillBatch = 8192

// Filler flows: pod 10.128.0.0/9 (one address per flow), remote
// 198.18.0.0/15:443 (the benchmarking range, never routed anywhere: no
// packet of the phase goes there), node port 1024 + flow / 131072, so every
// egress and reply key is distinct up to 8M flows.
var (
	fillPodBase    = netip.MustParseAddr("10.128.0.0")
	fillRemoteBase = netip.MustParseAddr("198.18.0.0")
)

const fillRemotes = 1 << 17

// addrPlus returns a + n for IPv4 addresses.
func addrPlus(a netip.Addr, n int) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// fillFlows writes flows first..first+n-1 (two entries each) into an
// ipm_nat4 map, as established TCP flows last seen at lastSeen (the
// datapath's monotonic clock), masqueraded to node.
func fillFlows(m *ebpf.Map, first, n int, node netip.Addr, ifindex uint32, lastSeen time.Duration) error {
	if first+n > fillRemotes*(65536-1024) {
		return fmt.Errorf("%d flows: more than the filler's address plan holds", first+n)
	}
	keys := make([]maps.NATKey, 0, fillBatch)
	vals := make([]maps.NATEntry, 0, fillBatch)
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			if !errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("batch update of %d entries: %w", len(keys), err)
			}
			for i := range keys { // kernels before 5.6
				if err := m.Put(&keys[i], &vals[i]); err != nil {
					return err
				}
			}
		}
		keys, vals = keys[:0], vals[:0]
		return nil
	}
	for j := first; j < first+n; j++ {
		pod := netip.AddrPortFrom(addrPlus(fillPodBase, j), 40000)
		remote := netip.AddrPortFrom(addrPlus(fillRemoteBase, j%fillRemotes), 443)
		nodePort := netip.AddrPortFrom(node, uint16(1024+j/fillRemotes))
		ok, o, ik, i := maps.MasqHalves4(unix.IPPROTO_TCP, pod, remote, nodePort, ifindex, lastSeen)
		keys = append(keys, ok, ik)
		vals = append(vals, o, i)
		if len(keys) >= fillBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// cycleBases are the addresses of the datapath cycles (see putCycle).
var (
	cycleEgressBase  = netip.MustParseAddr("10.244.0.0")
	cycleIngressBase = netip.MustParseAddr("10.245.0.0")
	cycleServer      = netip.AddrPortFrom(serverIP, 443)
)

// cycleAt is the pod end of flow i of a cycle from base (also the bare
// lookup's key, scale_lookup.go).
func cycleAt(base netip.Addr, i int) netip.AddrPort {
	return netip.AddrPortFrom(addrPlus(base, i), 40000)
}

// putCycle writes k entries of one direction that chain into a cycle: the
// packet of flow i is rewritten into the packet of flow i+1 (mod k). A test
// run repeats the program on its own output, so each repeat looks up
// another entry, in another hash bucket: k distinct flows per sample, no
// single hot entry in the cache. Egress: pod i:40000 -> server:443 becomes
// pod i+1:40000; ingress: server:443 -> pod i:40000 becomes pod i+1. The
// first frame of each is returned.
func putCycle(m *ebpf.Map, dir loader.BPFIpmDir, k int) ([]byte, error) {
	if k < 2 || k > 65536 {
		return nil, fmt.Errorf("cycle of %d flows: want 2 to 65536", k)
	}
	base := cycleEgressBase
	if dir == loader.BPFIpmDirIPM_DIR_INGRESS {
		base = cycleIngressBase
	}
	d := cycleServer
	at := func(i int) netip.AddrPort { return cycleAt(base, i%k) }
	keys := make([]loader.BPFIpmNatKey, 0, k)
	vals := make([]loader.BPFIpmNatEntry, 0, k)
	for i := range k {
		key := natKey(dir, at(i), d)
		if dir == loader.BPFIpmDirIPM_DIR_INGRESS {
			key = natKey(dir, d, at(i))
		}
		next := at(i + 1)
		keys = append(keys, key)
		vals = append(vals, loader.BPFIpmNatEntry{Addr: be32(next.Addr()), Port: be16(next.Port()),
			Kind: loader.BPFIpmKindIPM_KIND_MASQ, Ifindex: testIfindex})
	}
	for i := 0; i < k; i += fillBatch {
		j := min(i+fillBatch, k)
		if _, err := m.BatchUpdate(keys[i:j], vals[i:j], nil); err != nil {
			for x := i; x < j; x++ {
				if err := m.Put(&keys[x], &vals[x]); err != nil {
					return nil, err
				}
			}
		}
	}
	if dir == loader.BPFIpmDirIPM_DIR_INGRESS {
		return tcpFrame(d, at(0), tcpACK|tcpPSH, 64), nil
	}
	return tcpFrame(at(0), d, tcpACK|tcpPSH, 64), nil
}
