package maps

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// Clock calibrates the datapath's timestamps (bpf/clock.h): the programs
// make CLOCK_MONOTONIC from jiffies with a base and a tick length that the
// agent measures here, through ipm_clock_read, which reads both clocks at
// once when run with BPF_PROG_TEST_RUN.
type Clock struct {
	prog   *ebpf.Program
	sample *ebpf.Map
}

// ClockCalibration is what the datapath needs: CLOCK_MONOTONIC BaseNs at
// jiffy BaseJiffies, and the tick length.
type ClockCalibration struct {
	BaseNs, BaseJiffies, NsPerJiffy uint64
}

// Rebased is the same calibration expressed at another base jiffy. Times
// wrap as the datapath computes them (unsigned 64-bit), so a base jiffy
// before c's works too.
func (c ClockCalibration) Rebased(baseJiffies uint64) ClockCalibration {
	return ClockCalibration{BaseNs: c.BaseNs + (baseJiffies-c.BaseJiffies)*c.NsPerJiffy, BaseJiffies: baseJiffies, NsPerJiffy: c.NsPerJiffy}
}

// At converts a jiffies value as the datapath does.
func (c ClockCalibration) At(jiffies uint64) time.Duration {
	return time.Duration(c.BaseNs + (jiffies-c.BaseJiffies)*c.NsPerJiffy)
}

func NewClock(d *loader.Datapath) *Clock {
	return &Clock{prog: d.Programs.IpmClockRead, sample: d.Maps.IpmClockSample}
}

// tickLengths are the kernel's TICK_NSEC for the HZ values x86 and arm64
// kernels are built with (100, 250, 300, 1000).
var tickLengths = []uint64{10_000_000, 4_000_000, 3_333_333, 1_000_000}

// read runs ipm_clock_read once.
func (c *Clock) read() (loader.BPFIpmClockSample, error) {
	var s loader.BPFIpmClockSample
	if _, err := c.prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
		return s, fmt.Errorf("run ipm_clock_read: %w", err)
	}
	if err := c.sample.Lookup(uint32(0), &s); err != nil {
		return s, fmt.Errorf("read ipm_clock_sample: %w", err)
	}
	return s, nil
}

// edge waits for jiffies to change and returns the first reading after the
// change: there the jiffy began at most a few microseconds before ns, so a
// base taken there never makes a timestamp from the future.
func (c *Clock) edge() (loader.BPFIpmClockSample, error) {
	first, err := c.read()
	if err != nil {
		return first, err
	}
	deadline := time.Now().Add(100 * time.Millisecond) // ten ticks at the slowest HZ
	for time.Now().Before(deadline) {
		s, err := c.read()
		if err != nil || s.Jiffies != first.Jiffies {
			return s, err
		}
	}
	return first, errors.New("jiffies did not advance for 100 ms")
}

// Calibrate measures the tick between two jiffy edges at least span apart
// and takes the second edge as the base. The tick must be one of the kernel
// HZ choices, within 2 %; otherwise the datapath keeps reading the clock.
func (c *Clock) Calibrate(span time.Duration) (ClockCalibration, error) {
	a, err := c.edge()
	if err != nil {
		return ClockCalibration{}, err
	}
	time.Sleep(span)
	b, err := c.edge()
	if err != nil {
		return ClockCalibration{}, err
	}
	if b.Jiffies <= a.Jiffies || b.Ns <= a.Ns {
		return ClockCalibration{}, fmt.Errorf("clocks did not advance: %+v then %+v", a, b)
	}
	measured := float64(b.Ns-a.Ns) / float64(b.Jiffies-a.Jiffies)
	for _, tick := range tickLengths {
		if d := measured/float64(tick) - 1; d > -0.02 && d < 0.02 {
			// A jiffy starts when the tick interrupt runs, which on a
			// VM can be hundreds of microseconds late; a base taken at
			// a late edge would put later timestamps in the future.
			// One tick earlier, they trail by one to two ticks instead.
			return ClockCalibration{BaseNs: b.Ns - tick, BaseJiffies: b.Jiffies, NsPerJiffy: tick}, nil
		}
	}
	return ClockCalibration{}, fmt.Errorf("a jiffy lasts %.0f ns, not the tick of any HZ this agent knows", measured)
}

// Check reports how far a fresh reading of CLOCK_MONOTONIC is from what the
// datapath makes of jiffies with cal (positive: the datapath is behind).
// Within two ticks is right; more means the calibration went stale.
func (c *Clock) Check(cal ClockCalibration) (time.Duration, error) {
	s, err := c.read()
	if err != nil {
		return 0, err
	}
	return time.Duration(s.Ns) - cal.At(s.Jiffies), nil
}

// SetClock gives the datapath a calibration and returns it as written; the
// zero value makes the datapath read the clock again.
//
// The datapath reads the three fields while the map value is rewritten, so
// it may see some old and some new. A new calibration is therefore written at
// the base jiffy the map already holds, with the same tick: then only the base
// time changes, by the small drift being corrected, and a mixed read is off by
// that much at most. Written at its own base jiffy, a recalibration days after
// the last one (every agent restart makes one) would let a mixed read stamp a
// flow days in the future or in the past. The datapath reads the clock itself
// while any field is 0, which covers the first calibration.
func (s *Settings) SetClock(c ClockCalibration) (ClockCalibration, error) {
	err := s.update(func(v *loader.BPFIpmSettings) error {
		if c.NsPerJiffy != 0 && v.NsPerJiffy == c.NsPerJiffy && v.ClockBaseJiffies != 0 && v.ClockBaseNs != 0 {
			c = c.Rebased(v.ClockBaseJiffies)
		}
		v.ClockBaseNs, v.ClockBaseJiffies, v.NsPerJiffy = c.BaseNs, c.BaseJiffies, c.NsPerJiffy
		return nil
	})
	return c, err
}
