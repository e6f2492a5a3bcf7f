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

// addrToBE returns an IPv4 address as the uint32 whose memory holds it in
// network order.
func addrToBE(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// addrUint32 returns an IPv4 address as a number (10.1.2.3 is 0x0a010203).
func addrUint32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// addrFromBE is the inverse of addrToBE.
func addrFromBE(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// portToBE returns a port as the uint16 whose memory holds it in network order.
func portToBE(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

// portFromBE is the inverse of portToBE.
func portFromBE(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func nativeUint32(b []byte) uint32       { return binary.NativeEndian.Uint32(b) }
func putNativeUint32(b []byte, v uint32) { binary.NativeEndian.PutUint32(b, v) }
