// Package maps gives typed access to each of the datapath's maps: Go values
// in, map keys and values out. It loads nothing; loader does.
package maps

import (
	"encoding/binary"
	"net/netip"
)

// The datapath keeps addresses and ports in network byte order, and the
// generated Go types hold them as plain integers read in host (little
// endian) order. These helpers convert between the two without surprises.

// AddrToBE returns an IPv4 address as the uint32 whose memory holds it in
// network order.
func AddrToBE(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// addrUint32 returns an IPv4 address as a number (10.1.2.3 is 0x0a010203).
func addrUint32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// AddrFromBE is the inverse of AddrToBE.
func AddrFromBE(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// PortToBE returns a port as the uint16 whose memory holds it in network order.
func PortToBE(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// PortFromBE is the inverse of PortToBE.
func PortFromBE(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func nativeUint32(b []byte) uint32       { return binary.NativeEndian.Uint32(b) }
func putNativeUint32(b []byte, v uint32) { binary.NativeEndian.PutUint32(b, v) }
