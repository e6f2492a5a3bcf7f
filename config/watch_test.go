package config

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Deadlines are generous so that a loaded machine does not fail the tests;
// the one second promised in docs/behaviour.md §2.6 is what Watch itself aims at.
const (
	seenWithin = 5 * time.Second
	quietFor   = 1200 * time.Millisecond // longer than maxDelay plus a poll
	debounceMs = 10 * time.Millisecond   // what the agent uses
)

// defaultSeconds is the default resyncInterval, which the tests use to mark
// which version of the file was read.
const defaultSeconds = int(DefaultResyncInterval / time.Second)

// startWatch watches path until the test ends.
func startWatch(t *testing.T, path string, debounce time.Duration) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ch, err := Watch(ctx, path, debounce)
	if err != nil {
		t.Fatalf("Watch(%s): %v", path, err)
	}
	return ch
}

// watchFile writes content (nothing when empty) to a config file in a new
// directory and watches it until the test ends.
func watchFile(t *testing.T, content string, debounce time.Duration) (path string, ch <-chan struct{}) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "ip-masq-agent")
	if content != "" {
		writeFile(t, path, content)
	}
	return path, startWatch(t, path, debounce)
}

// expectChange waits for one notification.
func expectChange(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	start := time.Now()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("%s: channel closed", what)
		}
		t.Logf("%s: seen after %v", what, time.Since(start).Round(time.Millisecond))
	case <-time.After(seenWithin):
		t.Fatalf("%s: no notification within %v", what, seenWithin)
	}
}

// expectQuiet checks that nothing more arrives for a while.
func expectQuiet(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: unexpected notification", what)
	case <-time.After(quietFor):
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// mustLoad reads the file as the agent would and returns its resyncInterval
// in seconds, a handy marker of which version was read.
// expectReload waits for the notification of what and requires the file
// to read as resyncInterval want (seconds) afterwards.
func expectReload(t *testing.T, ch <-chan struct{}, path, what string, want int) {
	t.Helper()
	expectChange(t, ch, what)
	if got := mustLoad(t, path); got != want {
		t.Errorf("after %s: resyncInterval %ds, want %d", what, got, want)
	}
}

func mustLoad(t *testing.T, path string) int {
	t.Helper()
	c, err := Load(path, Options{})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return int(c.ResyncInterval / time.Second)
}

func TestWatchRenameOverFile(t *testing.T) {
	t.Parallel()
	path, ch := watchFile(t, "resyncInterval: 1s\n", debounceMs)

	tmp := filepath.Join(filepath.Dir(path), ".ip-masq-agent.tmp")
	writeFile(t, tmp, "resyncInterval: 2s\n")
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	expectReload(t, ch, path, "rename over the file", 2)
}

func TestWatchRewriteInPlace(t *testing.T) {
	t.Parallel()
	path, ch := watchFile(t, "resyncInterval: 1s\n", debounceMs)

	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Truncate, pause a little, then write: without the debounce the empty
	// file could be read as "all defaults".
	time.Sleep(5 * time.Millisecond)
	if _, err := f.WriteString("resyncInterval: 3s\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	expectReload(t, ch, path, "truncate and rewrite", 3)
}

func TestWatchConfigMapSymlinkSwap(t *testing.T) {
	t.Parallel()
	// The layout kubelet gives a ConfigMap volume, and its update: a new
	// timestamped directory, a new "..data" symlink renamed over the old one,
	// then the old directory deleted. The file's own symlink never changes.
	dir := t.TempDir()
	mkdir := func(name, content string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, name, "ip-masq-agent"), content)
	}
	symlink := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	mkdir("..2026_01_01_00_00_00.000000001", "resyncInterval: 1s\n")
	symlink("..2026_01_01_00_00_00.000000001", "..data")
	symlink("..data/ip-masq-agent", "ip-masq-agent")
	path := filepath.Join(dir, "ip-masq-agent")
	if got := mustLoad(t, path); got != 1 {
		t.Fatalf("before the swap: resyncInterval %ds, want 1", got)
	}
	ch := startWatch(t, path, debounceMs)

	mkdir("..2026_01_01_00_01_00.000000002", "resyncInterval: 4s\n")
	symlink("..2026_01_01_00_01_00.000000002", "..data_tmp")
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.000000001")); err != nil {
		t.Fatal(err)
	}
	expectReload(t, ch, path, "..data symlink swap", 4)

	// Removing the key (or the ConfigMap) removes the file's symlink: the
	// defaults apply again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	expectReload(t, ch, path, "file removed", defaultSeconds)
}

