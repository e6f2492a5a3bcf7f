package prog

import (
	"testing"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// The flags the ingress path copies from a reply half into its egress half
// (bpf/reply_mirror.h), so that the agent's expiry decides a flow from its
// egress half alone.
const (
	flagReplied = loader.BPFIpmEntryFlagsIPM_F_REPLIED
	flagPeerFin = loader.BPFIpmEntryFlagsIPM_F_PEER_FIN
	flagRst     = loader.BPFIpmEntryFlagsIPM_F_RST
	copiedFlags = flagReplied | flagPeerFin | flagRst
)

// mirrorCase is one flow, the remote's packets to it, and what its egress
// half must carry afterwards.
type mirrorCase struct {
	name    string
	replies []string // TCP flags of each reply; "" for UDP and ICMP
	want    loader.BPFIpmEntryFlags
}

var mirrorCases = []mirrorCase{
	{"not answered", nil, 0},
	{"answered", []string{"SA"}, flagReplied},
	{"answered, then the remote's data", []string{"SA", "PA", "A"}, flagReplied},
	{"closed by the remote", []string{"SA", "FA"}, flagReplied | flagPeerFin},
	{"reset by the remote", []string{"SA", "RA"}, flagReplied | flagRst},
}

// TestReplyMirror: after the remote's packets, the egress half of each
// mapping carries IPM_F_REPLIED once a reply came, the remote's FIN as
// IPM_F_PEER_FIN and its RST as IPM_F_RST, and a last-seen time no older
// than its reply half's; a SYN that starts the tuple afresh clears them with
// the rest. Without the copy the agent would have to read every flow's reply
// half on every pass. IPv4 TCP, UDP and ICMP echo here; IPv6 below.
func TestReplyMirror(t *testing.T) {
	e := newEnv(t, config{})
	for i, tc := range mirrorCases {
		for _, proto := range []uint8{protoTCP, protoUDP, protoICMP} {
			if proto != protoTCP && len(tc.replies) > 1 {
				continue
			}
			sport := uint16(40000 + 10*i + int(proto))
			var out pkt
			switch proto {
			case protoTCP:
				out = tcpPkt(podA, sport, remote, 443, "S")
			case protoUDP:
				out = udpPkt(podA, sport, remote, 53)
			default:
				out = echoRequest(podA, remote, sport)
			}
			port := e.masquerade(t, out)
			for _, flags := range tc.replies {
				r := replyTo(out, port)
				if proto == protoTCP {
					r = tcpPkt(remote, 443, nodeAddr, port, flags)
					r.ack = synAcked // the pod acknowledged nothing yet
				}
				requireVerdict(t, e.ingress(t, r.frame(t)), actPass)
			}
			// ICMP: the remote side's "port" is 0 in both keys.
			okey := natKey(dirEgress, proto, podA, remote, sport, out.dport)
			rkey := natKey(dirIngress, proto, remote, nodeAddr, out.dport, port)
			all := e.natEntries(t)
			eg, in := all[okey], all[rkey]
			if eg.Kind != kindMasq || in.Kind != kindMasq {
				t.Fatalf("%s, proto %d: halves %+v / %+v", tc.name, proto, eg, in)
			}
			if got := eg.ReplyFlags & copiedFlags; got != tc.want {
				t.Errorf("%s, proto %d: egress half carries %#x of the reply's flags, want %#x", tc.name, proto, got, tc.want)
			}
			if eg.LastSeenNs < in.LastSeenNs {
				t.Errorf("%s, proto %d: egress half last seen %d, older than its reply half's %d", tc.name, proto, eg.LastSeenNs, in.LastSeenNs)
			}
		}
	}

	// A new connection on the closed tuple starts without the old one's
	// reply: the agent must see it opening, not established or closing.
	closed := tcpPkt(podA, uint16(40000+10*3+int(protoTCP)), remote, 443, "S")
	e.masquerade(t, closed)
	eg := e.natEntries(t)[natKey(dirEgress, protoTCP, closed.src, closed.dst, closed.sport, closed.dport)]
	if eg.ReplyFlags&copiedFlags != 0 {
		t.Errorf("after a new SYN on a closed tuple the egress half's copy carries %#x, want none of %#x", eg.ReplyFlags, copiedFlags)
	}
}

// TestReplyMirror6 is TestReplyMirror for IPv6.
func TestReplyMirror6(t *testing.T) {
	e := newEnv6(t, config6{})
	for i, tc := range mirrorCases {
		sport := uint16(41000 + i)
		out := tcp6(pod6A, sport, remote6, 443, "S")
		port := e.masquerade6(t, out)
		for _, flags := range tc.replies {
			r := tcp6(remote6, 443, node6, port, flags)
			r.ack = synAcked // the pod acknowledged nothing yet
			requireVerdict(t, e.ingress(t, r.frame(t)), actPass)
		}
		all := e.natEntries6(t)
		eg := all[natKey6(dirEgress, protoTCP, pod6A, remote6, sport, 443)]
		in := all[natKey6(dirIngress, protoTCP, remote6, node6, 443, port)]
		if eg.Kind != kindMasq || in.Kind != kindMasq {
			t.Fatalf("%s: halves %+v / %+v", tc.name, eg, in)
		}
		if got := eg.ReplyFlags & copiedFlags; got != tc.want {
			t.Errorf("%s: egress half carries %#x of the reply's flags, want %#x", tc.name, got, tc.want)
		}
		if eg.LastSeenNs < in.LastSeenNs {
			t.Errorf("%s: egress half last seen %d, older than its reply half's %d", tc.name, eg.LastSeenNs, in.LastSeenNs)
		}
	}
}
