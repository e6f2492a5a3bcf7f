package prog

import (
	"encoding/binary"
	"testing"
)

// TestIPv6UnknownMidStreamReset: as TestUnknownMidStreamReset, for IPv6: a
// pod's segment without a mapping becomes a RST to the pod, every checksum
// right; a RST is dropped.
func TestIPv6UnknownMidStreamReset(t *testing.T) {
	e := newEnv6(t, config6{})
	p := tcp6(pod6A, 40000, remote6, 443, "PA")
	r := e.egress(t, p.frame(t))
	requireVerdict(t, r, actRedirect)
	if len(r.out) < 14+40+20 {
		t.Fatalf("reset is %d bytes", len(r.out))
	}
	out := r.out[:14+40+20]
	requireChecksums6(t, out)
	if u := decode6(t, out); u != p.tuple.reply() {
		t.Errorf("reset %v, want %v", u, p.tuple.reply())
	}
	th := out[14+40:]
	if th[13] != 0x14 || binary.BigEndian.Uint32(th[4:]) != 0x0a0b0c0d ||
		binary.BigEndian.Uint32(th[8:]) != 0x01020304+uint32(len(p.payload)) {
		t.Errorf("reset flags %#x seq %#x ack %#x", th[13], binary.BigEndian.Uint32(th[4:]), binary.BigEndian.Uint32(th[8:]))
	}
	before := e.snap(t)
	requireVerdict(t, e.egress(t, tcp6(pod6A, 40000, remote6, 443, "R").frame(t)), actShot)
	e.expect6(t, before, map[string]uint64{"egress_tcp_unknown_drop": 1})

	// Opened from outside: the pod's answers pass unchanged.
	requireVerdict(t, e.ingress(t, tcp6(remote6b, 51000, pod6A, 80, "S").frame(t)), actPass)
	sa := tcp6(pod6A, 80, remote6b, 51000, "SA").frame(t)
	r = e.egress(t, sa)
	requireVerdict(t, r, actPass)
	requireUnchanged(t, r.out, sa)
}

// TestIPv6FlowState: as TestOutOfWindowReset and TestSynRestartsMapping,
// for IPv6.
func TestIPv6FlowState(t *testing.T) {
	e := newEnv6(t, config6{config: config{keepPorts: true}})
	syn := tcp6(pod6A, 40000, remote6, 443, "S")
	port := e.masquerade6(t, syn)
	e.unmasquerade6(t, replyTo6(syn, port), syn.tuple)
	e.masquerade6(t, tcp6(pod6A, 40000, remote6, 443, "A")) // acknowledges 0x0a0b0c0d, window 64800
	inKey := natKey6(dirIngress, protoTCP, remote6, node6, 443, port)
	outKey := natKey6(dirEgress, protoTCP, pod6A, remote6, 40000, 443)

	blind := tcp6(remote6, 443, node6, port, "R") // seq 0x01020304: far outside
	before := e.snap(t)
	requireVerdict(t, e.ingress(t, blind.frame(t)), actPass)
	e.expect6(t, before, map[string]uint64{"ingress_tcp_implausible": 1})
	if f := e.natEntries6(t)[inKey].Flags; f&3 != 0 {
		t.Errorf("a blind RST was recorded: flags %d", f)
	}
	rst := blind
	rst.seq = 0x0a0b0c0d
	requireVerdict(t, e.ingress(t, rst.frame(t)), actPass)
	if f := e.natEntries6(t)[inKey].Flags; f&2 == 0 {
		t.Errorf("an in-window RST was not recorded: flags %d", f)
	}

	if got := e.masquerade6(t, syn); got != port {
		t.Fatalf("reconnect got node port %d, want %d", got, port)
	}
	all := e.natEntries6(t)
	if out, in := all[outKey], all[inKey]; out.Flags&3 != 0 || in.Flags != 0 || in.LastSeenNs != 0 {
		t.Errorf("after the new SYN: egress flags %d, ingress flags %d last seen %d; want a fresh mapping", out.Flags, in.Flags, in.LastSeenNs)
	}
}
