package maps

import (
	"net/netip"
	"time"
)

// MasqHalves4 returns the two ipm_nat4 entries the datapath writes for a
// masqueraded IPv4 flow pod -> remote translated to node: the egress half
// keyed by the pod's tuple and the reply half keyed as the answer arrives.
// Both carry lastSeen, so the flow counts as answered (established for TCP),
// and the egress half carries the reply's copy as the datapath writes it
// (bpf/reply_mirror.h).
// For writers of whole tables outside the datapath (the bench's large-table
// phase); built with the same codec and reply key the expiry reads them
// with, so they are valid flows to it.
func MasqHalves4(proto uint8, pod, remote, node netip.AddrPort, ifindex uint32, lastSeen time.Duration) (outKey NATKey, out NATEntry, inKey NATKey, in NATEntry) {
	var c codec4
	k := tuple{Src: pod.Addr(), Dst: remote.Addr(), Sport: pod.Port(), Dport: remote.Port(), Proto: proto, Dir: dirEgress}
	if isICMP(proto) {
		k.Dport = 0
	}
	nodeHalf := half{Addr: node.Addr(), Port: node.Port()}
	rk := replyKey(k, nodeHalf)
	entry := func(to netip.AddrPort) NATEntry {
		return NATEntry{CreatedNs: uint64(lastSeen), LastSeenNs: uint64(lastSeen), Addr: AddrToBE(to.Addr()),
			Port: PortToBE(to.Port()), Kind: kindMasq, Ifindex: ifindex}
	}
	out = entry(node)
	out.ReplyFlags = flagReplied
	return c.key(k), out, c.key(rk), entry(pod)
}
