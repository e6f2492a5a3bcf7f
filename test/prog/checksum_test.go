package prog

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// csum is the internet checksum of RFC 1071: the ones' complement of the
// ones' complement sum of b's big-endian 16-bit words, an odd last byte
// padded with zero. Over data that includes a correct checksum it is 0.
func csum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// pseudoHeader is the IPv4 pseudo-header of a TCP or UDP checksum.
func pseudoHeader(ip []byte, proto uint8, l4len int) []byte {
	p := make([]byte, 12)
	copy(p[0:8], ip[12:20])
	p[9] = proto
	binary.BigEndian.PutUint16(p[10:], uint16(l4len))
	return p
}

// fieldSum returns the checksum that belongs in the 16-bit field at off of
// covered (prefix prepended), computed from scratch with the field zeroed.
func fieldSum(prefix, covered []byte, off int) uint16 {
	b := append(append([]byte(nil), prefix...), covered...)
	b[len(prefix)+off], b[len(prefix)+off+1] = 0, 0
	return csum(b)
}

// checkFrame recomputes from scratch every checksum an IPv4 frame carries:
// the IPv4 header checksum, the TCP and UDP checksums with their
// pseudo-header over the whole segment (tot_len - IHL), the ICMP checksum over
// the whole message. A UDP checksum of 0 means none and is accepted. A
// fragment carries only the IPv4 header checksum: its L4 checksum covers
// the whole datagram, so it is not checked here.
func checkFrame(frame []byte) error {
	if len(frame) < 14 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return fmt.Errorf("not an IPv4 frame")
	}
	ip := frame[14:]
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return fmt.Errorf("no IPv4 header")
	}
	ihl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < 20 || len(ip) < ihl || tot < ihl || tot > len(ip) {
		return fmt.Errorf("IPv4 lengths inconsistent: IHL %d, tot_len %d, %d bytes", ihl, tot, len(ip))
	}
	if csum(ip[:ihl]) != 0 {
		return fmt.Errorf("IPv4 header checksum 0x%04x, want 0x%04x", binary.BigEndian.Uint16(ip[10:]), fieldSum(nil, ip[:ihl], 10))
	}
	if frag := binary.BigEndian.Uint16(ip[6:]); frag&0x3fff != 0 {
		return nil // a fragment: its L4 checksum covers the whole datagram
	}
	seg := ip[ihl:tot]
	switch ip[9] {
	case 6:
		if len(seg) < 20 {
			return fmt.Errorf("TCP segment of %d bytes", len(seg))
		}
		return l4Checksum(ip, seg, 6, 16, "TCP")
	case 17:
		if len(seg) < 8 {
			return fmt.Errorf("UDP datagram of %d bytes", len(seg))
		}
		if ul := int(binary.BigEndian.Uint16(seg[4:])); ul != len(seg) {
			return fmt.Errorf("UDP length %d in a datagram of %d bytes", ul, len(seg))
		}
		if binary.BigEndian.Uint16(seg[6:]) == 0 {
			return nil // no checksum
		}
		return l4Checksum(ip, seg, 17, 6, "UDP")
	case 1:
		if len(seg) < 8 {
			return fmt.Errorf("ICMP message of %d bytes", len(seg))
		}
		if csum(seg) != 0 {
			return fmt.Errorf("ICMP checksum 0x%04x, want 0x%04x", binary.BigEndian.Uint16(seg[2:]), fieldSum(nil, seg, 2))
		}
	}
	return nil
}

// l4Checksum checks the checksum of the segment seg of the IPv4 packet ip
// (protocol proto, named name; the checksum field at off), which covers
// the pseudo-header.
func l4Checksum(ip, seg []byte, proto uint8, off int, name string) error {
	ph := pseudoHeader(ip, proto, len(seg))
	if csum(append(ph, seg...)) != 0 {
		return fmt.Errorf("%s checksum 0x%04x, want 0x%04x", name, binary.BigEndian.Uint16(seg[off:]), fieldSum(ph, seg, off))
	}
	return nil
}

// requireChecksums fails the test unless every checksum of frame is right.
func requireChecksums(t testing.TB, frame []byte) {
	t.Helper()
	if err := checkFrame(frame); err != nil {
		t.Fatalf("output checksums: %v\n%s", err, hexdump(frame))
	}
}

// TestChecksum proves the checker itself: the RFC 1071 example, and that it
// accepts what gopacket builds and rejects every single corrupted checksum
// field. Needs no privilege.
func TestChecksum(t *testing.T) {
	// RFC 1071 section 3: the sum of 00 01 f2 03 f4 f5 f6 f7 is ddf2.
	if got := csum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != ^uint16(0xddf2) {
		t.Errorf("RFC 1071 example: got 0x%04x, want 0x%04x", got, ^uint16(0xddf2))
	}
	if got := csum([]byte{0x01}); got != ^uint16(0x0100) {
		t.Errorf("odd length: got 0x%04x, want 0x%04x", got, ^uint16(0x0100))
	}
	if got := csum([]byte{0xff, 0xff, 0x00, 0x01}); got != ^uint16(0x0001) {
		t.Errorf("end-around carry: got 0x%04x, want 0x%04x", got, ^uint16(0x0001))
	}

	for _, tc := range []struct {
		name   string
		p      pkt
		l4csum int // offset of the L4 checksum from the L4 header
	}{
		{"tcp", tcpPkt(podA, 40000, remote, 443, "S"), 16},
		{"udp", udpPkt(podA, 40000, remote, 53), 6},
		{"icmp", echoRequest(podA, remote, 0x4242), 2},
		{"ip options", withOptions(tcpPkt(podA, 40000, remote, 443, "S"), 8), 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.p.frame(t)
			if err := checkFrame(f); err != nil {
				t.Fatalf("gopacket's frame rejected: %v", err)
			}
			l4 := 14 + int(f[14]&0xf)*4
			for name, off := range map[string]int{
				"ip checksum field": 14 + 10,
				"l4 checksum field": l4 + tc.l4csum,
				"covered l4 byte":   l4 + tc.l4csum + 2,
			} {
				bad := append([]byte(nil), f...)
				bad[off] ^= 0x01
				if err := checkFrame(bad); err == nil {
					t.Errorf("%s corrupted: accepted", name)
				}
			}
		})
	}

	t.Run("udp zero", func(t *testing.T) {
		f := udpPkt(podA, 40000, remote, 53).noUDPChecksum().frame(t)
		if err := checkFrame(f); err != nil {
			t.Fatalf("UDP without checksum rejected: %v", err)
		}
	})
}
