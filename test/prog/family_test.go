package prog

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// family is what the IPv4 and the IPv6 program tests differ in, for the
// tests whose bodies are otherwise the same: the datapath's configuration,
// how a segment is built, how a NAT entry is written and how frames are
// compared.
type family struct {
	name   string // "IPv4" or "IPv6", for messages
	newEnv func(t testing.TB) *env
	// tcp builds the frame of a TCP segment from src to dst.
	tcp func(t testing.TB, src, dst netip.AddrPort, flags string) []byte
	// putMasq writes the NAT half of direction dir for src -> dst that
	// rewrites it to to (the source on egress, the destination on ingress).
	putMasq func(e *env, t testing.TB, dir loader.BPFIpmDir, proto uint8, src, dst, to netip.AddrPort)
	// requireSame compares two frames but for the checksums, which
	// requireChecksums verifies.
	requireSame      func(t testing.TB, got, want []byte)
	requireChecksums func(t testing.TB, frame []byte)
}

var (
	ipv4 = family{
		name:   "IPv4",
		newEnv: func(t testing.TB) *env { return newEnv(t, config{}) },
		tcp: func(t testing.TB, src, dst netip.AddrPort, flags string) []byte {
			return tcpPkt(src.Addr(), src.Port(), dst.Addr(), dst.Port(), flags).frame(t)
		},
		putMasq: func(e *env, t testing.TB, dir loader.BPFIpmDir, proto uint8, src, dst, to netip.AddrPort) {
			e.putEntry(t, natKey(dir, proto, src.Addr(), dst.Addr(), src.Port(), dst.Port()), kindMasq, to.Addr(), to.Port())
		},
		requireSame:      requireSameExceptChecksums,
		requireChecksums: requireChecksums,
	}
	ipv6 = family{
		name:   "IPv6",
		newEnv: func(t testing.TB) *env { return newEnv6(t, config6{}) },
		tcp: func(t testing.TB, src, dst netip.AddrPort, flags string) []byte {
			return tcp6(src.Addr(), src.Port(), dst.Addr(), dst.Port(), flags).frame(t)
		},
		putMasq: func(e *env, t testing.TB, dir loader.BPFIpmDir, proto uint8, src, dst, to netip.AddrPort) {
			e.putEntry6(t, natKey6(dir, proto, src.Addr(), dst.Addr(), src.Port(), dst.Port()), kindMasq, to.Addr(), to.Port())
		},
		requireSame:      requireSame6,
		requireChecksums: requireChecksums6,
	}
)

// requireAlternation checks one repeat of prog: the frame in becomes want
// with every checksum right, and three repeats give the same.
func (f family) requireAlternation(t *testing.T, prog *ebpf.Program, in, want []byte) {
	t.Helper()
	for _, n := range []uint32{1, 3} {
		opts := ebpf.RunOptions{Data: append([]byte(nil), in...), DataOut: make([]byte, len(in)+256), Repeat: n}
		if _, err := prog.Run(&opts); err != nil {
			t.Fatal(err)
		}
		f.requireSame(t, opts.DataOut, want)
		f.requireChecksums(t, opts.DataOut)
	}
}
