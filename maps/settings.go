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
	return s.update(func(v *loader.BPFIpmSettings) error {
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
		v.RandomFully = flag(randomFully)
		return nil
	})
}

// SetIPv6 turns IPv6 masquerading on or off (--enable-ipv6).
func (s *Settings) SetIPv6(enable bool) error {
	return s.update(func(v *loader.BPFIpmSettings) error {
		v.EnableIpv6 = flag(enable)
		return nil
	})
}

// SetSourceCIDRs turns the source check of new mappings on (only sources in
// ipm_src4/ipm_src6) or off (every source that is not the node's).
func (s *Settings) SetSourceCIDRs(on bool) error {
	return s.update(func(v *loader.BPFIpmSettings) error {
		v.SourceCidrs = flag(on)
		return nil
	})
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
	return s.update(func(v *loader.BPFIpmSettings) error {
		v.ActiveCidrs = uint32(i & 1)
		return nil
	})
}

// localInline is how many node IPv4 addresses ipm_settings carries.
const localInline = len(loader.BPFIpmSettings{}.Local4)

// SetLocal4 tells the datapath the node's IPv4 addresses inline when they
// are few; with more, only their count, which sends it to ipm_local4. The
// caller writes ipm_local4 first when addresses appear and after this when
// they go, so the datapath never misses one it should know.
func (s *Settings) SetLocal4(addrs []netip.Addr) error {
	return s.update(func(v *loader.BPFIpmSettings) error {
		v.Local4Count = uint32(len(addrs))
		v.Local4 = [localInline]uint32{}
		if len(addrs) <= localInline {
			for i, a := range addrs {
				v.Local4[i] = AddrToBE(a)
			}
		}
		return nil
	})
}

// update changes a copy of the value with change and writes it whole; the
// kept value changes only once the map holds the new one, so a refused
// change or a failed write leaves both as they were.
func (s *Settings) update(change func(v *loader.BPFIpmSettings) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.val
	if err := change(&v); err != nil {
		return err
	}
	if err := s.m.Update(uint32(0), &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	s.val = v
	return nil
}

// flag is a setting's on/off as the datapath reads it.
func flag(on bool) uint32 {
	if on {
		return 1
	}
	return 0
}
