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

// SetClock gives the datapath a calibration; the zero value makes it read
// the clock again.
func (s *Settings) SetClock(c ClockCalibration) error {
	return s.update(func(v *loader.BPFIpmSettings) error {
		v.ClockBaseNs, v.ClockBaseJiffies, v.NsPerJiffy = c.BaseNs, c.BaseJiffies, c.NsPerJiffy
		return nil
	})
}
