package maps

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"
)

// The datapath reads the memory of these integers as network-order bytes.
func TestAddrToBEIsNetworkOrderInMemory(t *testing.T) {
	for _, s := range []string{"10.244.1.2", "172.31.0.2", "0.0.0.0", "255.255.255.255", "1.2.3.4"} {
		a := netip.MustParseAddr(s)
		v := addrToBE(a)
		mem := (*[4]byte)(unsafe.Pointer(&v))
		if *mem != a.As4() {
			t.Errorf("%s: memory %v, want %v", s, *mem, a.As4())
		}
		if back := addrFromBE(v); back != a {
			t.Errorf("%s: round trip gave %s", s, back)
		}
	}
}

func TestPortToBEIsNetworkOrderInMemory(t *testing.T) {
	for _, p := range []uint16{0, 1, 80, 1024, 40000, 65535} {
		v := portToBE(p)
		mem := (*[2]byte)(unsafe.Pointer(&v))
		if got := binary.BigEndian.Uint16(mem[:]); got != p {
			t.Errorf("port %d: memory holds %d in network order", p, got)
		}
		if back := portFromBE(v); back != p {
			t.Errorf("port %d: round trip gave %d", p, back)
		}
	}
}

func TestReplyAndOriginalKeysArePaired(t *testing.T) {
	pod, remote, node := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("203.0.113.10"), netip.MustParseAddr("172.31.0.2")
	for _, proto := range []uint8{6, 17, 1} {
		k := NATKey{Saddr: addrToBE(pod), Daddr: addrToBE(remote), Sport: portToBE(40000), Proto: proto, Dir: dirEgress}
		if proto != 1 {
			k.Dport = portToBE(443)
		}
		out := NATEntry{Addr: addrToBE(node), Port: portToBE(51234), Kind: kindMasq}
		rk := replyKey(k, out)
		if rk.Saddr != k.Daddr || rk.Daddr != out.Addr || rk.Dport != out.Port || rk.Dir != dirIngress {
			t.Errorf("proto %d: reply key %+v does not match the reply of %+v", proto, rk, k)
		}
		in := NATEntry{Addr: k.Saddr, Port: k.Sport, Kind: kindMasq}
		if back := originalKey(rk, in); back != k {
			t.Errorf("proto %d: original key %+v, want %+v", proto, back, k)
		}
	}
}

func TestCounterNames(t *testing.T) {
	if got := snake("EgressNewFlow"); got != "egress_new_flow" {
		t.Errorf("snake = %q", got)
	}
}
