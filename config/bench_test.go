package config

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

// benchDoc is a config as the bench harness writes it: n random /16-/28
// prefixes in a YAML block list.
func benchDoc(n int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "cidrLimit: %d\nnonMasqueradeCIDRs:\n", n)
	rng := rand.New(rand.NewPCG(1, 2))
	for range n {
		v := rng.Uint32()
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		fmt.Fprintf(&b, "  - %s\n", netip.PrefixFrom(a, 16+rng.IntN(13)).Masked())
	}
	return []byte(b.String())
}

func BenchmarkParse10k(b *testing.B) {
	doc := benchDoc(10000)
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(doc, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
