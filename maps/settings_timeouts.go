package maps

import "github.com/ipmasq-ebpf/ip-masq-agent/loader"

// SetTimeouts gives the datapath the agent's flow timeouts, so that port
// allocation can reclaim an expired flow it meets while no agent runs
// (bpf/expiry.h mirrors state and timeout in nat.go). A zero timeout makes
// the datapath keep flows of that state for the agent.
func (s *Settings) SetTimeouts(t Timeouts) error {
	return s.update(func(v *loader.BPFIpmSettings) error {
		v.TimeoutTcpSynNs = uint64(t.TCPSyn)
		v.TimeoutTcpEstablishedNs = uint64(t.TCPEstablished)
		v.TimeoutTcpFinNs = uint64(t.TCPFin)
		v.TimeoutTcpRstNs = uint64(t.TCPRst)
		v.TimeoutUdpNs = uint64(t.UDP)
		v.TimeoutUdpStreamNs = uint64(t.UDPStream)
		v.TimeoutIcmpNs = uint64(t.ICMP)
		return nil
	})
}
