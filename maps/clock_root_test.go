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
