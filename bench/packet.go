package main

import (
	"encoding/binary"
	"net/netip"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// Frames for the program test runs: Ethernet + IPv4 + TCP with correct
// checksums, as a pod (or a remote host) would send them.

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpPSH = 0x08
	tcpACK = 0x10
)

func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func csumFold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = (sum >> 16) + (sum & 0xffff)
	}
	return ^uint16(sum)
}

// tcpFrame builds src -> dst with the given TCP flags and payload length.
func tcpFrame(src, dst netip.AddrPort, flags byte, payload int) []byte {
	const eth, ipl, tcpl = 14, 20, 20
	f := make([]byte, eth+ipl+tcpl+payload)
	copy(f[0:6], []byte{0x02, 0, 0, 0, 0, 0x02})
	copy(f[6:12], []byte{0x02, 0, 0, 0, 0, 0x01})
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[eth : eth+ipl]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipl+tcpl+payload))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = 6
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))
	tcp := f[eth+ipl:]
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	binary.BigEndian.PutUint32(tcp[4:], 1000)
	if flags&tcpACK != 0 {
		binary.BigEndian.PutUint32(tcp[8:], 2000)
	}
	tcp[12] = 5 << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 64240)
	for i := range payload {
		tcp[tcpl+i] = byte(i)
	}
	pseudo := make([]byte, 12)
	copy(pseudo[0:4], s4[:])
	copy(pseudo[4:8], d4[:])
	pseudo[9] = 6
	binary.BigEndian.PutUint16(pseudo[10:], uint16(tcpl+payload))
	binary.BigEndian.PutUint16(tcp[16:], csumFold(csumAdd(csumAdd(0, pseudo), tcp)))
	return f
}

// ipv6Frame is an IPv6 TCP SYN: the programs pass it without looking in.
func ipv6Frame() []byte {
	const eth, ipl, tcpl = 14, 40, 20
	f := make([]byte, eth+ipl+tcpl)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	ip := f[eth:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], tcpl)
	ip[6] = 6
	ip[7] = 64
	ip[8], ip[23] = 0xfd, 1
	ip[24], ip[39] = 0xfd, 2
	tcp := f[eth+ipl:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 443)
	tcp[12] = 5 << 4
	tcp[13] = tcpSYN
	return f
}

// arpFrame is an ARP request: not IP at all.
func arpFrame() []byte {
	f := make([]byte, 14+28)
	for i := range 6 {
		f[i] = 0xff
	}
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	s4, t4 := nodeIP.As4(), peerIP.As4()
	copy(a[14:18], s4[:])
	copy(a[24:28], t4[:])
	return f
}

// be32 and be16 are an IPv4 address and a port as the maps store them:
// network order in memory.
var (
	be32 = maps.AddrToBE
	be16 = maps.PortToBE
)
