package maps

import (
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// codec4 converts ipm_nat4's keys and values; it reads the map through
// buffers it reuses, so one codec serves one walk at a time.
type codec4 struct{ w walker[NATKey, NATEntry] }

func (codec4) key(t tuple) NATKey {
	return NATKey{Saddr: AddrToBE(t.Src), Daddr: AddrToBE(t.Dst), Sport: PortToBE(t.Sport),
		Dport: PortToBE(t.Dport), Proto: t.Proto, Dir: t.Dir}
}

func (codec4) tuple(k NATKey) tuple {
	return tuple{Src: AddrFromBE(k.Saddr), Dst: AddrFromBE(k.Daddr), Sport: PortFromBE(k.Sport),
		Dport: PortFromBE(k.Dport), Proto: k.Proto, Dir: k.Dir}
}

func (codec4) half(e NATEntry) half {
	return half{Created: time.Duration(e.CreatedNs), LastSeen: time.Duration(e.LastSeenNs),
		Addr: AddrFromBE(e.Addr), Port: PortFromBE(e.Port), Kind: e.Kind, Flags: e.Flags, ReplyFlags: e.ReplyFlags}
}

func (c *codec4) walk(m *ebpf.Map, pace func() error, fn func(tuple, half)) error {
	return c.w.walk(m, pace, func(k *NATKey, e *NATEntry) { fn(c.tuple(*k), c.half(*e)) })
}

func (c codec4) lookup(m *ebpf.Map, t tuple) (half, bool) { return lookupHalf(m, c.key(t), c.half) }

func (c codec4) remove(m *ebpf.Map, t tuple) error { return removeKey(m, c.key(t)) }

// codec6 converts ipm_nat6's keys and values, like codec4.
type codec6 struct {
	w walker[loader.BPFIpmNat6Key, loader.BPFIpmNat6Entry]
}

func (codec6) key(t tuple) loader.BPFIpmNat6Key {
	return loader.BPFIpmNat6Key{Saddr: addr6ToBE(t.Src), Daddr: addr6ToBE(t.Dst), Sport: PortToBE(t.Sport),
		Dport: PortToBE(t.Dport), Proto: t.Proto, Dir: t.Dir}
}

func (codec6) tuple(k loader.BPFIpmNat6Key) tuple {
	return tuple{Src: addr6FromBE(k.Saddr), Dst: addr6FromBE(k.Daddr), Sport: PortFromBE(k.Sport),
		Dport: PortFromBE(k.Dport), Proto: k.Proto, Dir: k.Dir}
}

func (codec6) half(e loader.BPFIpmNat6Entry) half {
	return half{Created: time.Duration(e.CreatedNs), LastSeen: time.Duration(e.LastSeenNs),
		Addr: addr6FromBE(e.Addr), Port: PortFromBE(e.Port), Kind: e.Kind, Flags: e.Flags, ReplyFlags: e.ReplyFlags}
}

func (c *codec6) walk(m *ebpf.Map, pace func() error, fn func(tuple, half)) error {
	return c.w.walk(m, pace, func(k *loader.BPFIpmNat6Key, e *loader.BPFIpmNat6Entry) { fn(c.tuple(*k), c.half(*e)) })
}

func (c codec6) lookup(m *ebpf.Map, t tuple) (half, bool) { return lookupHalf(m, c.key(t), c.half) }

func (c codec6) remove(m *ebpf.Map, t tuple) error { return removeKey(m, c.key(t)) }

// lookupHalf reads the value of key k and converts it with toHalf; false
// when the map holds no such key.
func lookupHalf[K, E any](m *ebpf.Map, k K, toHalf func(E) half) (half, bool) {
	var e E
	if err := m.Lookup(&k, &e); err != nil {
		return half{}, false
	}
	return toHalf(e), true
}

// removeKey deletes key k.
func removeKey[K any](m *ebpf.Map, k K) error { return m.Delete(&k) }

// addr6ToBE returns an IPv6 address as the four uint32 whose memory holds it
// in network order.
func addr6ToBE(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = nativeUint32(b[4*i : 4*i+4])
	}
	return w
}

// addr6FromBE is the inverse of addr6ToBE.
func addr6FromBE(w [4]uint32) netip.Addr {
	var b [16]byte
	for i, v := range w {
		putNativeUint32(b[4*i:4*i+4], v)
	}
	return netip.AddrFrom16(b)
}
