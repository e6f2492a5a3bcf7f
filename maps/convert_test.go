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
		v := AddrToBE(a)
		mem := (*[4]byte)(unsafe.Pointer(&v))
		if *mem != a.As4() {
			t.Errorf("%s: memory %v, want %v", s, *mem, a.As4())
		}
		if back := AddrFromBE(v); back != a {
			t.Errorf("%s: round trip gave %s", s, back)
		}
	}
}

func TestPortToBEIsNetworkOrderInMemory(t *testing.T) {
	for _, p := range []uint16{0, 1, 80, 1024, 40000, 65535} {
		v := PortToBE(p)
		mem := (*[2]byte)(unsafe.Pointer(&v))
		if got := binary.BigEndian.Uint16(mem[:]); got != p {
			t.Errorf("port %d: memory holds %d in network order", p, got)
		}
		if back := PortFromBE(v); back != p {
			t.Errorf("port %d: round trip gave %d", p, back)
		}
	}
}

func TestReplyAndOriginalKeysArePaired(t *testing.T) {
	for _, fam := range []struct{ pod, remote, node string }{
		{"10.244.1.2", "203.0.113.10", "172.31.0.2"},
		{"fd00:10:244:1::2", "2001:db8:1::10", "2001:db8:31::2"},
	} {
		pod, remote, node := netip.MustParseAddr(fam.pod), netip.MustParseAddr(fam.remote), netip.MustParseAddr(fam.node)
		for _, proto := range []uint8{6, 17, 1, 58} {
			k := tuple{Src: pod, Dst: remote, Sport: 40000, Proto: proto, Dir: dirEgress}
			if !isICMP(proto) {
				k.Dport = 443
			}
			out := half{Addr: node, Port: 51234, Kind: kindMasq}
			rk := replyKey(k, out)
			if rk.Src != remote || rk.Dst != node || rk.Dport != 51234 || rk.Dir != dirIngress {
				t.Errorf("proto %d: reply key %+v does not match the reply of %+v", proto, rk, k)
			}
			in := half{Addr: pod, Port: 40000, Kind: kindMasq}
			if back := originalKey(rk, in); back != k {
				t.Errorf("proto %d: original key %+v, want %+v", proto, back, k)
			}
		}
	}
}

func TestCodecsRoundTrip(t *testing.T) {
	for _, tu := range []tuple{
		{Src: netip.MustParseAddr("10.244.1.2"), Dst: netip.MustParseAddr("203.0.113.10"), Sport: 40000, Dport: 443, Proto: 6, Dir: dirEgress},
		{Src: netip.MustParseAddr("fd00::2"), Dst: netip.MustParseAddr("2001:db8::10"), Sport: 1, Dport: 65535, Proto: 17, Dir: dirIngress},
	} {
		var back tuple
		if tu.Src.Is4() {
			back = codec4{}.tuple(codec4{}.key(tu))
		} else {
			back = codec6{}.tuple(codec6{}.key(tu))
		}
		if back != tu {
			t.Errorf("round trip of %+v gave %+v", tu, back)
		}
	}
}

func TestCounterNames(t *testing.T) {
	if got := snake("EgressNewFlow"); got != "egress_new_flow" {
		t.Errorf("snake = %q", got)
	}
}