func TestWatchDirectoryCreatedLater(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "config")
	path := filepath.Join(dir, "ip-masq-agent")
	ch := startWatch(t, path, debounceMs)

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "resyncInterval: 5s\n")
	expectChange(t, ch, "directory created")
	// The file may have been written before or after the watch was added;
	// either way the next read sees it.
	if got := mustLoad(t, path); got != 5 {
		t.Errorf("resyncInterval %ds, want 5", got)
	}

	// Now that it is watched, a later change is seen too.
	drain(ch, quietFor)
	writeFile(t, path, "resyncInterval: 6s\n")
	expectReload(t, ch, path, "write in the new directory", 6)
}

func TestWatchDirectoryRemovedAndRecreated(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "config")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ip-masq-agent")
	writeFile(t, path, "resyncInterval: 1s\n")
	ch := startWatch(t, path, debounceMs)

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	expectReload(t, ch, path, "directory removed", defaultSeconds)

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "resyncInterval: 7s\n")
	expectChange(t, ch, "directory recreated")
	drain(ch, quietFor)
	writeFile(t, path, "resyncInterval: 8s\n")
	expectReload(t, ch, path, "write in the recreated directory", 8)
}

func TestWatchDirectoryRenamedAway(t *testing.T) {
	t.Parallel()
	// A directory moved away keeps its inotify watch; Watch must follow the
	// path, not the old directory.
	base := t.TempDir()
	dir := filepath.Join(base, "config")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ip-masq-agent")
	ch := startWatch(t, path, debounceMs)

	if err := os.Rename(dir, filepath.Join(base, "old")); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, "directory renamed away")
	drain(ch, quietFor)
	writeFile(t, filepath.Join(base, "old", "ip-masq-agent"), "resyncInterval: 1s\n")
	expectQuiet(t, ch, "write in the old directory")

	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, "directory back at the path")
	drain(ch, quietFor)
	writeFile(t, path, "resyncInterval: 9s\n")
	expectChange(t, ch, "write in the new directory")
}

func TestWatchBurstIsCoalesced(t *testing.T) {
	t.Parallel()
	// A wider debounce than the agent's keeps this test independent of
	// scheduling pauses within the burst.
	path, ch := watchFile(t, "resyncInterval: 100s\n", 200*time.Millisecond)

	for i := 1; i <= 50; i++ {
		writeFile(t, path, "resyncInterval: "+strconv.Itoa(i)+"s\n")
	}
	expectReload(t, ch, path, "burst of writes", 50)
	expectQuiet(t, ch, "after the burst")
}

func TestWatchPendingNotificationsCoalesce(t *testing.T) {
	t.Parallel()
	// Changes made while the caller is busy leave one notification, not a
	// queue of them.
	path, ch := watchFile(t, "", debounceMs)

	writeFile(t, path, "resyncInterval: 1s\n")
	time.Sleep(quietFor) // long enough for the first notification to be sent
	writeFile(t, path, "resyncInterval: 2s\n")
	time.Sleep(quietFor)
	expectChange(t, ch, "pending notification")
	expectQuiet(t, ch, "second notification")
}

func TestWatchIgnoresReads(t *testing.T) {
	t.Parallel()
	// The agent reads the file after each notification; that must not cause
	// another one, or it would loop.
	path, ch := watchFile(t, "resyncInterval: 1s\n", debounceMs)

	writeFile(t, path, "resyncInterval: 2s\n")
	expectChange(t, ch, "write")
	for range 10 {
		mustLoad(t, path)
	}
	expectQuiet(t, ch, "reads")
}

func TestWatchStopsWithContext(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := Watch(ctx, filepath.Join(dir, "ip-masq-agent"), debounceMs)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	deadline := time.After(seenWithin)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return // closed: stopped
			}
		case <-deadline:
			t.Fatal("channel not closed after the context ended")
		}
	}
}

func TestWatchRelativePath(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	ch := startWatch(t, "ip-masq-agent", debounceMs)
	writeFile(t, filepath.Join(dir, "ip-masq-agent"), "resyncInterval: 1s\n")
	expectChange(t, ch, "file in the working directory")
}

// drain discards notifications until none has come for quiet.
func drain(ch <-chan struct{}, quiet time.Duration) {
	for {
		select {
		case <-ch:
		case <-time.After(quiet):
			return
		}
	}
}
