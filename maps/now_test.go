package maps

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestNowIsMonotonic: Now, read without a system call, agrees with
// CLOCK_MONOTONIC as the kernel (and bpf_ktime_get_ns) reads it.
func TestNowIsMonotonic(t *testing.T) {
	for i := 0; i < 100; i++ {
		var before, after unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &before); err != nil {
			t.Fatal(err)
		}
		now := Now()
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &after); err != nil {
			t.Fatal(err)
		}
		// The base pair is read a few microseconds apart: allow that.
		const slack = time.Millisecond
		if now < time.Duration(before.Nano())-slack || now > time.Duration(after.Nano())+slack {
			t.Fatalf("Now() = %v, CLOCK_MONOTONIC read %v before and %v after", now, time.Duration(before.Nano()), time.Duration(after.Nano()))
		}
	}
}
