package prog

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ipmasq-ebpf/ip-masq-agent/loader"
)

// kernelAtLeast reports whether the running kernel is major.minor or newer.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var ma, mi int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("kernel release %q: %v", u.Release, err)
	}
	return ma > major || ma == major && mi >= minor
}

// TestDatapathVariant: the suite runs on the build it was asked for, and
// without a request a kernel that can read the checksum state (6.2+ with
// BTF) gets the arithmetic build: a silent fallback would leave it untested.
func TestDatapathVariant(t *testing.T) {
	e := newEnv(t, config{})
	want := loader.Variant(os.Getenv(loader.VariantEnv))
	if want == loader.VariantAuto {
		want = loader.VariantHelpers
		if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err == nil && kernelAtLeast(t, 6, 2) {
			want = loader.VariantKernCtx
		}
	}
	if e.dp.Variant != want {
		t.Fatalf("datapath build %q loaded, want %q", e.dp.Variant, want)
	}
	t.Logf("datapath build: %s", e.dp.Variant)
}
