package maps

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// PortRange is an inclusive range of node ports, in host order.
type PortRange struct{ First, Last uint16 }

// MaxPortRanges is how many ranges the datapath can draw ports from.
const MaxPortRanges = len(loader.BPFIpmSettings{}.Ranges)

// Settings is the single entry of ipm_settings. The agent is its only
// writer, so it keeps the value here and writes it whole.
type Settings struct {
	mu  sync.Mutex
	m   *ebpf.Map
	val loader.BPFIpmSettings
}

// OpenSettings reads the current value, so a restarted agent keeps the
// active trie index of the one before it.
func OpenSettings(d *loader.Datapath) (*Settings, error) {
	s := &Settings{m: d.Maps.IpmSettings}
	if err := s.m.Lookup(uint32(0), &s.val); err != nil {
		return nil, fmt.Errorf("read settings: %w", err)
	}
	s.val.LayoutVersion = loader.Layout
	return s, nil
}

// SetPorts sets how node ports are chosen for new flows.
func (s *Settings) SetPorts(ranges []PortRange, randomFully bool) error {
	if len(ranges) == 0 || len(ranges) > MaxPortRanges {
		return fmt.Errorf("port ranges: need 1 to %d, got %d", MaxPortRanges, len(ranges))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.val
	v.RangeCount = uint32(len(ranges))
	v.PortCount = 0
	for i := range v.Ranges {
		v.Ranges[i].First, v.Ranges[i].Last = 0, 0
	}
	for i, r := range ranges {
		if r.First == 0 || r.Last < r.First {
			return fmt.Errorf("port range %d-%d: invalid", r.First, r.Last)
		}
		v.Ranges[i].First, v.Ranges[i].Last = r.First, r.Last
		v.PortCount += uint32(r.Last) - uint32(r.First) + 1
	}
	v.RandomFully = 0
	if randomFully {
		v.RandomFully = 1
	}
	return s.write(v)
}

// SetIPv6 turns IPv6 masquerading on or off (--enable-ipv6).
func (s *Settings) SetIPv6(enable bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.val
	v.EnableIpv6 = 0
	if enable {
		v.EnableIpv6 = 1
	}
	return s.write(v)
}

// SetSourceCIDRs turns the source check of new mappings on (only sources in
// ipm_src4/ipm_src6) or off (every source that is not the node's).
func (s *Settings) SetSourceCIDRs(on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.val
	v.SourceCidrs = 0
	if on {
		v.SourceCidrs = 1
	}
	return s.write(v)
}

// SourceCIDRs reports whether the source check is on.
func (s *Settings) SourceCIDRs() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.val.SourceCidrs != 0
}

// ActiveCIDRs returns the index of the trie that decides.
func (s *Settings) ActiveCIDRs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.val.ActiveCidrs & 1)
}

// SetActiveCIDRs makes trie i decide, for every packet from now on.
func (s *Settings) SetActiveCIDRs(i int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.val
	v.ActiveCidrs = uint32(i & 1)
	return s.write(v)
}

// localInline is how many node IPv4 addresses ipm_settings carries.
const localInline = len(loader.BPFIpmSettings{}.Local4)

// SetLocal4 tells the datapath the node's IPv4 addresses inline when they
// are few; with more, only their count, which sends it to ipm_local4. The
// caller writes ipm_local4 first when addresses appear and after this when
// they go, so the datapath never misses one it should know.
func (s *Settings) SetLocal4(addrs []netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.val
	v.Local4Count = uint32(len(addrs))
	v.Local4 = [localInline]uint32{}
	if len(addrs) <= localInline {
		for i, a := range addrs {
			v.Local4[i] = addrToBE(a)
		}
	}
	return s.write(v)
}

func (s *Settings) write(v loader.BPFIpmSettings) error {
	if err := s.m.Update(uint32(0), &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	s.val = v
	return nil
}
