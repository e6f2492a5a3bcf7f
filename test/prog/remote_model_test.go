package prog

import (
	"encoding/binary"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// podSide is what a mapping's egress half records of the pod's side of a
// TCP connection, against which the remote's segments are judged.
type podSide struct {
	found  bool // the egress half exists
	flags  loader.BPFIpmEntryFlags
	ack    uint32 // with IPM_F_ACK: the pod's last acknowledgement; before, with IPM_F_WSCALE: its SYN's sequence number + 1
	win    uint16
	wscale uint8
}

func podSideOf(flags loader.BPFIpmEntryFlags, ack uint32, win uint16, wscale uint8) podSide {
	return podSide{found: true, flags: flags, ack: ack, win: win, wscale: wscale}
}

// remotePlausible is the fuzz oracles' model of the rule in
// docs/behaviour.md §9.2: whether a remote's TCP segment with these flags,
// sequence and acknowledgement numbers may change its mapping.
func remotePlausible(pod podSide, tcpFlags uint8, seq, ack uint32) bool {
	const rst, ackFlag = 0x04, 0x10
	switch {
	case !pod.found:
		return true
	case pod.flags&loader.BPFIpmEntryFlagsIPM_F_ACK != 0:
		scale := 14
		if pod.flags&loader.BPFIpmEntryFlagsIPM_F_WSCALE != 0 {
			scale = min(int(pod.wscale&15), 14)
		}
		wnd := int64(pod.win) << scale
		off := int64(int32(seq - pod.ack))
		if tcpFlags&rst != 0 {
			return off >= 0 && off <= wnd
		}
		return off <= wnd && -off <= wnd
	case pod.flags&loader.BPFIpmEntryFlagsIPM_F_WSCALE != 0 && tcpFlags&rst != 0 && pod.ack != 0:
		// The SYN's data (TCP Fast Open) may be acknowledged too.
		return tcpFlags&ackFlag != 0 && ack-pod.ack <= 0xffff
	}
	return true
}

// tcpSeqAck reads the sequence and acknowledgement numbers of the TCP
// header at l4 (zero where the frame is cut short).
func tcpSeqAck(frame []byte, l4 int) (seq, ack uint32) {
	if len(frame) >= l4+8 {
		seq = binary.BigEndian.Uint32(frame[l4+4:])
	}
	if len(frame) >= l4+12 {
		ack = binary.BigEndian.Uint32(frame[l4+8:])
	}
	return seq, ack
}

// remoteCounter is the counter a remote's packet on a mapping moves: TCP
// segments are judged (in the fuzz tests every one is: no reply half there
// has been seen yet, so each starts a new period).
func remoteCounter(proto uint8, pod podSide, tcpFlags uint8, frame []byte, l4 int) string {
	if proto == protoTCP {
		seq, ack := tcpSeqAck(frame, l4)
		if !remotePlausible(pod, tcpFlags, seq, ack) {
			return "ingress_tcp_implausible"
		}
	}
	return "ingress_translated"
}
