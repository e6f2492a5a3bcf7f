package maps

import (
	"slices"
	"testing"
	"time"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// The calibration finds one of the kernel's tick lengths, and what the
// datapath then makes of jiffies trails CLOCK_MONOTONIC by at most two ticks
// (plus the tick interrupt's lateness) and never leads it.
func TestClockCalibration(t *testing.T) {
	spec := rootSpec(t)
	var objs loader.BPFObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer objs.Close()
	c := &Clock{prog: objs.IpmClockRead, sample: objs.IpmClockSample}
	cal, err := c.Calibrate(200 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(tickLengths, cal.NsPerJiffy) {
		t.Fatalf("tick %d ns is no kernel's", cal.NsPerJiffy)
	}
	tick := time.Duration(cal.NsPerJiffy)
	t.Logf("tick %v (HZ %d)", tick, time.Second/tick)
	// The reading itself takes microseconds; allow that much lead.
	const jitter = 200 * time.Microsecond
	for i := 0; i < 50; i++ {
		off, err := c.Check(cal)
		if err != nil {
			t.Fatal(err)
		}
		if off < -jitter || off > 2*tick+jitter {
			t.Fatalf("reading %d: the datapath's clock is %v behind CLOCK_MONOTONIC, want within [0, %v]", i, off, 2*tick)
		}
		time.Sleep(7 * time.Millisecond)
	}
}

// A recalibration is written at the base jiffy the map already holds, so
// that a packet reading the settings while they are rewritten mixes two
// values of the base time only, a drift apart, never a new base time with an
// old base jiffy (a whole restart's age apart). Without an earlier
// calibration it is written as measured.
func TestSetClockKeepsTheBaseJiffy(t *testing.T) {
	spec := rootSpec(t)
	var objs loader.BPFObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatalf("load: %+v", err)
	}
	defer objs.Close()
	s := &Settings{m: objs.IpmSettings}
	first := ClockCalibration{BaseNs: 5_000_000_000, BaseJiffies: 4_294_000_000, NsPerJiffy: 4_000_000}
	got, err := s.SetClock(first)
	if err != nil || got != first {
		t.Fatalf("first calibration written as %+v (%v), want %+v", got, err, first)
	}
	// Three days later, 1.5 ms of drift corrected.
	later := ClockCalibration{BaseJiffies: first.BaseJiffies + 3*86400*250, NsPerJiffy: first.NsPerJiffy}
	later.BaseNs = uint64(first.At(later.BaseJiffies)) + 1_500_000
	if got, err = s.SetClock(later); err != nil {
		t.Fatal(err)
	}
	var v loader.BPFIpmSettings
	if err := objs.IpmSettings.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	if v.ClockBaseJiffies != first.BaseJiffies || v.NsPerJiffy != first.NsPerJiffy || got.BaseJiffies != first.BaseJiffies {
		t.Fatalf("recalibration moved the base jiffy: map %d, returned %d, want %d", v.ClockBaseJiffies, got.BaseJiffies, first.BaseJiffies)
	}
	if d := int64(v.ClockBaseNs) - int64(first.BaseNs); d != 1_500_000 {
		t.Fatalf("base time moved by %d ns, want the drift of 1500000", d)
	}
	for _, j := range []uint64{first.BaseJiffies - 10, later.BaseJiffies, later.BaseJiffies + 12345} {
		if a, b := got.At(j), later.At(j); a != b {
			t.Fatalf("jiffy %d: the written calibration says %v, the measured one %v", j, a, b)
		}
	}
	// Another tick length (never on one kernel) or a cleared calibration
	// is written as given.
	other := ClockCalibration{BaseNs: 9_000_000_000, BaseJiffies: 4_295_000_000, NsPerJiffy: 1_000_000}
	if got, err = s.SetClock(other); err != nil || got != other {
		t.Fatalf("calibration of another tick written as %+v (%v), want %+v", got, err, other)
	}
	if got, err = s.SetClock(ClockCalibration{}); err != nil || got != (ClockCalibration{}) {
		t.Fatalf("cleared calibration written as %+v (%v)", got, err)
	}
}
