package main

import (
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/ipmasq-ebpf/ip-masq-agent/maps"
)

// calibrationSpan is how far apart the two jiffy edges of a calibration
// are: 20 ticks at the slowest HZ, enough to tell every HZ apart.
const calibrationSpan = 200 * time.Millisecond

// datapathClock keeps the datapath's jiffies clock calibrated (bpf/clock.h):
// once at start, again whenever a GC pass finds it off by more than the one to
// two ticks it trails by (maps.Clock.Calibrate).
// Until then, and whenever calibration fails, the programs read the clock.
type datapathClock struct {
	mu       sync.Mutex
	clock    *maps.Clock
	settings *maps.Settings
	cal      maps.ClockCalibration
}

func (k *datapathClock) calibrate() {
	k.mu.Lock()
	defer k.mu.Unlock()
	cal, err := k.clock.Calibrate(calibrationSpan)
	if err != nil {
		klog.ErrorS(err, "Could not calibrate the datapath's jiffies clock: the programs read CLOCK_MONOTONIC instead (slower)")
		cal = maps.ClockCalibration{}
	}
	cal, err = k.settings.SetClock(cal)
	if err != nil {
		klog.ErrorS(err, "Could not write the clock calibration")
		return
	}
	k.cal = cal
	if cal.NsPerJiffy != 0 {
		klog.V(2).InfoS("Calibrated the datapath's clock", "tick", time.Duration(cal.NsPerJiffy), "hz", time.Second/time.Duration(cal.NsPerJiffy))
	}
}

// check recalibrates when the datapath's clock leads by a tick or trails by
// more than three.
func (k *datapathClock) check() {
	k.mu.Lock()
	cal := k.cal
	k.mu.Unlock()
	if cal.NsPerJiffy == 0 {
		k.calibrate()
		return
	}
	off, err := k.clock.Check(cal)
	if err != nil {
		klog.ErrorS(err, "Could not read the datapath's clock")
		return
	}
	if tick := time.Duration(cal.NsPerJiffy); off < -tick || off > 3*tick {
		klog.InfoS("The datapath's clock drifted, calibrating again", "off", off)
		k.calibrate()
	}
}
