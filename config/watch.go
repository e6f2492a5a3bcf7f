package config

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/klog/v2"
)

// pollInterval is how often Watch looks for a missing directory, and checks
// that the watched directory is still the one at the path. Half a second keeps
// a new directory noticed within the second docs/behaviour.md §2.6 allows.
const pollInterval = 500 * time.Millisecond

// maxDelay bounds the debounce: a file rewritten without pause still gives a
// notification this often.
const maxDelay = 500 * time.Millisecond

// Watch reports changes to the configuration file at path. It watches the
// directory of path as given, never resolving symlinks: kubelet updates a
// ConfigMap volume by swapping its "..data" symlink and deleting the old
// target, which gives no event for the file's own name. Any event in the
// directory counts.
//
// After a change, Watch waits until the directory has been quiet for debounce
// (but no longer than about half a second in all) so that a half-written file
// is not read, then sends on the returned channel. The channel has a capacity
// of 1 and sends never block, so changes that arrive while the caller is busy
// become one notification. Nothing is sent for the state at start: the caller
// reads the file once itself.
//
// The directory may be missing at start or removed later; Watch then looks for
// it every half second, watches it when it appears, and reports its arrival
// and departure as changes.
//
// Watch stops, and closes the channel, when ctx is done. It fails only when
// the system gives it no inotify instance; the caller can then fall back on
// its periodic resync.
func Watch(ctx context.Context, path string, debounce time.Duration) (<-chan struct{}, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch config %s: %w", path, err)
	}
	w := &dirWatcher{fw: fw, dir: filepath.Clean(filepath.Dir(path))}
	// Add before returning, so that no change made after Watch returns is
	// missed.
	w.add()
	out := make(chan struct{}, 1)
	go w.run(ctx, out, debounce)
	return out, nil
}

// dirWatcher keeps an inotify watch on one directory that may come and go.
type dirWatcher struct {
	fw      *fsnotify.Watcher
	dir     string
	watched os.FileInfo // the directory being watched; nil when none
	lastErr string      // last error logged, so that polling does not repeat it
}

// add starts watching the directory and reports whether it now does.
func (w *dirWatcher) add() bool {
	if err := w.fw.Add(w.dir); err != nil {
		w.logOnce(err)
		return false
	}
	info, err := os.Stat(w.dir)
	if err != nil { // gone again already
		w.drop()
		w.logOnce(err)
		return false
	}
	w.watched, w.lastErr = info, ""
	klog.V(2).InfoS("Watching config directory", "dir", w.dir)
	return true
}

// drop forgets the watch. inotify may have removed it already.
func (w *dirWatcher) drop() {
	_ = w.fw.Remove(w.dir)
	w.watched = nil
}

// replaced reports whether the path no longer names the watched directory:
// removed, or replaced by another one, possibly between two events.
func (w *dirWatcher) replaced() bool {
	info, err := os.Stat(w.dir)
	return err != nil || !os.SameFile(info, w.watched)
}

func (w *dirWatcher) logOnce(err error) {
	if err.Error() == w.lastErr {
		return
	}
	w.lastErr = err.Error()
	if errors.Is(err, fs.ErrNotExist) {
		klog.InfoS("Config directory does not exist; waiting for it", "dir", w.dir)
		return
	}
	klog.ErrorS(err, "Cannot watch config directory; retrying", "dir", w.dir)
}

func (w *dirWatcher) run(ctx context.Context, out chan<- struct{}, debounce time.Duration) {
	defer close(out)
	defer w.fw.Close()

	poll := time.NewTicker(pollInterval)
	defer poll.Stop()

	// The debounce timer is armed by the first event of a burst and pushed
	// back by each later one, up to maxDelay after the first.
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var fire <-chan time.Time
	var first time.Time
	changed := func() {
		now := time.Now()
		if fire == nil {
			first = now
		}
		wait := debounce
		if limit := first.Add(max(debounce, maxDelay)).Sub(now); wait > limit {
			wait = limit
		}
		timer.Reset(max(wait, 0))
		fire = timer.C
	}

	for {
		select {
		case <-ctx.Done():
			return

		case ev, ok := <-w.fw.Events:
			if !ok {
				return
			}
			klog.V(4).InfoS("Config directory event", "name", ev.Name, "op", ev.Op.String())
			if ev.Name == w.dir && ev.Has(fsnotify.Remove|fsnotify.Rename) {
				// The directory itself went away; inotify has dropped
				// the watch. Watch whatever is at the path now, if anything.
				w.drop()
				w.add()
			}
			changed()

		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			// Typically a queue overflow: events were lost, so assume a
			// change.
			klog.ErrorS(err, "Watching config directory", "dir", w.dir)
			changed()

		case <-poll.C:
			switch {
			case w.watched == nil:
				if w.add() {
					changed() // the directory appeared
				}
			case w.replaced():
				w.drop()
				w.add()
				changed()
			}

		case <-fire:
			fire = nil
			select {
			case out <- struct{}{}:
			default: // one is pending already
			}
		}
	}
}
