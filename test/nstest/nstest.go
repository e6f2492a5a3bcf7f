// Package nstest makes throwaway network namespaces for the tests that need
// them (the end to end tests, the netfilter migration tests): named ones
// (`ip netns add`), so that both the test process and the commands it runs
// can enter them.
package nstest

import (
	"fmt"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

// Add creates the namespace name and returns a handle to it; t.Cleanup
// closes the handle and deletes the namespace, also when the test fails.
func Add(t testing.TB, name string) netns.NsHandle {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("create netns %s: %v: %s", name, err, out)
	}
	h := netns.None()
	t.Cleanup(func() {
		if h.IsOpen() {
			h.Close()
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete netns %s: %v: %s", name, err, out)
		}
	})
	var err error
	if h, err = netns.GetFromName(name); err != nil {
		t.Fatalf("open netns %s: %v", name, err)
	}
	return h
}

// Do runs fn on a dedicated OS thread that has joined the namespace h
// (named name, for the error). The thread stays locked and is thrown away
// when fn returns (a goroutine that exits locked takes its thread with it),
// so no thread is ever handed back to the Go scheduler in another
// namespace. Sockets created inside fn keep the namespace and can be used
// from any goroutine afterwards; goroutines started inside fn do not
// inherit it.
func Do(h netns.NsHandle, name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: see above.
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
