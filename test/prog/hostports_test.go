package prog

import (
	"testing"
)

// TestHostPortsShared: host sockets, and flows netfilter already NATed to the
// node address, share the node's ports with pod mappings. A pod mapping must
// never take a tuple such a connection uses, and such a connection must never
// be hijacked by a pod mapping, whichever came first (docs/behaviour.md §8). Here the
// host's connection is node:40000 -> remote:443 and the pod's podA:40000 ->
// remote:443 without --random-fully, so both want node port 40000.
//
// What must hold in both orders: the two connections leave with different
// tuples, the reply to the host's connection reaches the host at
// node:40000, and the reply to the pod's connection reaches the pod.
func TestHostPortsShared(t *testing.T) {
	host := tcpPkt(nodeAddr, 40000, remote, 443, "S")
	pod := tcpPkt(podA, 40000, remote, 443, "S")
	for _, order := range []string{"host first", "pod first"} {
		t.Run(order, func(t *testing.T) {
			e := newEnv(t, config{keepPorts: true})
			send := func(p pkt) tuple {
				r := e.egress(t, p.frame(t))
				requireVerdict(t, r, actPass)
				requireChecksums(t, r.out)
				return decode(t, r.out).tuple
			}
			var hostOut, podOut tuple
			before := e.readCounters(t)
			if order == "host first" {
				hostOut = send(host)
				podOut = send(pod)
				e.expectCounters(t, before, map[string]uint64{"egress_host": 1, "egress_new_flow": 1})
			} else {
				podOut = send(pod)
				hostOut = send(host)
				e.expectCounters(t, before, map[string]uint64{"egress_new_flow": 1, "egress_host_moved": 1})
			}
			if hostOut == podOut {
				t.Fatalf("host connection %v and pod connection %v both left as %v: the remote's replies cannot be told apart, one of them is hijacked", host.tuple, pod.tuple, hostOut)
			}
			for _, c := range []struct {
				name     string
				left, to tuple
			}{
				{"host", hostOut, host.tuple},
				{"pod", podOut, pod.tuple},
			} {
				reply := tcpPkt(c.left.dst, c.left.dport, c.left.src, c.left.sport, "SA")
				r := e.ingress(t, reply.frame(t))
				requireVerdict(t, r, actPass)
				requireChecksums(t, r.out)
				if got := decode(t, r.out).tuple; got != c.to.reply() {
					t.Errorf("reply to the %s connection (%v) arrived as %v, want %v", c.name, reply.tuple, got, c.to.reply())
				}
			}
		})
	}
}

// TestHostTraffic: the node's own traffic (and flows netfilter NATed to a
// node address) leaves with its address and port, byte for byte, and its
// tuple is reserved in the NAT table (kind "host", keyed like a reply) so
// that no pod mapping takes it later; the replies reach the host unchanged
// and mark the reservation as answered (docs/behaviour.md §4, §8).
func TestHostTraffic(t *testing.T) {
	for _, tc := range []struct {
		name  string
		out   pkt
		reply pkt
	}{
		{"tcp from the node address", tcpPkt(nodeAddr, 40000, remote, 443, "S"), tcpPkt(remote, 443, nodeAddr, 40000, "SA")},
		{"tcp from another node address", tcpPkt(nodeOther, 40000, remote, 443, "S"), tcpPkt(remote, 443, nodeOther, 40000, "SA")},
		{"udp", udpPkt(nodeAddr, 40000, remote, 53), udpPkt(remote, 53, nodeAddr, 40000)},
		{"icmp echo", echoRequest(nodeAddr, remote, 5), echoReply(remote, nodeAddr, 5)},
		{"tcp to a non-masquerade destination", tcpPkt(nodeAddr, 40000, inCluster, 443, "S"), tcpPkt(inCluster, 443, nodeAddr, 40000, "SA")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, config{})
			before := e.readCounters(t)
			for range 2 {
				in := tc.out.frame(t)
				e.passUnchanged(t, false, in)
			}
			e.expectCounters(t, before, map[string]uint64{"egress_host": 2})

			rk := natKey(dirIngress, tc.out.proto, tc.out.dst, tc.out.src, tc.out.dport, tc.out.sport)
			if tc.out.proto == protoICMP {
				rk.Sport = 0
			}
			all := e.natEntries(t)
			v, ok := all[rk]
			if len(all) != 1 || !ok {
				t.Fatalf("NAT table %+v, want only the host reservation %+v", all, rk)
			}
			if v.Kind != kindHost || fromBE32(v.Addr) != tc.out.src || fromBE16(v.Port) != tc.out.sport {
				t.Errorf("reservation %+v, want kind host, %s:%d", v, tc.out.src, tc.out.sport)
			}

			before = e.readCounters(t)
			in := tc.reply.frame(t)
			e.passUnchanged(t, true, in)
			e.expectCounters(t, before, map[string]uint64{"ingress_host": 1})
			if v := e.natEntries(t)[rk]; v.Flags&4 == 0 || v.LastSeenNs == 0 {
				t.Errorf("reservation after the reply: %+v, want the replied flag (4) and a last-seen time", v)
			}

			// A pod flow to the same remote endpoint, which would keep
			// its port, gets another one.
			if tc.out.src != nodeAddr || tc.out.dst == inCluster {
				return
			}
			e2 := newEnv(t, config{keepPorts: true})
			requireVerdict(t, e2.egress(t, tc.out.frame(t)), actPass)
			pod := tc.out.with(tuple{tc.out.proto, podA, tc.out.dst, tc.out.sport, tc.out.dport})
			if got := e2.masquerade(t, pod); got == tc.out.sport {
				t.Errorf("pod flow %v took the reserved node port %d", pod.tuple, got)
			}
		})
	}
}

// TestHostFlowMoved: a new host connection on a tuple a pod mapping holds is
// moved to another node port, and its replies come back to the host's port;
// a running host connection (TCP without SYN) cannot be moved and passes
// (docs/behaviour.md §8).
func TestHostFlowMoved(t *testing.T) {
	e := newEnv(t, config{keepPorts: true})
	e.masquerade(t, tcpPkt(podA, 40000, remote, 443, "S")) // node port 40000

	host := tcpPkt(nodeAddr, 40000, remote, 443, "S")
	r := e.egress(t, host.frame(t))
	requireVerdict(t, r, actPass)
	moved := decode(t, r.out)
	if moved.src != nodeAddr || moved.sport == 40000 {
		t.Fatalf("host SYN left as %v, want another node port", moved.tuple)
	}
	requireSameExceptChecksums(t, r.out, host.with(moved.tuple).frame(t))
	requireChecksums(t, r.out)

	before := e.readCounters(t)
	r = e.egress(t, tcpPkt(nodeAddr, 40000, remote, 443, "A").frame(t))
	requireVerdict(t, r, actPass)
	if got := decode(t, r.out).sport; got != moved.sport {
		t.Errorf("host's second segment left with port %d, want %d", got, moved.sport)
	}
	e.expectCounters(t, before, map[string]uint64{"egress_translated": 1})
	e.unmasquerade(t, tcpPkt(remote, 443, nodeAddr, moved.sport, "SA"), host.tuple)

	// A running host connection on another pod mapping's tuple.
	e.masquerade(t, tcpPkt(podB, 40002, remote, 443, "S"))
	running := tcpPkt(nodeAddr, 40002, remote, 443, "A").frame(t)
	before = e.readCounters(t)
	r = e.egress(t, running)
	requireVerdict(t, r, actPass)
	requireUnchanged(t, r.out, running)
	e.expectCounters(t, before, map[string]uint64{"egress_host": 1})
}
